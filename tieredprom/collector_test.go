package tieredprom_test

// Tests without Redis: the mapping of every Stats field and NodeStatus field to its
// metric, through a fake Source; names, labels and registration; the cost of the
// Record methods.

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tieredcache/tiered"
	"github.com/tieredcache/tiered/tieredprom"
)

// fakeSource is a Source that returns fixed values.
type fakeSource struct {
	stats tiered.Stats
	nodes []tiered.NodeStatus
}

func (f *fakeSource) Stats() tiered.Stats        { return f.stats }
func (f *fakeSource) Nodes() []tiered.NodeStatus { return f.nodes }

// statsMetrics names the counter that exposes each Stats field, or, after "=", the
// Recorder family whose sum over its labels equals it, or "-" for a field left out.
// A field missing here fails TestEveryStatsFieldIsExposed: a new Stats field must be
// exposed (or left out on purpose).
var statsMetrics = map[string]string{
	"LocalHits":             "tiered_near_hits_total",
	"LocalMisses":           "tiered_near_misses_total",
	"RemoteHits":            "tiered_shared_hits_total",
	"RemoteMisses":          "tiered_shared_misses_total",
	"RemoteErrors":          "tiered_shared_errors_total",
	"BreakerOpens":          "=tiered_breaker_transitions_total",
	"DecodeErrors":          "tiered_decode_errors_total",
	"Loads":                 "tiered_loads_total",
	"LoadErrors":            "tiered_load_errors_total",
	"NotFound":              "tiered_load_not_found_total",
	"Oversize":              "tiered_oversize_values_total",
	"LeaseWaits":            "tiered_lease_waits_total",
	"LeaseTimeouts":         "tiered_lease_timeouts_total",
	"LeasesLost":            "tiered_leases_lost_total",
	"FillNotices":           "tiered_lease_fill_notices_total",
	"Refreshes":             "tiered_refreshes_total",
	"RefreshesSkipped":      "tiered_refreshes_skipped_total",
	"LogsSuppressed":        "tiered_logs_suppressed_total",
	"InvalidationsSent":     "=tiered_invalidations_sent_total",
	"InvalidationsReceived": "=tiered_invalidations_received_total",
	"KeysInvalidated":       "=tiered_invalidation_keys_received_total",
	"SubscriptionsLost":     "tiered_subscriptions_lost_total",
	"FlushesResubscribe":    "=tiered_node_flushes_total",
	"FlushesGap":            "=tiered_node_flushes_total",
	"FlushesEpoch":          "=tiered_node_flushes_total",
	"FlushesCleared":        "=tiered_node_flushes_total",
	"WritesReplayed":        "=tiered_missed_writes_replayed_total",
	"NodesCleared":          "=tiered_nodes_cleared_total",
	"NodesAdded":            "tiered_nodes_added_total",
	"NodesRemoved":          "tiered_nodes_removed_total",
	"DeliveryLagMax":        "-",
	"DeliveryLagMean":       "-",
}

// TestEveryStatsFieldIsExposed gives every Stats field a distinct value and finds it
// in its counter, with the cache label.
func TestEveryStatsFieldIsExposed(t *testing.T) {
	src := &fakeSource{nodes: []tiered.NodeStatus{{Name: "n1"}}} // so that the per-node families have a series
	st := reflect.ValueOf(&src.stats).Elem()
	want := map[string]float64{}
	for i := range st.NumField() {
		f := st.Type().Field(i)
		metric, ok := statsMetrics[f.Name]
		if !ok {
			t.Errorf("Stats.%s is not exposed: add it to the collector (or to statsMetrics as left out)", f.Name)
			continue
		}
		if f.Type.Kind() != reflect.Uint64 {
			continue
		}
		st.Field(i).SetUint(uint64(1000 + i))
		if !strings.HasPrefix(metric, "=") && metric != "-" {
			want[metric] = float64(1000 + i)
		}
	}
	m := tieredprom.New(tieredprom.Options{Cache: "users"})
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m.Collector(src))
	s := gather(t, reg)
	for name, v := range want {
		s.checkType(t, name, counter)
		if got := s.value(t, name, "cache", "users"); got != v {
			t.Errorf("%s = %v, want %v", name, got, v)
		}
	}
	for _, metric := range statsMetrics {
		if name, ok := strings.CutPrefix(metric, "="); ok {
			s.checkType(t, name, counter)
		}
	}
	s.checkCacheLabel(t, "users")
	lint(t, m.Collector(src))
}

