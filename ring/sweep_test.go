package ring

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
)

func TestSweep(t *testing.T) {
	var k1, k2, k3 []string
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 1000000; i++ {
		k1 = append(k1, "key:"+strconv.Itoa(i))
		k2 = append(k2, "ns:user:"+strconv.Itoa(i))
		k3 = append(k3, fmt.Sprintf("%x", rng.Uint64()))
	}
	schemes := []func(int) string{
		func(i int) string { return "redis-" + strconv.Itoa(i) },
		func(i int) string { return "10.0.0." + strconv.Itoa(i+1) + ":6379" },
		func(i int) string { return "cache-" + string(rune('a'+i)) + ".prod.internal:6379" },
		func(i int) string { return "redis-" + strconv.Itoa(i+1) },
	}
	for _, R := range []int{1000, 2000, 3000, 4000} {
		line := fmt.Sprintf("R=%-5d", R)
		for _, n := range []int{3, 5, 10} {
			w := 0.0
			for _, sc := range schemes {
				var names []string
				for i := 0; i < n; i++ {
					names = append(names, sc(i))
				}
				r, _ := New(names, R)
				for _, ks := range [][]string{k1, k2, k3} {
					c := make([]int, n)
					for _, k := range ks {
						i, _ := r.Owner(k)
						c[i]++
					}
					w = max(w, float64(slices.Max(c))*float64(n)/float64(len(ks)))
				}
			}
			line += fmt.Sprintf("  n=%d %.3f", n, w)
		}
		t.Log(line)
	}
}

func BenchmarkSweepOwner(b *testing.B) {
	for _, R := range []int{160, 1000, 2000, 4000} {
		b.Run(strconv.Itoa(R), func(b *testing.B) {
			var names []string
			for i := 0; i < 10; i++ {
				names = append(names, "redis-"+strconv.Itoa(i))
			}
			r, _ := New(names, R)
			keys := make([]string, 4096)
			for i := range keys {
				keys[i] = "ns:user:" + strconv.Itoa(i*7919)
			}
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				r.Owner(keys[i&4095])
			}
		})
	}
}
