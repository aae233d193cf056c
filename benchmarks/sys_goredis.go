package benchmarks

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// go-redis: raw go-redis v9, no near-cache. The nodes form a redis.Ring (go-redis's
// own client-side sharding over standalone nodes); a miss calls the Loader and SETs
// the value, with no singleflight: the plain cache-aside loop.
var goredisPeer = Peer{Name: "go-redis", Shards: true, New: newGoredis}

// newRing returns a redis.Ring over cfg's nodes (dialled at cfg.dialAddrs()), go-redis's
// defaults otherwise. The shards are named by their index, so that a replica dialling
// through proxies places keys as the others do. newClient, if not nil, creates each
// shard's client (to enable client-side caching).
func newRing(cfg Config, newClient func(*redis.Options) *redis.Client) *redis.Ring {
	addrs := make(map[string]string, len(cfg.Nodes))
	for i, a := range cfg.dialAddrs() {
		addrs[fmt.Sprintf("n%d", i)] = a
	}
	return redis.NewRing(&redis.RingOptions{Addrs: addrs, NewClient: newClient})
}

// cacheAside is the read-through loop over a go-redis client that the raw go-redis
// adapters share: GET, and on redis.Nil the Loader and a SET.
type cacheAside struct {
	rdb    redis.Cmdable
	cfg    Config
	misses atomic.Uint64 // GETs that found no value
}

// get returns the value and whether Redis had it.
func (a *cacheAside) get(ctx context.Context, key string) (string, bool, error) {
	v, err := a.rdb.Get(ctx, key).Result()
	if err == nil {
		return v, true, nil
	}
	if !errors.Is(err, redis.Nil) {
		return "", false, err
	}
	a.misses.Add(1)
	v, err = a.cfg.Loader(ctx, key)
	if err != nil {
		return "", false, err
	}
	return v, false, a.rdb.Set(ctx, key, v, a.cfg.TTL).Err()
}

func (a *cacheAside) set(ctx context.Context, key, value string) error {
	return a.rdb.Set(ctx, key, value, a.cfg.TTL).Err()
}

type goredisSys struct {
	ring       *redis.Ring
	aside      cacheAside
	reads      atomic.Uint64
	sharedHits atomic.Uint64
}

func newGoredis(cfg Config) (System, error) {
	s := &goredisSys{ring: newRing(cfg, nil)}
	s.aside = cacheAside{rdb: s.ring, cfg: cfg}
	return s, nil
}

func (s *goredisSys) Get(ctx context.Context, key string) (string, error) {
	s.reads.Add(1) // every read is a Redis round trip: the counter costs nothing by comparison
	v, hit, err := s.aside.get(ctx, key)
	if hit {
		s.sharedHits.Add(1)
	}
	return v, err
}

func (s *goredisSys) Set(ctx context.Context, key, value string) error {
	return s.aside.set(ctx, key, value)
}

func (s *goredisSys) Tiers() Tiers {
	return Tiers{NearMisses: s.reads.Load(), SharedHits: s.sharedHits.Load()}
}

func (s *goredisSys) Close() error { return s.ring.Close() }