// TestNodeGauges checks every per-node gauge against the NodeStatus it comes from,
// and that each node's counters are exposed, at 0, from the first scrape.
func TestNodeGauges(t *testing.T) {
	src := &fakeSource{nodes: []tiered.NodeStatus{
		{Name: "n1", Addr: "10.0.0.1:6379", Member: true, Breaker: tiered.BreakerOpen, Subscribed: false,
			Since: time.Unix(1700000000, 500_000_000), MissedWrites: 7, Overflowed: true, Epoch: "e1", Seq: 42,
			Confirmed: time.Unix(1700000200, 500_000_000)},
		{Name: "n2", Addr: "10.0.0.2:6379", Member: false, Breaker: tiered.BreakerHalfOpen, Subscribed: true,
			Since: time.Unix(1700000100, 0)},
	}}
	m := tieredprom.New(tieredprom.Options{Cache: "users"})
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m.Collector(src))
	const want = `
# HELP tiered_node_breaker_state State of the node's circuit breaker: 1 for the current state (closed, half-open or open), 0 for the others. On a Redis Cluster, the worst among its masters'.
# TYPE tiered_node_breaker_state gauge
tiered_node_breaker_state{cache="users",node="n1",state="closed"} 0
tiered_node_breaker_state{cache="users",node="n1",state="half-open"} 0
tiered_node_breaker_state{cache="users",node="n1",state="open"} 1
tiered_node_breaker_state{cache="users",node="n2",state="closed"} 0
tiered_node_breaker_state{cache="users",node="n2",state="half-open"} 1
tiered_node_breaker_state{cache="users",node="n2",state="open"} 0
# HELP tiered_node_confirmed_timestamp_seconds When the node's invalidations were last confirmed (Options.MaxStaleness), in seconds since the Unix epoch: its keys are served from the near-cache only until MaxStaleness after it. Absent before the first confirmation.
# TYPE tiered_node_confirmed_timestamp_seconds gauge
tiered_node_confirmed_timestamp_seconds{cache="users",node="n1"} 1.7000002005e+09
# HELP tiered_node_info Always 1: the node's address (a Cluster's seed addresses, comma-separated) and the epoch of its last invalidation message.
# TYPE tiered_node_info gauge
tiered_node_info{addr="10.0.0.1:6379",cache="users",epoch="e1",node="n1"} 1
tiered_node_info{addr="10.0.0.2:6379",cache="users",epoch="",node="n2"} 1
# HELP tiered_node_last_sequence Sequence number of the last invalidation message received from the node, within its epoch (see node_info); 0 before the first.
# TYPE tiered_node_last_sequence gauge
tiered_node_last_sequence{cache="users",node="n1"} 42
tiered_node_last_sequence{cache="users",node="n2"} 0
# HELP tiered_node_member 1 if the node is on the ring, 0 if it was removed by RemoveNode and is still in its handoff.
# TYPE tiered_node_member gauge
tiered_node_member{cache="users",node="n1"} 1
tiered_node_member{cache="users",node="n2"} 0
# HELP tiered_node_missed_writes Keys of Sets and Deletes that could not be confirmed on the node and are not replayed yet; those keys are not read there until they are.
# TYPE tiered_node_missed_writes gauge
tiered_node_missed_writes{cache="users",node="n1"} 7
tiered_node_missed_writes{cache="users",node="n2"} 0
# HELP tiered_node_missed_writes_overflowed 1 if the node's missed writes exceeded MissedDeletes: none of its keys is read until the node is cleared.
# TYPE tiered_node_missed_writes_overflowed gauge
tiered_node_missed_writes_overflowed{cache="users",node="n1"} 1
tiered_node_missed_writes_overflowed{cache="users",node="n2"} 0
# HELP tiered_node_subscription_changed_timestamp_seconds When node_up last changed (or the subscriber started, if it never has), in seconds since the Unix epoch.
# TYPE tiered_node_subscription_changed_timestamp_seconds gauge
tiered_node_subscription_changed_timestamp_seconds{cache="users",node="n1"} 1.7000000005e+09
tiered_node_subscription_changed_timestamp_seconds{cache="users",node="n2"} 1.7000001e+09
# HELP tiered_node_up 1 if this process's invalidation subscription to the node is confirmed (its keys are served from the near-cache), 0 if not.
# TYPE tiered_node_up gauge
tiered_node_up{cache="users",node="n1"} 0
tiered_node_up{cache="users",node="n2"} 1
`
	names := []string{"tiered_node_breaker_state", "tiered_node_confirmed_timestamp_seconds", "tiered_node_info", "tiered_node_last_sequence", "tiered_node_member",
		"tiered_node_missed_writes", "tiered_node_missed_writes_overflowed",
		"tiered_node_subscription_changed_timestamp_seconds", "tiered_node_up"}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}

	s := gather(t, reg)
	for _, node := range []string{"n1", "n2"} {
		for _, name := range []string{"tiered_invalidations_sent_total", "tiered_invalidations_received_total",
			"tiered_missed_writes_total", "tiered_missed_writes_replayed_total", "tiered_nodes_cleared_total"} {
			if got := s.value(t, name, "node", node); got != 0 {
				t.Errorf("%s{node=%q} = %v, want 0", name, node, got)
			}
		}
		if got := s.count(t, "tiered_node_flushes_total", "node", node); got != 4 {
			t.Errorf("tiered_node_flushes_total{node=%q} has %d series, want one per cause (4)", node, got)
		}
		if got := s.histCount(t, "tiered_invalidation_lag_seconds", "node", node); got != 0 {
			t.Errorf("tiered_invalidation_lag_seconds{node=%q} count = %d, want 0", node, got)
		}
	}
	lint(t, m.Collector(src))
}

