package tieredprom_test

// Tests against real redis-server processes (internal/redistest): two caches, as two
// replicas of a service would run them, each with its Metrics on its own registry,
// scraped over HTTP; and a node paused until its circuit breaker opens.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tieredcache/tiered"
	"github.com/tieredcache/tiered/internal/redistest"
	"github.com/tieredcache/tiered/tieredprom"
)

// waitForWithin bounds every wait for an event: far longer than any of them takes,
// even with -race on a loaded 2-core machine.
const waitForWithin = 10 * time.Second

// waitFor polls cond every millisecond until it holds; it fails the test if cond does
// not hold within waitForWithin.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitForWithin)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, waitForWithin)
		}
		<-tick.C
	}
}

// source is the source of truth: a map, counting Loader calls. Key "boom" fails.
type source struct {
	mu    sync.Mutex
	m     map[string]string
	calls atomic.Int64
}

var errSourceDown = errors.New("source down")

func (s *source) Load(_ context.Context, key string) (string, error) {
	s.calls.Add(1)
	if key == "boom" {
		return "", errSourceDown
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if v, ok := s.m[key]; ok {
		return v, nil
	}
	return "", tiered.ErrNotFound
}

// replica is one process's cache, its Metrics and its registry.
type replica struct {
	c   *tiered.Cache[string]
	m   *tieredprom.Metrics
	reg *prometheus.Registry
}

// newReplica returns a cache over servers in the test's namespace, loading from src,
// its Metrics registered on a registry of its own, once its subscriptions are up.
func newReplica(t *testing.T, servers []*redistest.Server, src *source, timeout time.Duration) *replica {
	t.Helper()
	var addrs []string
	for _, s := range servers {
		addrs = append(addrs, s.Addr())
	}
	m := tieredprom.New(tieredprom.Options{Cache: "users"})
	c, err := tiered.New(tiered.Options[string]{
		Addrs:     addrs,
		Namespace: "t" + strings.ReplaceAll(t.Name(), "/", "_"),
		Timeout:   timeout,
		Loader:    src,
		Recorder:  m,
	})
	if err != nil {
		t.Fatalf("tiered.New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m.Collector(c))
	waitFor(t, "subscriptions up", func() bool { return c.Ping(context.Background()) == nil })
	return &replica{c: c, m: m, reg: reg}
}

// statsAround returns the cache's Stats before and after f, for counters that
// background work may move while f reads them.
func statsAround(c *tiered.Cache[string], f func()) (before, after tiered.Stats) {
	before = c.Stats()
	f()
	return before, c.Stats()
}

// within fails the test unless lo <= got <= hi.
func within(t *testing.T, what string, got float64, lo, hi uint64) {
	t.Helper()
	if got < float64(lo) || got > float64(hi) {
		t.Errorf("%s = %v, want %d..%d", what, got, lo, hi)
	}
}

func equal(t *testing.T, what string, got float64, want uint64) {
	t.Helper()
	if got != float64(want) {
		t.Errorf("%s = %v, want %d", what, got, want)
	}
}

// TestTwoReplicas: replica A loads keys, B reads them from Redis and then from its
// near-cache, A writes one and B receives the invalidation. Each replica's /metrics
// then tells exactly that.
func TestTwoReplicas(t *testing.T) {
	start := time.Now()
	servers := redistest.Start(t, 2)
	src := &source{m: map[string]string{"u1": "Ada", "u2": "Grace", "u3": "Barbara", "u4": "Frances"}}
	a := newReplica(t, servers, src, 2*time.Second) // generous: -race on a loaded machine
	b := newReplica(t, servers, src, 2*time.Second)
	ctx := context.Background()
	keys := []string{"u1", "u2", "u3", "u4"}

	// A loads the four users, an absent one and one whose load fails.
	for _, k := range keys {
		if v, err := a.c.Get(ctx, k); err != nil || v != src.m[k] {
			t.Fatalf("A Get %s = %q, %v", k, v, err)
		}
	}
	if _, err := a.c.Get(ctx, "absent"); !errors.Is(err, tiered.ErrNotFound) {
		t.Fatalf("A Get absent: %v, want ErrNotFound", err)
	}
	if _, err := a.c.Get(ctx, "boom"); !errors.Is(err, errSourceDown) {
		t.Fatalf("A Get boom: %v, want %v", err, errSourceDown)
	}
	// B reads them from Redis, then from its near-cache.
	for _, k := range keys {
		if v, err := b.c.Get(ctx, k); err != nil || v != src.m[k] {
			t.Fatalf("B Get %s = %q, %v", k, v, err)
		}
	}
	waitFor(t, "near hits on B", func() bool {
		for _, k := range keys {
			b.c.Get(ctx, k)
		}
		return b.c.Stats().LocalHits >= uint64(len(keys))
	})
	if n := src.calls.Load(); n != 6 {
		t.Fatalf("%d Loader calls, want 6 (B must not load)", n)
	}
	// A writes u1: B receives the invalidation and reads the new value from Redis.
	if err := a.c.Set(ctx, "u1", "Ada King"); err != nil {
		t.Fatalf("A Set: %v", err)
	}
	waitFor(t, "B receives the invalidation", func() bool { return b.c.Stats().InvalidationsReceived >= 1 })
	if v, err := b.c.Get(ctx, "u1"); err != nil || v != "Ada King" {
		t.Fatalf("B Get u1 after A's Set = %q, %v", v, err)
	}

	var sa, sb families
	aBefore, aAfter := statsAround(a.c, func() { sa = scrape(t, a.reg) })
	bBefore, bAfter := statsAround(b.c, func() { sb = scrape(t, b.reg) })
	// The counters of reads, loads and writes moved only with the test's calls.
	for _, st := range [][2]tiered.Stats{{aBefore, aAfter}, {bBefore, bAfter}} {
		x, y := st[0], st[1]
		if x.LocalHits != y.LocalHits || x.LocalMisses != y.LocalMisses || x.RemoteHits != y.RemoteHits ||
			x.Loads != y.Loads || x.InvalidationsReceived != y.InvalidationsReceived {
			t.Fatalf("Stats moved during a scrape: %+v, then %+v", x, y)
		}
	}

	replicas := []struct {
		name string
		fams families
	}{{"A", sa}, {"B", sb}}
	for _, r := range replicas {
		name, fams := r.name, r.fams
		t.Run(name+"/families", func(t *testing.T) {
			for _, f := range []string{"tiered_near_hits_total", "tiered_near_misses_total", "tiered_shared_hits_total",
				"tiered_shared_misses_total", "tiered_shared_errors_total", "tiered_loads_total", "tiered_load_errors_total",
				"tiered_load_not_found_total", "tiered_get_errors_total", "tiered_invalidations_sent_total",
				"tiered_invalidations_received_total", "tiered_node_flushes_total", "tiered_breaker_transitions_total",
				"tiered_subscriptions_lost_total"} {
				fams.checkType(t, f, counter)
			}
			for _, f := range []string{"tiered_get_duration_seconds", "tiered_load_duration_seconds",
				"tiered_lease_wait_duration_seconds", "tiered_invalidation_lag_seconds"} {
				fams.checkType(t, f, histogram)
			}
			for _, f := range []string{"tiered_node_up", "tiered_node_breaker_state", "tiered_node_member",
				"tiered_node_missed_writes", "tiered_node_missed_writes_overflowed", "tiered_node_last_sequence",
				"tiered_node_subscription_changed_timestamp_seconds", "tiered_node_confirmed_timestamp_seconds", "tiered_node_info"} {
				fams.checkType(t, f, gauge)
			}
			fams.checkCacheLabel(t, "users")
		})
	}

	t.Run("nodes", func(t *testing.T) {
		for _, r := range replicas {
			name, fams := r.name, r.fams
			for _, s := range servers {
				node := s.Addr() // Options.Addrs names each node by its address
				equal(t, name+" node_up "+node, fams.value(t, "tiered_node_up", "node", node), 1)
				equal(t, name+" node_member "+node, fams.value(t, "tiered_node_member", "node", node), 1)
				equal(t, name+" breaker closed "+node, fams.value(t, "tiered_node_breaker_state", "node", node, "state", "closed"), 1)
				equal(t, name+" breaker open "+node, fams.value(t, "tiered_node_breaker_state", "node", node, "state", "open"), 0)
				equal(t, name+" breaker half-open "+node, fams.value(t, "tiered_node_breaker_state", "node", node, "state", "half-open"), 0)
				equal(t, name+" missed writes "+node, fams.value(t, "tiered_node_missed_writes", "node", node), 0)
				equal(t, name+" node_info "+node, fams.value(t, "tiered_node_info", "node", node, "addr", node), 1)
				since := fams.value(t, "tiered_node_subscription_changed_timestamp_seconds", "node", node)
				if lo, hi := float64(start.Unix()), float64(time.Now().Unix()+1); since < lo || since > hi {
					t.Errorf("%s subscription changed at %v, not between the test's start %v and now", name, since, lo)
				}
				confirmed := fams.value(t, "tiered_node_confirmed_timestamp_seconds", "node", node)
				if lo, hi := float64(start.Unix()), float64(time.Now().Unix()+1); confirmed < lo || confirmed > hi {
					t.Errorf("%s node confirmed at %v, not between the test's start %v and now", name, confirmed, lo)
				}
			}
		}
		// Each subscription's confirmation flushed its node, once per node.
		within(t, "A resubscribe flushes", sa.value(t, "tiered_node_flushes_total", "cause", "resubscribe"),
			aBefore.FlushesResubscribe, aAfter.FlushesResubscribe)
		within(t, "B resubscribe flushes", sb.value(t, "tiered_node_flushes_total", "cause", "resubscribe"),
			bBefore.FlushesResubscribe, bAfter.FlushesResubscribe)
		if aBefore.FlushesResubscribe < 2 {
			t.Errorf("A: %d resubscribe flushes, want one per node at least", aBefore.FlushesResubscribe)
		}
		// B's last sequence number from the node that carried A's write.
		var maxSeq float64
		for _, m := range sb.metrics("tiered_node_last_sequence") {
			maxSeq = max(maxSeq, m.GetGauge().GetValue())
		}
		if maxSeq < 1 {
			t.Errorf("B's node_last_sequence: %v, want one node at 1 at least", maxSeq)
		}
	})

	t.Run("A loads", func(t *testing.T) {
		equal(t, "loads_total", sa.value(t, "tiered_loads_total"), 6) // u1..u4, absent, boom
		equal(t, "loads_total", sa.value(t, "tiered_loads_total"), aAfter.Loads)
		equal(t, "load_errors_total", sa.value(t, "tiered_load_errors_total"), 1)
		equal(t, "load_not_found_total", sa.value(t, "tiered_load_not_found_total"), 1)
		equal(t, "load ok", float64(sa.histCount(t, "tiered_load_duration_seconds", "outcome", "ok")), 4)
		equal(t, "load not_found", float64(sa.histCount(t, "tiered_load_duration_seconds", "outcome", "not_found")), 1)
		equal(t, "load error", float64(sa.histCount(t, "tiered_load_duration_seconds", "outcome", "error")), 1)
		equal(t, "gets answered by the loader", float64(sa.histCount(t, "tiered_get_duration_seconds", "tier", "loader")), 6)
		equal(t, "get errors from the loader", sa.value(t, "tiered_get_errors_total", "tier", "loader"), 1)
		equal(t, "shared misses", sa.value(t, "tiered_shared_misses_total"), aAfter.RemoteMisses)
		equal(t, "invalidations sent", sa.value(t, "tiered_invalidations_sent_total"), 1)
		equal(t, "invalidations sent", sa.value(t, "tiered_invalidations_sent_total"), aAfter.InvalidationsSent)
		equal(t, "invalidation keys sent", sa.value(t, "tiered_invalidation_keys_sent_total"), 1)
		equal(t, "invalidations received", sa.value(t, "tiered_invalidations_received_total"), aAfter.InvalidationsReceived)
	})

	t.Run("B reads", func(t *testing.T) {
		equal(t, "loads_total", sb.value(t, "tiered_loads_total"), 0)
		equal(t, "near_hits_total", sb.value(t, "tiered_near_hits_total"), bAfter.LocalHits)
		equal(t, "near_misses_total", sb.value(t, "tiered_near_misses_total"), bAfter.LocalMisses)
		equal(t, "shared_hits_total", sb.value(t, "tiered_shared_hits_total"), bAfter.RemoteHits)
		if bAfter.RemoteHits < uint64(len(keys))+1 {
			t.Errorf("B: %d shared hits, want %d at least", bAfter.RemoteHits, len(keys)+1)
		}
		equal(t, "gets answered by Redis", float64(sb.histCount(t, "tiered_get_duration_seconds", "tier", "shared")), bAfter.RemoteHits)
		equal(t, "gets answered by the loader", float64(sb.histCount(t, "tiered_get_duration_seconds", "tier", "loader")), 0)
		equal(t, "invalidations received", sb.value(t, "tiered_invalidations_received_total"), bAfter.InvalidationsReceived)
		equal(t, "invalidation keys received", sb.value(t, "tiered_invalidation_keys_received_total"), bAfter.KeysInvalidated)
		equal(t, "invalidation lags observed", float64(sb.histCount(t, "tiered_invalidation_lag_seconds")), bAfter.InvalidationsReceived)
		if lag := sb.histSum(t, "tiered_invalidation_lag_seconds"); lag < 0 || lag > waitForWithin.Seconds() {
			t.Errorf("B: invalidation lag sum %vs", lag)
		}
	})

	t.Run("every near miss observed once", func(t *testing.T) {
		// Gets only (no GetMany): each near miss is one observation, whatever its tier.
		equal(t, "A", float64(sa.histCount(t, "tiered_get_duration_seconds")), aAfter.LocalMisses)
		equal(t, "B", float64(sb.histCount(t, "tiered_get_duration_seconds")), bAfter.LocalMisses)
	})

	lint(t, a.m.Collector(a.c))
	lint(t, b.m.Collector(b.c))
}

// TestBreakerOpens pauses the only node until its circuit breaker opens, and reads
// the open breaker, the lost subscription and the transitions from /metrics; then
// resumes it until the breaker closes again.
func TestBreakerOpens(t *testing.T) {
	servers := redistest.Start(t, 1)
	srv := servers[0]
	src := &source{m: map[string]string{}}
	r := newReplica(t, servers, src, 250*time.Millisecond)
	ctx := context.Background()
	node := srv.Addr()
	status := func() tiered.NodeStatus {
		ns := r.c.Nodes()
		if len(ns) != 1 {
			t.Fatalf("Nodes() = %+v, want one node", ns)
		}
		return ns[0]
	}

	if err := srv.Pause(); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	resumed := false
	t.Cleanup(func() { // before the cache's Close (cleanups run last-in first-out)
		if !resumed {
			srv.Resume()
		}
	})
	var i atomic.Int64
	get := func() { // a Get of a key never read before: it reaches the node (or its open breaker)
		if _, err := r.c.Get(ctx, fmt.Sprintf("k%d", i.Add(1))); !errors.Is(err, tiered.ErrNotFound) {
			t.Errorf("Get with the node paused: %v, want ErrNotFound from the Loader", err)
		}
	}
	waitFor(t, "subscription down", func() bool { return !status().Subscribed })

	// Gets fail on the paused node until the breaker opens. It half-opens a second
	// later and a Get's probe reopens it: poll until a scrape shows it open.
	var s families
	var before, after tiered.Stats
	waitFor(t, "breaker open in /metrics", func() bool {
		get()
		if status().Breaker != tiered.BreakerOpen {
			return false
		}
		before, after = statsAround(r.c, func() { s = scrape(t, r.reg) })
		return s.value(t, "tiered_node_breaker_state", "node", node, "state", "open") == 1
	})
	equal(t, "breaker closed", s.value(t, "tiered_node_breaker_state", "node", node, "state", "closed"), 0)
	equal(t, "breaker half-open", s.value(t, "tiered_node_breaker_state", "node", node, "state", "half-open"), 0)
	within(t, "breaker opens", s.value(t, "tiered_breaker_transitions_total", "node", node, "state", "open"),
		max(before.BreakerOpens, 1), after.BreakerOpens)
	equal(t, "node_up", s.value(t, "tiered_node_up", "node", node), 0)
	within(t, "subscriptions lost", s.value(t, "tiered_subscriptions_lost_total"), max(before.SubscriptionsLost, 1), after.SubscriptionsLost)
	within(t, "shared errors", s.value(t, "tiered_shared_errors_total"), max(before.RemoteErrors, 3), after.RemoteErrors)
	equal(t, "loads", s.value(t, "tiered_loads_total"), uint64(i.Load()))
	equal(t, "gets answered by the loader", float64(s.histCount(t, "tiered_get_duration_seconds", "tier", "loader")), uint64(i.Load()))
	lint(t, r.m.Collector(r.c))

	// The node comes back: the subscription is confirmed again, and a probe closes the
	// breaker.
	if err := srv.Resume(); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	resumed = true
	waitFor(t, "node back", func() bool {
		get()
		st := status()
		return st.Subscribed && st.Breaker == tiered.BreakerClosed
	})
	s = scrape(t, r.reg)
	equal(t, "node_up", s.value(t, "tiered_node_up", "node", node), 1)
	equal(t, "breaker closed", s.value(t, "tiered_node_breaker_state", "node", node, "state", "closed"), 1)
	if v := s.value(t, "tiered_breaker_transitions_total", "node", node, "state", "half-open"); v < 1 {
		t.Errorf("half-open transitions: %v, want 1 at least", v)
	}
	if v := s.value(t, "tiered_breaker_transitions_total", "node", node, "state", "closed"); v < 1 {
		t.Errorf("closed transitions: %v, want 1 at least", v)
	}
	if v := s.value(t, "tiered_node_flushes_total", "node", node, "cause", "resubscribe"); v < 2 {
		t.Errorf("resubscribe flushes: %v, want 2 at least (the first subscription and the one after the pause)", v)
	}
}
