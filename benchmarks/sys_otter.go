package benchmarks

import (
	"context"
	"sync/atomic"

	"github.com/maypok86/otter/v2"
	"github.com/redis/go-redis/v9"
)

// otter: otter v2, the in-process reference, as a near-cache in front of the same
// go-redis Ring. Its Get(ctx, key, loader) dedups concurrent loads of a key in the
// process; the loader reads Redis, else calls the Loader and SETs. A Set writes Redis
// and this replica's otter; nothing tells the other replicas.
var otterPeer = Peer{Name: "otter", Shards: true, Near: true, New: newOtter}

type otterSys struct {
	near       *otter.Cache[string, string]
	ring       *redis.Ring
	aside      cacheAside
	load       otter.LoaderFunc[string, string]
	nearMisses atomic.Uint64
	sharedHits atomic.Uint64
}

func newOtter(cfg Config) (System, error) {
	near, err := otter.New(&otter.Options[string, string]{
		MaximumWeight:    uint64(cfg.NearBytes),
		Weigher:          func(k, v string) uint32 { return uint32(nearCost(k, v)) },
		ExpiryCalculator: otter.ExpiryWriting[string, string](cfg.LocalTTL),
	})
	if err != nil {
		return nil, err
	}
	s := &otterSys{near: near, ring: newRing(cfg, nil)}
	s.aside = cacheAside{rdb: s.ring, cfg: cfg}
	s.load = func(ctx context.Context, key string) (string, error) {
		v, hit, err := s.aside.get(ctx, key)
		if hit {
			s.sharedHits.Add(1)
		}
		return v, err
	}
	return s, nil
}

func (s *otterSys) Get(ctx context.Context, key string) (string, error) {
	if v, ok := s.near.GetIfPresent(key); ok {
		return v, nil
	}
	s.nearMisses.Add(1)
	return s.near.Get(ctx, key, s.load)
}

func (s *otterSys) Set(ctx context.Context, key, value string) error {
	if err := s.aside.set(ctx, key, value); err != nil {
		s.near.Invalidate(key)
		return err
	}
	s.near.Set(key, value)
	return nil
}

func (s *otterSys) Tiers() Tiers {
	return Tiers{NearMisses: s.nearMisses.Load(), SharedHits: s.sharedHits.Load()}
}

func (s *otterSys) Close() error {
	s.near.StopAllGoroutines()
	return s.ring.Close()
}