// TestRecorderFamilies feeds every Record method and reads the families back.
func TestRecorderFamilies(t *testing.T) {
	m := tieredprom.New(tieredprom.Options{Cache: "users"})
	m.RecordGet(tiered.TierShared, 2*time.Millisecond, nil)
	m.RecordGet(tiered.TierLoader, 20*time.Millisecond, tiered.ErrNotFound)
	m.RecordGet(tiered.TierLoader, 30*time.Millisecond, errors.New("source down"))
	m.RecordGet(tiered.TierNone, time.Second, fmt.Errorf("get: %w", errors.ErrUnsupported))
	m.RecordLoad(1, 10*time.Millisecond, nil)
	m.RecordLoad(5, 15*time.Millisecond, nil)
	m.RecordLoad(1, 10*time.Millisecond, fmt.Errorf("load: %w", tiered.ErrNotFound))
	m.RecordLoad(1, 10*time.Millisecond, &tiered.PanicError{Value: "boom"})
	m.RecordLeaseWait(5*time.Millisecond, true)
	m.RecordLeaseWait(2*time.Second, false)
	m.RecordInvalidationSent("n1", 3)
	m.RecordInvalidationReceived("n1", 2, 300*time.Microsecond)
	m.RecordInvalidationReceived("n2", 1, 700*time.Microsecond)
	m.RecordFlush("n1", tiered.FlushResubscribe)
	m.RecordFlush("n1", tiered.FlushGap)
	m.RecordFlush("n1", tiered.FlushEpoch)
	m.RecordFlush("n1", tiered.FlushCleared)
	m.RecordFlush("n1", tiered.FlushCleared)
	m.RecordBreaker("n2", tiered.BreakerOpen)
	m.RecordBreaker("n2", tiered.BreakerHalfOpen)
	m.RecordBreaker("n2", tiered.BreakerClosed)
	m.RecordMissedWrite("n2", 1)
	m.RecordMissedWrite("n2", 3)
	m.RecordReplay("n2", 3, false)
	m.RecordReplay("n2", 0, true)

	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m.Collector(nil))
	s := gather(t, reg)
	s.checkType(t, "tiered_get_duration_seconds", histogram)
	s.checkType(t, "tiered_load_duration_seconds", histogram)
	s.checkType(t, "tiered_lease_wait_duration_seconds", histogram)
	s.checkType(t, "tiered_invalidation_lag_seconds", histogram)
	checks := []struct {
		got  float64
		want float64
		what string
	}{
		{float64(s.histCount(t, "tiered_get_duration_seconds", "tier", "shared")), 1, "get shared"},
		{float64(s.histCount(t, "tiered_get_duration_seconds", "tier", "loader")), 2, "get loader"},
		{float64(s.histCount(t, "tiered_get_duration_seconds", "tier", "none")), 1, "get none"},
		{float64(s.count(t, "tiered_get_duration_seconds", "tier", "near")), 0, "get near series (near hits are not observed)"},
		{s.histSum(t, "tiered_get_duration_seconds", "tier", "loader"), 0.05, "get loader sum"},
		{s.value(t, "tiered_get_errors_total", "tier", "loader"), 1, "get errors loader (ErrNotFound is no error)"},
		{s.value(t, "tiered_get_errors_total", "tier", "none"), 1, "get errors none"},
		{s.value(t, "tiered_get_errors_total", "tier", "shared"), 0, "get errors shared"},
		{float64(s.histCount(t, "tiered_load_duration_seconds", "outcome", "ok")), 2, "load ok"},
		{float64(s.histCount(t, "tiered_load_duration_seconds", "outcome", "not_found")), 1, "load not_found"},
		{float64(s.histCount(t, "tiered_load_duration_seconds", "outcome", "error")), 1, "load error"},
		{float64(s.histCount(t, "tiered_lease_wait_duration_seconds", "outcome", "filled")), 1, "lease filled"},
		{float64(s.histCount(t, "tiered_lease_wait_duration_seconds", "outcome", "loaded")), 1, "lease loaded"},
		{s.value(t, "tiered_invalidations_sent_total", "node", "n1"), 1, "sent n1"},
		{s.value(t, "tiered_invalidation_keys_sent_total", "node", "n1"), 3, "sent keys n1"},
		{s.value(t, "tiered_invalidations_received_total", "node", "n1"), 1, "received n1"},
		{s.value(t, "tiered_invalidations_received_total", "node", "n2"), 1, "received n2"},
		{s.value(t, "tiered_invalidation_keys_received_total", "node", "n1"), 2, "received keys n1"},
		{float64(s.histCount(t, "tiered_invalidation_lag_seconds", "node", "n2")), 1, "lag n2"},
		{s.histSum(t, "tiered_invalidation_lag_seconds", "node", "n2"), 0.0007, "lag n2 sum"},
		{s.histBucket(t, "tiered_invalidation_lag_seconds", 0.0005, "node", "n1"), 1, "lag n1 le 0.0005"},
		{s.histBucket(t, "tiered_invalidation_lag_seconds", 0.0005, "node", "n2"), 0, "lag n2 le 0.0005"},
		{s.value(t, "tiered_node_flushes_total", "node", "n1", "cause", "resubscribe"), 1, "flush resubscribe"},
		{s.value(t, "tiered_node_flushes_total", "node", "n1", "cause", "gap"), 1, "flush gap"},
		{s.value(t, "tiered_node_flushes_total", "node", "n1", "cause", "epoch"), 1, "flush epoch"},
		{s.value(t, "tiered_node_flushes_total", "node", "n1", "cause", "cleared"), 2, "flush cleared"},
		{s.value(t, "tiered_breaker_transitions_total", "node", "n2", "state", "open"), 1, "breaker open"},
		{s.value(t, "tiered_breaker_transitions_total", "node", "n2", "state", "half-open"), 1, "breaker half-open"},
		{s.value(t, "tiered_breaker_transitions_total", "node", "n2", "state", "closed"), 1, "breaker closed"},
		{s.value(t, "tiered_breaker_transitions_total", "node", "n1"), 0, "breaker n1"},
		{s.value(t, "tiered_missed_writes_total", "node", "n2"), 2, "missed writes"},
		{s.value(t, "tiered_missed_writes_replayed_total", "node", "n2"), 3, "replayed"},
		{s.value(t, "tiered_nodes_cleared_total", "node", "n2"), 1, "cleared"},
	}
	for _, c := range checks {
		if diff := c.got - c.want; diff > 1e-9 || diff < -1e-9 {
			t.Errorf("%s: %v, want %v", c.what, c.got, c.want)
		}
	}
	if s["tiered_near_hits_total"] != nil || s["tiered_node_up"] != nil {
		t.Error("Collector(nil) exposes Stats or Nodes metrics")
	}
	s.checkCacheLabel(t, "users")
	lint(t, m.Collector(nil))
}

