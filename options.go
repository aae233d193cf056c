package tiered

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Node is one named standalone Redis node of the shared tier's hash ring. The name,
// not the address, places the node on the ring: keep names stable across restarts and
// address changes so keys keep their owners.
type Node struct {
	Name string
	// Client reaches the node; its Options must have ContextTimeoutEnabled set. If
	// nil, the Cache (or Shared) creates one for Addr, as for Options.Addrs, or for
	// Name as an address if Addr is empty too, and closes it.
	Client *redis.Client
	Addr   string
}

// Options configures a Cache. The zero value of every field selects the default named
// in its comment; New never modifies the caller's Options.
type Options[V any] struct {
	// Loader loads a key from the source of truth on a miss in both tiers. Without
	// one, a miss returns ErrNotFound and the cache only holds what Set stored.
	Loader Loader[V]

	// BatchLoader, if set, loads GetMany's misses in one call. Without one, GetMany
	// calls Loader per key, at most LoadConcurrency at a time.
	BatchLoader BatchLoader[V]

	// The shared tier: at most one of Nodes, Client and Addrs. With none, the Cache is
	// a near-cache in front of the Loader.
	//
	// Nodes are standalone Redis nodes spread over a consistent-hash ring. Client is a
	// single node or a Redis Cluster (*redis.ClusterClient), which routes keys itself.
	// Addrs is a convenience for Nodes: one client per "host:port" (the name), created
	// with ContextTimeoutEnabled, no retries and Timeout as read/write, dial and pool
	// timeout, and closed by Close. A failed dial (a refused connection) is not
	// retried: the call fails at once and falls through to the Loader. New checks
	// every address: a non-empty host (an IPv6 host in brackets, "[::1]:6379") and a
	// numeric port in 1..65535, no two alike. URLs ("redis://...", "rediss://...") are
	// refused rather than parsed: a password in them would become the node's name in
	// every log line and error; for a URL, TLS or a password, create the client with
	// redis.ParseURL and pass it in Nodes. Clients passed in Nodes or Client are the
	// caller's to close, after Close. They must have ContextTimeoutEnabled set:
	// without it go-redis ignores context deadlines on its sockets and Timeout could
	// not bound a call to a hung node, so New returns an error.
	// A client whose ReadTimeout, WriteTimeout, DialTimeout and PoolTimeout are each
	// at most Timeout (as the clients made from Addrs are) bounds every call by itself,
	// and calls through it skip a per-call context deadline (a timer less per call).
	Nodes  []Node
	Client redis.UniversalClient
	Addrs  []string

	// Shared, instead of Nodes, Client or Addrs, puts the Cache on connections that
	// other Caches of the process use too (see Shared): one pool and one pub/sub
	// connection per node however many Caches. The Shared's ring, Timeout and
	// HealthCheck apply: RingReplicas must be 0, and Timeout and HealthCheck 0 or the
	// Shared's.
	Shared *Shared

	// RingReplicas is the number of virtual points per node on the ring. Default
	// ring.DefaultReplicas, which keeps the busiest node within 10% of the mean.
	RingReplicas int

	// Namespace prefixes every Redis key ("<Namespace>:{<key>}"), so several caches
	// can share nodes. Default "tiered". Must not contain '{' or '}'.
	Namespace string

	// TTL is how long a value lives in the shared tier. Default 10 minutes.
	TTL time.Duration

	// LocalTTL is how long a value lives in the near-cache. Default 1 minute. It is
	// capped by TTL, and a copy read from the shared tier never outlives the TTL it
	// was written there with.
	LocalTTL time.Duration

	// NegativeTTL is how long an absence reported by the Loader (ErrNotFound) is cached,
	// in both tiers. Default 30 seconds.
	NegativeTTL time.Duration

	// Jitter shortens every TTL by a random fraction in [0, Jitter) so that entries
	// filled together do not expire together. Default 0.1; negative disables it;
	// must be below 1.
	Jitter float64

	// LocalMaxCost bounds the near-cache's memory, in bytes: each entry costs its
	// encoded value, its key and a fixed overhead. Default 64 MiB.
	LocalMaxCost int64

	// Timeout bounds each call to one Redis node. Default 100 ms. A read that times out
	// falls through to the Loader.
	Timeout time.Duration

	// LeaseTTL is how long a process that missed in the shared tier holds the key's
	// lease while it loads: other processes missing the same key wait for its fill
	// instead of calling their Loaders, for at most LeaseTTL + 50 ms, then load without
	// writing Redis. A holder that dies is replaced when its lease expires. Default
	// 2 seconds; set it above your Loader's usual latency.
	LeaseTTL time.Duration

	// RefreshAhead, if above 0, refreshes a value in the background when a near-cache
	// hit finds its time left in the shared tier below RefreshAhead x TTL, so that hot
	// keys are reloaded before they expire rather than on a caller's miss. At most one
	// process in the fleet refreshes a key at a time (its lease); a Set or Delete
	// during a refresh keeps the refresh out of both tiers; a refresh that fails leaves
	// the old value served until its TTL ends. Default 0 (off); must be below 1.
	RefreshAhead float64

	// RefreshWorkers bounds the goroutines that run refreshes. Default 4.
	RefreshWorkers int

	// HealthCheck is how often a node's invalidation subscription is pinged.
	// Default 250 ms. A link that fails without closing (a partition, a hung node)
	// is noticed within HealthCheck + Timeout; from then on nothing of the node is
	// stored in the near-cache until a new subscription is confirmed (and what is
	// there is served only within MaxStaleness).
	HealthCheck time.Duration

	// MaxStaleness bounds how stale a near-cache hit can be, whatever the links do
	// (confirmed freshness): a node's keys are served from the near-cache only
	// while the node is confirmed within MaxStaleness, and otherwise read from
	// Redis (or the Loader). Each node's subscriber pings on its subscription
	// connection every HealthCheck; the pong of a ping sent at time s follows, on
	// that connection, every invalidation the node published before s, so it
	// confirms them all (on a Redis Cluster, per master: see the package
	// documentation). A hit at time t therefore serves a value no write
	// acknowledged before t - MaxStaleness - 10 ms (the near-cache's clock tick)
	// has replaced, even on a link that is slow, or silent without failing, or
	// while this process's subscriber is starved of CPU. Default 1 s: with pings
	// every HealthCheck (250 ms) a healthy node's confirmation is at most 250 ms
	// plus a round trip old, so up to three late pongs in a row cost no near hit;
	// lower it for a tighter bound (it must be at least twice HealthCheck). While a
	// node's subscription is down nothing of it is stored, and what the near-cache
	// holds of it is served until MaxStaleness after its last confirmation: a long
	// MaxStaleness keeps the near-cache answering through a Redis outage
	// (availability over freshness), a short one sends the reads to the Loader sooner.
	MaxStaleness time.Duration

	// LoadTimeout bounds a shared load: the Loader call and the fills after it.
	// Default 10 seconds.
	LoadTimeout time.Duration

	// LoadConcurrency bounds GetMany's parallel Loader calls when there is no
	// BatchLoader. Default 16.
	LoadConcurrency int

	// MissedDeletes bounds, per node, the keys remembered for a Set or Delete that
	// could not be confirmed there (a node down, hung or flapping). The node serves no
	// reads until those keys are deleted there, with their invalidations, as soon as it
	// answers again; past this bound the node's keys in Namespace are all cleared
	// (SCAN + UNLINK) instead. Default 10000. The keys are also left as hints on
	// another node (a "<Namespace>:hints" set there, expiring after TTL), which every
	// process replays once the node answers: the delete survives its writer.
	MissedDeletes int

	// MaxKeySize is the longest key accepted, in bytes. Default 1 KiB.
	MaxKeySize int

	// MaxValueSize is the largest encoded value stored, in bytes. Default 1 MiB. Set
	// rejects a larger value with ErrValueTooLarge; a larger loaded value is returned
	// but not cached.
	MaxValueSize int

	// Codec encodes values for the shared tier. Default: []byte and string values are
	// stored as they are; any other type with CBOR.
	Codec Codec[V]

	// Logger receives warnings about failures the caller does not see (a shared tier
	// that is down while a Loader answers, undecodable bytes), each naming its node.
	// Default: discard. go-redis logs some failures of its own (a pool's failed
	// dials) to stderr, process-wide: route them with
	// redis.SetLogger(tiered.RedisLogger(logger)).
	Logger *slog.Logger

	// Recorder receives latencies and events for metrics (see Recorder, and the
	// tieredprom and tieredotel modules). Default NopRecorder{}.
	Recorder Recorder
}

