package tiered

// Helpers shared by the root package's tests: a Loader over a map, Caches on rings of
// real redis-server processes (internal/redistest), and polling with a deadline.
//
// The tests cite the coherence invariants of DESIGN.md by code:
//
//   - C1 (delivery): after a write returns nil on process A, process B evicts the key
//     within the pub/sub delivery time.
//   - C2 (fill fencing): an invalidation that arrives while a fill (shared-tier read,
//     Loader call, refresh) is in flight keeps that fill out of the near-cache.
//   - C3 (no stale set in Redis): a Loader result read before a Delete or Set is never
//     written into Redis after it (the lease).
//   - C4 (lost messages): a dropped subscription, a gap in a node's sequence or a new
//     node epoch (restart, failover) flushes the near-cache entries that node owns
//     before they are served again; while a node's subscriber is down, its keys are
//     not served from the near-cache.
//   - C5 (bounded staleness): a near-cache entry lives no longer than its local TTL,
//     nor than the Redis TTL it was read with.
//   - C6 (stampede): N concurrent Gets of one missing key make one Redis read and at
//     most one Loader call in a process, and one Loader call across processes in the
//     common case (the lease).
//   - C7 (faults): a dead or hung node never fails a Get that has a Loader; a Get waits
//     on it at most the per-call Timeout, and once its circuit breaker opens not at
//     all; a node that comes back after missing deletes is not read until they are
//     replayed or its keys flushed.
//   - C8 (lifecycle): Close stops every goroutine and waits for them; calls after it
//     return ErrClosed.

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/tieredcache/tiered/internal/redistest"
	"github.com/tieredcache/tiered/internal/remote"
)

func TestMain(m *testing.M) {
	if role := os.Getenv("TIERED_CHILD"); role != "" {
		os.Exit(runChild(role))
	}
	goleak.VerifyTestMain(m)
}

// source is a Loader backed by a map, counting calls.
type source struct {
	mu    sync.Mutex
	m     map[string]string
	calls atomic.Int64
	err   error // returned instead of a value while set
}

func newSource() *source { return &source{m: make(map[string]string)} }

func (s *source) Load(_ context.Context, key string) (string, error) {
	s.calls.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return "", s.err
	}
	v, ok := s.m[key]
	if !ok {
		return "", ErrNotFound
	}
	return v, nil
}

// LoadMany makes a source a BatchLoader too: the values of the keys it holds.
func (s *source) LoadMany(ctx context.Context, keys []string) (map[string]string, error) {
	m := make(map[string]string)
	for _, k := range keys {
		if v, err := s.Load(ctx, k); err == nil {
			m[k] = v
		}
	}
	return m, nil
}

func (s *source) put(k, v string) { s.mu.Lock(); s.m[k] = v; s.mu.Unlock() }
func (s *source) del(k string)    { s.mu.Lock(); delete(s.m, k); s.mu.Unlock() }

// clientOption changes the options of the client ringOpts makes for node i.
type clientOption func(i int, o *redis.Options)

// ringNodes returns a ring of new clients over addrs, named node-0, node-1, ... as
// every test and child process names them, so that instances agree on owners and
// channels. The caller closes the clients (after the Cache).
func ringNodes(addrs []string, opts ...clientOption) ([]Node, []*redis.Client) {
	var nodes []Node
	var clients []*redis.Client
	for i, addr := range addrs {
		ro := &redis.Options{Addr: addr, ContextTimeoutEnabled: true, MaxRetries: -1}
		for _, opt := range opts {
			opt(i, ro)
		}
		cl := redis.NewClient(ro)
		clients = append(clients, cl)
		nodes = append(nodes, Node{Name: fmt.Sprintf("node-%d", i), Client: cl})
	}
	return nodes, clients
}

// ringOpts returns Options over servers as a ring of clients of its own (each call
// makes new ones, changed by opts), closed at the end of the test, in the test's own
// namespace.
func ringOpts[V any](t testing.TB, servers []*redistest.Server, opts ...clientOption) Options[V] {
	t.Helper()
	var addrs []string
	for _, s := range servers {
		addrs = append(addrs, s.Addr())
	}
	nodes, clients := ringNodes(addrs, opts...)
	for _, cl := range clients {
		t.Cleanup(func() { cl.Close() })
	}
	return Options[V]{
		Nodes:     nodes,
		Namespace: "t" + strings.ReplaceAll(t.Name(), "/", "_"),
		Timeout:   2 * time.Second, // generous: -race on a loaded 2-core machine
	}
}

func newCache[V any](t testing.TB, o Options[V]) *Cache[V] {
	t.Helper()
	c, err := New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitForWithin is how long waitFor polls before it fails the test: far longer than
// any event a test waits for takes, even with -race on a loaded 2-core machine.
const waitForWithin = 10 * time.Second

// waitFor polls cond every millisecond until it holds, and returns when it did; it
// fails the test if cond does not hold within waitForWithin.
func waitFor(t testing.TB, what string, cond func() bool) time.Time {
	t.Helper()
	deadline := time.Now().Add(waitForWithin)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		if cond() {
			return time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, waitForWithin)
		}
		<-tick.C
	}
}