// TestOptions: Namespace, buckets, and the cache label that keeps two caches apart on
// one registry.
func TestOptions(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	users := tieredprom.New(tieredprom.Options{Namespace: "app", Cache: "users", LagBuckets: []float64{0.001, 0.01}})
	orders := tieredprom.New(tieredprom.Options{Namespace: "app", Cache: "orders"})
	reg.MustRegister(users.Collector(&fakeSource{}), orders.Collector(&fakeSource{}))
	users.RecordInvalidationReceived("n1", 1, 5*time.Millisecond)
	orders.RecordInvalidationReceived("n1", 1, 5*time.Millisecond)
	s := gather(t, reg)
	if got := s.count(t, "app_loads_total"); got != 2 {
		t.Errorf("app_loads_total has %d series, want one per cache (2)", got)
	}
	for _, f := range s {
		if !strings.HasPrefix(f.GetName(), "app_") {
			t.Errorf("%s: not in Namespace app", f.GetName())
		}
	}
	for cache, buckets := range map[string]int{"users": 2, "orders": len(tieredprom.DefaultLagBuckets)} {
		for _, mt := range s.metrics("app_invalidation_lag_seconds", "cache", cache) {
			if got := len(mt.GetHistogram().GetBucket()); got != buckets {
				t.Errorf("cache %s: %d lag buckets, want %d", cache, got, buckets)
			}
		}
	}

	// The same cache label twice on one registry is refused, not merged.
	dup := tieredprom.New(tieredprom.Options{Namespace: "app", Cache: "users"})
	if err := reg.Register(dup.Collector(&fakeSource{})); err == nil {
		t.Error("a second Collector with the same Namespace and Cache registered")
	}
	// The defaults.
	def := tieredprom.New(tieredprom.Options{})
	r := prometheus.NewPedanticRegistry()
	r.MustRegister(def.Collector(&fakeSource{}))
	if got := gather(t, r).value(t, "tiered_loads_total", "cache", "default"); got != 0 {
		t.Errorf("tiered_loads_total{cache=default} = %v", got)
	}
}