// withDefaults returns a copy of o with defaults applied, or an error naming the
// first invalid field.
func (o Options[V]) withDefaults() (Options[V], error) {
	shared := 0
	for _, set := range []bool{len(o.Nodes) > 0, o.Client != nil, len(o.Addrs) > 0, o.Shared != nil} {
		if set {
			shared++
		}
	}
	if shared > 1 {
		return o, errors.New("tiered: set at most one of Options.Nodes, Options.Client, Options.Addrs and Options.Shared")
	}
	if err := checkAddrs(o.Addrs, "Options.Addrs"); err != nil {
		return o, err
	}
	if sh := o.Shared; sh != nil {
		switch {
		case o.RingReplicas != 0:
			return o, errors.New("tiered: Options.RingReplicas is the Shared's (SharedOptions.RingReplicas): leave it 0")
		case o.Timeout != 0 && o.Timeout != sh.opts.Timeout, o.HealthCheck != 0 && o.HealthCheck != sh.opts.HealthCheck:
			return o, errors.New("tiered: Options.Timeout and HealthCheck are the Shared's (SharedOptions): leave them 0")
		}
		o.Timeout, o.HealthCheck = sh.opts.Timeout, sh.opts.HealthCheck
	}
	setDefault(&o.Namespace, "tiered")
	setDefault(&o.TTL, 10*time.Minute)
	setDefault(&o.LocalTTL, time.Minute)
	setDefault(&o.NegativeTTL, 30*time.Second)
	setDefault(&o.Jitter, 0.1)
	setDefault(&o.LocalMaxCost, 64<<20)
	setDefault(&o.Timeout, 100*time.Millisecond)
	setDefault(&o.LoadTimeout, 10*time.Second)
	setDefault(&o.HealthCheck, 250*time.Millisecond)
	setDefault(&o.MaxStaleness, time.Second)
	setDefault(&o.LeaseTTL, 2*time.Second)
	setDefault(&o.RefreshWorkers, 4)
	setDefault(&o.LoadConcurrency, 16)
	setDefault(&o.MaxKeySize, 1024)
	setDefault(&o.MissedDeletes, 10000)
	setDefault(&o.MaxValueSize, 1<<20)
	if o.Codec == nil {
		o.Codec = defaultCodec[V]()
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Recorder == nil {
		o.Recorder = NopRecorder{}
	}
	if o.Jitter < 0 {
		o.Jitter = 0
	}
	o.LocalTTL = min(o.LocalTTL, o.TTL)
	switch {
	case strings.ContainsAny(o.Namespace, "{}"):
		return o, fmt.Errorf("tiered: Namespace %q must not contain '{' or '}'", o.Namespace)
	case o.TTL < 0, o.LocalTTL < 0, o.NegativeTTL < 0, o.Timeout < 0, o.LoadTimeout < 0, o.HealthCheck < 0, o.LeaseTTL < 0:
		return o, errors.New("tiered: TTLs and timeouts must not be negative")
	case o.MaxStaleness < 2*o.HealthCheck:
		return o, fmt.Errorf("tiered: MaxStaleness %v must be at least twice HealthCheck (%v), the interval of the pings that confirm freshness", o.MaxStaleness, o.HealthCheck)
	case o.Jitter >= 1:
		return o, fmt.Errorf("tiered: Jitter %v must be below 1", o.Jitter)
	case o.RefreshAhead < 0 || o.RefreshAhead >= 1:
		return o, fmt.Errorf("tiered: RefreshAhead %v must be in [0, 1)", o.RefreshAhead)
	case o.LocalMaxCost < 0 || o.MaxKeySize < 0 || o.MaxValueSize < 0 || o.LoadConcurrency < 0 || o.RefreshWorkers < 0 || o.MissedDeletes < 0:
		return o, errors.New("tiered: sizes and limits must not be negative")
	}
	return o, nil
}

// checkAddrs checks every address of addrs (field names them in errors), and that no
// two are alike.
func checkAddrs(addrs []string, field string) error {
	seen := make(map[string]int, len(addrs))
	for i, addr := range addrs {
		if err := checkAddr(addr); err != nil {
			return fmt.Errorf("tiered: %s[%d] %q: %w", field, i, redactAddr(addr), err)
		}
		if j, dup := seen[addr]; dup {
			return fmt.Errorf("tiered: %s[%d] %q: duplicate of %s[%d]", field, i, addr, field, j)
		}
		seen[addr] = i
	}
	return nil
}

// checkAddr reports why addr is not a "host:port" address that a client created by
// the Cache can dial (Options.Addrs, AddNode without a Client), or nil.
func checkAddr(addr string) error {
	if i := strings.Index(addr, "://"); i >= 0 {
		return fmt.Errorf("a URL, not a \"host:port\" address: for %s:// create the client with redis.ParseURL and pass it in Options.Nodes", addr[:i])
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		var aerr *net.AddrError
		if errors.As(err, &aerr) {
			return fmt.Errorf("%s: want \"host:port\" (an IPv6 host in brackets: \"[::1]:6379\")", aerr.Err)
		}
		return err
	}
	if host == "" {
		return errors.New("missing host: want \"host:port\"")
	}
	if strings.ContainsAny(host, " \t\r\n/") {
		return fmt.Errorf("host %q is not a host name or IP address", host)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("port %q is not a number in 1..65535", port)
	}
	return nil
}

// redactAddr returns addr for an error message: a URL with its password masked.
func redactAddr(addr string) string {
	if !strings.Contains(addr, "://") {
		return addr
	}
	if u, err := url.Parse(addr); err == nil {
		return u.Redacted()
	}
	return "<unparsable URL>"
}

func setDefault[T comparable](p *T, def T) {
	var zero T
	if *p == zero {
		*p = def
	}
}