// waitSettled waits until c has no flight: a Get that loads returns as soon as its
// value is loaded, and its flight fills both tiers (and counts what the fills did in
// Stats) after that (see announce).
func waitSettled[V any](t testing.TB, c *Cache[V]) {
	t.Helper()
	waitFor(t, "the flights' fills", func() bool { return c.flights.running() == 0 })
}

// running returns the number of flights in the table.
func (f *flights[V]) running() int {
	n := 0
	for i := range f.shards {
		sh := &f.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}

// has reports whether a flight of key (hash h) is in the table.
func (f *flights[V]) has(h uint64, key string) bool {
	sh := &f.shards[h%flightShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	for id := range sh.m {
		if id.key == key {
			return true
		}
	}
	return false
}

// waitLocal waits until key is served from c's near-cache (ristretto applies Sets
// asynchronously; a flight stores its value after its callers have returned).
func waitLocal[V any](t testing.TB, c *Cache[V], key string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	h := c.local.Hash(key)
	for {
		// The key's flight, if any, ends with its store: wait for it rather than
		// join it (a Get joining it would be counted, and store nothing more).
		waitFor(t, "the flight of "+key, func() bool { return !c.flights.has(h, key) })
		c.local.Wait()
		if _, _, ok, _ := c.local.Lookup(h, key); ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q never reached the near-cache", key)
		}
		// ristretto may drop a Set under contention: fill again.
		c.Get(context.Background(), key)
	}
}

// nearHas returns key's value if c's near-cache serves it.
func nearHas[V any](c *Cache[V], key string) (V, bool) {
	v, _, ok, _ := c.local.Lookup(c.local.Hash(key), key)
	return v, ok
}

// allUp reports whether c's subscription to every node is confirmed.
func allUp[V any](c *Cache[V]) bool {
	c.subsMu.Lock()
	n := len(c.follows)
	c.subsMu.Unlock()
	for i := range n {
		if !c.local.Up(i) {
			return false
		}
	}
	return true
}

// ownedKeys returns n keys "prefix:i" owned by each of nodes, in that order.
func ownedKeys[V any](c *Cache[V], prefix string, n int, nodes ...int) []string {
	var keys []string
	for _, node := range nodes {
		found := 0
		for i := 0; found < n; i++ {
			k := fmt.Sprintf("%s:%d", prefix, i)
			if c.shared.Owner(k) == node {
				keys = append(keys, k)
				found++
			}
		}
	}
	return keys
}

// redisKey returns the Redis key c stores key's value under.
func redisKey[V any](c *Cache[V], key string) string {
	return c.shared.(interface{ Key(string) string }).Key(key)
}

// framed reports whether raw, a value read from Redis with GET, is a frame holding
// payload (the frame's header comes first, the encoded value last).
func framed(raw any, payload string) bool {
	s, ok := raw.(string)
	return ok && strings.HasSuffix(s, payload)
}

// latencies collects per-call durations by phase.
type latencies struct {
	mu sync.Mutex
	d  map[string][]time.Duration
}

func newLatencies() *latencies { return &latencies{d: make(map[string][]time.Duration)} }

func (l *latencies) add(phase string, d time.Duration) {
	l.mu.Lock()
	l.d[phase] = append(l.d[phase], d)
	l.mu.Unlock()
}

// get returns a copy of phase's durations.
func (l *latencies) get(phase string) []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.d[phase])
}

func (l *latencies) summary(phase string) string {
	ds := l.get(phase)
	return fmt.Sprintf("%s: n=%d p50=%v p99=%v max=%v", phase, len(ds),
		pct(ds, 50).Round(10*time.Microsecond), pct(ds, 99).Round(10*time.Microsecond), pct(ds, 100).Round(10*time.Microsecond))
}

// pct returns the p-th percentile (nearest rank) of ds.
func pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(ds))
	i := int(p/100*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// waitGoroutinesGone is redistest.WaitGoroutinesGone, failing t if the goroutines
// outlast within.
func waitGoroutinesGone(t testing.TB, fn string, within time.Duration) time.Duration {
	t.Helper()
	d, err := redistest.WaitGoroutinesGone(fn, within)
	if err != nil {
		t.Error(err)
	}
	return d
}

// holdsFrame reports whether raw, read from a value key, is a value's frame of
// payload (and not a lease's placeholder, whose random token may end the same way).
func holdsFrame(raw any, payload string) bool {
	s, ok := raw.(string)
	return ok && !remote.IsPlaceholder([]byte(s)) && framed(raw, payload)
}
