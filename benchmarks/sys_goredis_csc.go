package benchmarks

import (
	"cmp"
	"context"
	"sync"

	"github.com/redis/go-redis/v9"
)

// go-redis-csc: go-redis v9.23's built-in client-side cache (Options.ClientSideCacheConfig,
// "experimental"): RESP3, CLIENT TRACKING on every pooled connection, a bounded
// in-process cache per client whose entries Redis invalidation pushes evict. It works
// on standalone clients only, so here each shard client of the redis.Ring gets its
// own cache (a third of the near-cache budget each); MaxStaleness is LocalTTL (1 s in
// the fault workload: Config.MaxStaleness). Reads
// go through the same cache-aside loop as raw go-redis; no singleflight.
var goredisCSCPeer = Peer{Name: "go-redis-csc", Shards: true, Near: true, New: newGoredisCSC}

type goredisCSCSys struct {
	ring  *redis.Ring
	aside cacheAside

	mu      sync.Mutex
	clients []*redis.Client // protected by mu: the Ring's shard clients, for CSCStats
}

func newGoredisCSC(cfg Config) (System, error) {
	s := &goredisCSCSys{}
	s.ring = newRing(cfg, func(o *redis.Options) *redis.Client {
		o.Protocol = 3
		o.ClientSideCacheConfig = &redis.ClientSideCacheConfig{
			MaxMemoryBytes: cfg.NearBytes / int64(len(cfg.Nodes)),
			MaxStaleness:   cmp.Or(cfg.MaxStaleness, cfg.LocalTTL),
		}
		c := redis.NewClient(o)
		s.mu.Lock()
		s.clients = append(s.clients, c)
		s.mu.Unlock()
		return c
	})
	s.aside = cacheAside{rdb: s.ring, cfg: cfg}
	return s, nil
}

func (s *goredisCSCSys) Get(ctx context.Context, key string) (string, error) {
	v, _, err := s.aside.get(ctx, key)
	return v, err
}

func (s *goredisCSCSys) Set(ctx context.Context, key, value string) error {
	return s.aside.set(ctx, key, value)
}

// Tiers reads the near-cache misses from go-redis's own counters (CSCStats). A read
// that waited for another goroutine's fetch of the same key counts as a hit there.
// Shared hits are those misses less the reads that found no value; a cached "no
// value" reply (go-redis caches those too) makes that an undercount, which matters
// only in the miss and stampede workloads.
func (s *goredisCSCSys) Tiers() Tiers {
	s.mu.Lock()
	defer s.mu.Unlock()
	var misses uint64
	for _, c := range s.clients {
		misses += c.CSCStats().Misses
	}
	t := Tiers{NearMisses: misses}
	if nils := s.aside.misses.Load(); nils < misses {
		t.SharedHits = misses - nils
	}
	return t
}

func (s *goredisCSCSys) Close() error { return s.ring.Close() }
