package benchmarks

import (
	"context"
	"sync/atomic"

	"github.com/go-redis/cache/v9"
	"github.com/redis/go-redis/v9"
)

// go-redis-cache: github.com/go-redis/cache/v9, a local TinyLFU in front of Redis
// (here the same redis.Ring, as its README shows). Get is its Once, which runs the
// Loader under a per-process singleflight; Set writes Redis and this replica's
// TinyLFU. Nothing tells the other replicas: their copies live until LocalTTL.
// The TinyLFU is sized in entries (Config.NearEntries); its TTL is LocalTTL plus a
// random offset of up to a tenth, the library's default.
var gorediscachePeer = Peer{Name: "go-redis-cache", Shards: true, Near: true, New: newGorediscache}

type gorediscacheSys struct {
	ring  *redis.Ring
	local *countingLocal
	cd    *cache.Cache
	cfg   Config
}

// countingLocal counts the TinyLFU's misses, which only happen off the hit path.
type countingLocal struct {
	*cache.TinyLFU
	misses atomic.Uint64
}

func (c *countingLocal) Get(key string) ([]byte, bool) {
	b, ok := c.TinyLFU.Get(key)
	if !ok {
		c.misses.Add(1)
	}
	return b, ok
}

func newGorediscache(cfg Config) (System, error) {
	s := &gorediscacheSys{
		ring:  newRing(cfg, nil),
		local: &countingLocal{TinyLFU: cache.NewTinyLFU(cfg.NearEntries, cfg.LocalTTL)},
		cfg:   cfg,
	}
	s.cd = cache.New(&cache.Options{Redis: s.ring, LocalCache: s.local, StatsEnabled: true})
	return s, nil
}

func (s *gorediscacheSys) Get(ctx context.Context, key string) (string, error) {
	var v string
	err := s.cd.Once(&cache.Item{
		Ctx:   ctx,
		Key:   key,
		Value: &v,
		TTL:   s.cfg.TTL,
		Do:    func(it *cache.Item) (any, error) { return s.cfg.Loader(it.Context(), it.Key) },
	})
	return v, err
}

func (s *gorediscacheSys) Set(ctx context.Context, key, value string) error {
	return s.cd.Set(&cache.Item{Ctx: ctx, Key: key, Value: value, TTL: s.cfg.TTL})
}

// Tiers: Once looks in the TinyLFU, and the caller that runs the flight looks again
// before its Redis GET; so the reads the near-cache missed are the TinyLFU's misses
// less the Redis reads (the library's Stats: hits + misses). A caller that joined
// another's flight counts as a near miss.
func (s *gorediscacheSys) Tiers() Tiers {
	st := s.cd.Stats()
	redisReads := st.Hits + st.Misses
	t := Tiers{SharedHits: st.Hits}
	if m := s.local.misses.Load(); m > redisReads {
		t.NearMisses = m - redisReads
	}
	return t
}

func (s *gorediscacheSys) Close() error { return s.ring.Close() }
