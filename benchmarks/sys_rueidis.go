package benchmarks

import (
	"context"
	"sync/atomic"

	"github.com/redis/rueidis"
)

// rueidis: github.com/redis/rueidis with its server-assisted client-side caching
// (RESP3 CLIENT TRACKING; DoCache with LocalTTL as the client-side TTL). rueidis
// shards only over a Redis Cluster, not over standalone nodes, so it uses one node,
// Config.Nodes[0]. Its loader pattern, rueidisaside, is a separate module that the
// module proxy here does not serve, so a miss runs the plain cache-aside loop:
// Loader, then SET; no singleflight. The client-side cache is per connection: two
// pipelined connections (PipelineMultiplex 1, the default on two cores) with half of
// the near-cache budget each.
var rueidisPeer = Peer{Name: "rueidis", Shards: false, Near: true, New: newRueidis}

type rueidisSys struct {
	c          rueidis.Client
	cfg        Config
	nearMisses atomic.Uint64
	sharedHits atomic.Uint64
}

func newRueidis(cfg Config) (System, error) {
	const multiplex = 1 // 1<<1 connections
	c, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress:       cfg.dialAddrs()[:1],
		ForceSingleClient: true,
		PipelineMultiplex: multiplex,
		CacheSizeEachConn: int(cfg.NearBytes >> multiplex),
	})
	if err != nil {
		return nil, err
	}
	return &rueidisSys{c: c, cfg: cfg}, nil
}

func (s *rueidisSys) Get(ctx context.Context, key string) (string, error) {
	resp := s.c.DoCache(ctx, s.c.B().Get().Key(key).Cache(), s.cfg.LocalTTL)
	v, err := resp.ToString()
	if !resp.IsCacheHit() {
		s.nearMisses.Add(1)
		if err == nil {
			s.sharedHits.Add(1)
		}
	}
	if err == nil {
		return v, nil
	}
	if !rueidis.IsRedisNil(err) {
		return "", err
	}
	v, err = s.cfg.Loader(ctx, key)
	if err != nil {
		return "", err
	}
	return v, s.set(ctx, key, v)
}

func (s *rueidisSys) Set(ctx context.Context, key, value string) error { return s.set(ctx, key, value) }

func (s *rueidisSys) set(ctx context.Context, key, value string) error {
	return s.c.Do(ctx, s.c.B().Set().Key(key).Value(value).Ex(s.cfg.TTL).Build()).Error()
}

func (s *rueidisSys) Tiers() Tiers {
	return Tiers{NearMisses: s.nearMisses.Load(), SharedHits: s.sharedHits.Load()}
}

func (s *rueidisSys) Close() error {
	s.c.Close()
	return nil
}
