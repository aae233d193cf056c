package benchmarks

import (
	"context"
	"sync/atomic"

	"github.com/dgraph-io/ristretto/v2"
	"github.com/redis/go-redis/v9"
)

// ristretto: raw ristretto v2 as a near-cache in front of the same go-redis Ring, as
// one would compose them by hand: near hit, else GET, else Loader and SET; a Set
// writes Redis and this replica's ristretto. Nothing tells the other replicas: their
// copies live until LocalTTL. No singleflight.
var ristrettoPeer = Peer{Name: "ristretto", Shards: true, Near: true, New: newRistretto}

type ristrettoSys struct {
	near       *ristretto.Cache[string, string]
	ring       *redis.Ring
	aside      cacheAside
	cfg        Config
	nearMisses atomic.Uint64
	sharedHits atomic.Uint64
}

func newRistretto(cfg Config) (System, error) {
	near, err := ristretto.NewCache(&ristretto.Config[string, string]{
		NumCounters:        cfg.NearBytes / 100, // about 10 counters per entry that fits, as tiered does
		MaxCost:            cfg.NearBytes,
		BufferItems:        64,
		IgnoreInternalCost: true, // nearCost includes an overhead
	})
	if err != nil {
		return nil, err
	}
	s := &ristrettoSys{near: near, ring: newRing(cfg, nil), cfg: cfg}
	s.aside = cacheAside{rdb: s.ring, cfg: cfg}
	return s, nil
}

func (s *ristrettoSys) Get(ctx context.Context, key string) (string, error) {
	if v, ok := s.near.Get(key); ok {
		return v, nil
	}
	s.nearMisses.Add(1)
	v, hit, err := s.aside.get(ctx, key)
	if err != nil {
		return "", err
	}
	if hit {
		s.sharedHits.Add(1)
	}
	s.near.SetWithTTL(key, v, nearCost(key, v), s.cfg.LocalTTL)
	return v, nil
}

func (s *ristrettoSys) Set(ctx context.Context, key, value string) error {
	if err := s.aside.set(ctx, key, value); err != nil {
		s.near.Del(key)
		return err
	}
	s.near.SetWithTTL(key, value, nearCost(key, value), s.cfg.LocalTTL)
	return nil
}

func (s *ristrettoSys) Tiers() Tiers {
	return Tiers{NearMisses: s.nearMisses.Load(), SharedHits: s.sharedHits.Load()}
}

func (s *ristrettoSys) Close() error {
	s.near.Close()
	return s.ring.Close()
}
