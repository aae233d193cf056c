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
	o := tiered.Options[string]{
		Loader:       tiered.LoaderFunc[string](cfg.Loader),
		Addrs:        cfg.Nodes,
		Namespace:    "tiered",
		TTL:          cfg.TTL,
		LocalTTL:     cfg.LocalTTL,
		LocalMaxCost: cfg.NearBytes,
		Timeout:      cfg.Timeout,
	}
	if cfg.Dial != nil {
		// Through proxies: each node keeps its address as its name (its place on the
		// ring) and is dialled at the proxy's; the Cache creates and closes the
		// clients as it does for Addrs.
		o.Addrs = nil
		for i, n := range cfg.Nodes {
			o.Nodes = append(o.Nodes, tiered.Node{Name: n, Addr: cfg.Dial[i]})
		}
	}
	c, err := tiered.New(o)
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
