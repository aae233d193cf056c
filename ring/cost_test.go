package ring

import (
	"strconv"
	"testing"

	"github.com/cespare/xxhash/v2"
)

var sink uint64

func BenchmarkCostHash(b *testing.B) {
	keys := make([]string, 4096)
	for i := range keys {
		keys[i] = "ns:user:" + strconv.Itoa(i*7919)
	}
	for i := 0; b.Loop(); i++ {
		sink += xxhash.Sum64String(keys[i&4095])
	}
}

func BenchmarkCostNew10(b *testing.B) {
	var names []string
	for i := 0; i < 10; i++ {
		names = append(names, "redis-"+strconv.Itoa(i))
	}
	for b.Loop() {
		New(names, 2000)
	}
}
