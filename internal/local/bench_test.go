package local

import (
	"strconv"
	"testing"
	"time"
)

// BenchmarkLookup is the near-cache hit: hash, ristretto Get, the key, stripe, node
// and expiry checks. Its baseline, BenchmarkRistrettoGet, is the ristretto Get alone
// on the same cache and keys, so the cost of the checks reads as the difference.
func BenchmarkLookup(b *testing.B) {
	c, keys := benchCache(b)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		k := keys[i%len(keys)]
		if _, _, ok, _ := c.Lookup(c.Hash(k), k); !ok {
			b.Fatalf("miss on %q", k)
		}
		i++
	}
}

func BenchmarkRistrettoGet(b *testing.B) {
	c, keys := benchCache(b)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, ok := c.rc.Get(c.Hash(keys[i%len(keys)])); !ok {
			b.Fatal("miss")
		}
		i++
	}
}

// benchCache stores 1024 keys spread over 16 nodes.
func benchCache(b *testing.B) (*Cache[string], []string) {
	c, err := New[string](Config{MaxCost: 64 << 20})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(c.Close)
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = "bench:user:" + strconv.Itoa(i)
		if !c.Store(c.Fence(c.Hash(keys[i]), i%16), keys[i], "a value of a few dozen bytes", false, 28, time.Hour, Never) {
			b.Fatal("Store refused")
		}
		c.Wait()
	}
	return c, keys
}
