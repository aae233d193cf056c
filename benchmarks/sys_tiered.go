package benchmarks

import (
	"context"

	"github.com/tieredcache/tiered"
)

// tiered: the near-cache (ristretto v2) in front of the 3-node ring, singleflight and
// leases in front of the Loader, pub/sub invalidation between replicas. Defaults
// except for the TTLs and the near-cache size, which every system shares.
var tieredPeer = Peer{Name: "tiered", Shards: true, Near: true, New: newTiered}

// tiered-1node: the same on one node, the one rueidis (which cannot shard) uses: a
// control column, so that rueidis can be read against tiered on equal ground.
var tiered1NodePeer = Peer{Name: "tiered-1node", Shards: false, Near: true, New: newTiered}

type tieredSys struct{ c *tiered.Cache[string] }

func newTiered(cfg Config) (System, error) {
	c, err := tiered.New(tiered.Options[string]{
		Loader:       tiered.LoaderFunc[string](cfg.Loader),
		Addrs:        cfg.Nodes,
		Namespace:    "tiered",
		TTL:          cfg.TTL,
		LocalTTL:     cfg.LocalTTL,
		LocalMaxCost: cfg.NearBytes,
		Timeout:      cfg.Timeout,
	})
	if err != nil {
		return nil, err
	}
	return tieredSys{c}, nil
}

func (s tieredSys) Get(ctx context.Context, key string) (string, error) { return s.c.Get(ctx, key) }

func (s tieredSys) Set(ctx context.Context, key, value string) error {
	return s.c.Set(ctx, key, value)
}

func (s tieredSys) Tiers() Tiers {
	st := s.c.Stats()
	return Tiers{NearMisses: st.LocalMisses, SharedHits: st.RemoteHits, Absorbed: st.RemoteErrors}
}

func (s tieredSys) Close() error { return s.c.Close() }
