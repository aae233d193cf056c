package benchmarks

import (
	"context"
	"time"
)

// System is one replica's handle on a cache under test: a read-through cache whose
// misses end at Config.Loader, and a write-through Set. Every adapter is safe for
// concurrent use.
type System interface {
	// Get returns the value of key from the nearest tier that has it, calling the
	// Loader (and filling the tiers) when none has.
	Get(ctx context.Context, key string) (string, error)
	// Set writes value under key through this replica: the shared tier and, where
	// there is one, this replica's near-cache.
	Set(ctx context.Context, key, value string) error
	// Tiers returns cumulative counters, kept off the near-hit path.
	Tiers() Tiers
	// Close releases every connection and stops every goroutine the system started.
	Close() error
}

// Tiers are a System's cumulative counters. Near hits are not counted on the hit path
// (a shared counter there would slow the peers down): they are the reads the
// benchmark made minus NearMisses.
type Tiers struct {
	NearMisses uint64 // reads not answered by the near-cache (every read, without one)
	SharedHits uint64 // reads answered by the shared tier (Redis)
	Absorbed   uint64 // shared-tier failures the system hid from the caller (tiered fails open)
}

func (t Tiers) sub(u Tiers) Tiers {
	return Tiers{t.NearMisses - u.NearMisses, t.SharedHits - u.SharedHits, t.Absorbed - u.Absorbed}
}

func (t Tiers) add(u Tiers) Tiers {
	return Tiers{t.NearMisses + u.NearMisses, t.SharedHits + u.SharedHits, t.Absorbed + u.Absorbed}
}

// Config is what every system is given, identical across systems except for the
// nodes of a system that cannot shard.
type Config struct {
	// Nodes are the Redis nodes of the ring ("host:port"). A system that cannot
	// spread keys over standalone nodes uses Nodes[0] only (Peer.Shards).
	Nodes []string
	// Loader is the source of truth, the same function for every system.
	Loader func(ctx context.Context, key string) (string, error)
	// TTL is how long a value lives in Redis; LocalTTL in a near-cache.
	TTL, LocalTTL time.Duration
	// NearBytes bounds a near-cache that is sized in bytes; NearEntries one that is
	// sized in entries. Both hold every key of every workload (100k keys of about
	// 60 bytes), so no near-cache evicts for want of room.
	NearBytes   int64
	NearEntries int
	// Timeout, if not zero, bounds each Redis call of a system that takes such a
	// bound (tiered; its default is 100 ms). Only the replicas that populate Redis
	// before a run set it, so that a loaded machine cannot fail the setup.
	Timeout time.Duration
	// Dial, if not nil, holds the addresses this replica connects to instead of
	// Nodes, one per node and in the same order: a proxy in front of each node (the
	// fault workload). Every connection of the replica (data, pub/sub, tracking) goes
	// there, while the nodes keep the identity Nodes gives them, so that keys have
	// the same owners as on the replicas that dial the nodes directly.
	Dial []string
	// MaxStaleness, if not zero, is the staleness backstop of a near-cache that takes
	// one besides its TTL (go-redis-csc's ClientSideCacheConfig.MaxStaleness);
	// zero means LocalTTL. tiered ignores it: it runs with its own default.
	MaxStaleness time.Duration
}

// dialAddrs returns the address to connect to for each of Nodes.
func (c Config) dialAddrs() []string {
	if c.Dial != nil {
		return c.Dial
	}
	return c.Nodes
}

// Peer describes one system under test.
type Peer struct {
	Name   string
	Shards bool // spreads keys over every node of Config.Nodes; false: Nodes[0] only
	Near   bool // has a near-cache (in-process tier)
	New    func(Config) (System, error)
}

// Systems are the systems under test, tiered first: benchstat compares every column
// with the first one.
var Systems = []Peer{
	tieredPeer,
	ristrettoPeer,
	otterPeer,
	goredisPeer,
	goredisCSCPeer,
	gorediscachePeer,
	rueidisPeer,
	tiered1NodePeer,
}

// defaultConfig is the configuration every workload starts from.
func defaultConfig(nodes []string, loader func(context.Context, string) (string, error)) Config {
	return Config{
		Nodes:       nodes,
		Loader:      loader,
		TTL:         time.Hour,
		LocalTTL:    time.Minute,
		NearBytes:   64 << 20,
		NearEntries: 1 << 17,
	}
}

// nearCost is the cost of one near-cache entry for the byte-bounded near-caches that
// take a cost from the caller (ristretto, otter): key and value plus a fixed overhead.
func nearCost(key, value string) int64 { return int64(len(key) + len(value) + 64) }