// TestInvalidUTF8 checks that a node name that is not UTF-8 neither panics nor fails
// the scrape.
func TestInvalidUTF8(t *testing.T) {
	name := "node-\xff"
	m := tieredprom.New(tieredprom.Options{Cache: "c\xfe"})
	m.RecordInvalidationReceived(name, 1, time.Millisecond)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m.Collector(&fakeSource{nodes: []tiered.NodeStatus{{Name: name, Addr: "a\xff", Epoch: "\xff"}}}))
	s := gather(t, reg)
	if got := s.value(t, "tiered_invalidations_received_total", "node", "node-\uFFFD"); got != 1 {
		t.Errorf("invalidations_received_total{node=%q} = %v, want 1", "node-\uFFFD", got)
	}
	if got := s.value(t, "tiered_node_up", "node", "node-\uFFFD"); got != 0 {
		t.Errorf("node_up = %v", got)
	}
}

// TestRecordAllocs: once a node has been seen, no Record method allocates.
func TestRecordAllocs(t *testing.T) {
	m := tieredprom.New(tieredprom.Options{})
	errLoad := errors.New("load failed")
	m.RecordFlush("node-0", tiered.FlushResubscribe) // first sight of node-0
	node := strings.Clone("node-0")                  // not the same string as the map's key
	for name, f := range map[string]func(){
		"RecordGet":                  func() { m.RecordGet(tiered.TierShared, time.Millisecond, nil) },
		"RecordGet error":            func() { m.RecordGet(tiered.TierLoader, time.Millisecond, errLoad) },
		"RecordLoad":                 func() { m.RecordLoad(1, time.Millisecond, tiered.ErrNotFound) },
		"RecordLeaseWait":            func() { m.RecordLeaseWait(time.Millisecond, true) },
		"RecordInvalidationSent":     func() { m.RecordInvalidationSent(node, 2) },
		"RecordInvalidationReceived": func() { m.RecordInvalidationReceived(node, 2, time.Millisecond) },
		"RecordFlush":                func() { m.RecordFlush(node, tiered.FlushGap) },
		"RecordBreaker":              func() { m.RecordBreaker(node, tiered.BreakerOpen) },
		"RecordMissedWrite":          func() { m.RecordMissedWrite(node, 1) },
		"RecordReplay":               func() { m.RecordReplay(node, 1, true) },
	} {
		if n := testing.AllocsPerRun(100, f); n != 0 {
			t.Errorf("%s: %v allocations", name, n)
		}
	}
}

// BenchmarkRecordGet is the cost the Recorder adds to a near miss.
func BenchmarkRecordGet(b *testing.B) {
	m := tieredprom.New(tieredprom.Options{})
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.RecordGet(tiered.TierShared, 150*time.Microsecond, nil)
		}
	})
}

// BenchmarkRecordInvalidationReceived is the cost per invalidation message received.
func BenchmarkRecordInvalidationReceived(b *testing.B) {
	m := tieredprom.New(tieredprom.Options{})
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.RecordInvalidationReceived("node-0", 1, 300*time.Microsecond)
		}
	})
}
