package tieredotel_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/tieredcache/tiered"
	"github.com/tieredcache/tiered/internal/redistest"
	"github.com/tieredcache/tiered/tieredotel"
)

// Instrument kinds, as collected.
const (
	counter   = "counter"   // monotonic cumulative int64 Sum
	gauge     = "gauge"     // int64 Gauge
	histogram = "histogram" // float64 Histogram, in seconds
)

var (
	getBounds  = []float64{0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}
	lagBounds  = []float64{0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1}
	loadBounds = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}
)

// instrument is what the package documentation promises of one instrument.
type instrument struct {
	unit, kind string
	bounds     []float64 // histograms
	observed   bool      // read at collection from Stats or Nodes (present whenever observed)
	perNode    bool      // from Nodes: present only with a shared tier
}

var instruments = map[string]instrument{
	"tiered.get.duration":        {unit: "s", kind: histogram, bounds: getBounds},
	"tiered.load.duration":       {unit: "s", kind: histogram, bounds: loadBounds},
	"tiered.lease.wait.duration": {unit: "s", kind: histogram, bounds: getBounds},
	"tiered.invalidation.lag":    {unit: "s", kind: histogram, bounds: lagBounds},

	"tiered.node.invalidation.sent":     {unit: "{message}", kind: counter},
	"tiered.node.invalidation.received": {unit: "{message}", kind: counter},
	"tiered.node.flushes":               {unit: "{flush}", kind: counter},
	"tiered.node.breaker.transitions":   {unit: "{transition}", kind: counter},
	"tiered.node.writes.missed":         {unit: "{write}", kind: counter},
	"tiered.node.writes.replayed":       {unit: "{key}", kind: counter},
	"tiered.node.cleared":               {unit: "{clear}", kind: counter},

	"tiered.near.hits":             {unit: "{get}", kind: counter, observed: true},
	"tiered.near.misses":           {unit: "{get}", kind: counter, observed: true},
	"tiered.shared.hits":           {unit: "{get}", kind: counter, observed: true},
	"tiered.shared.misses":         {unit: "{get}", kind: counter, observed: true},
	"tiered.shared.errors":         {unit: "{error}", kind: counter, observed: true},
	"tiered.shared.decode_errors":  {unit: "{error}", kind: counter, observed: true},
	"tiered.breaker.opens":         {unit: "{transition}", kind: counter, observed: true},
	"tiered.load.keys":             {unit: "{key}", kind: counter, observed: true},
	"tiered.load.errors":           {unit: "{error}", kind: counter, observed: true},
	"tiered.load.not_found":        {unit: "{key}", kind: counter, observed: true},
	"tiered.load.oversize":         {unit: "{key}", kind: counter, observed: true},
	"tiered.lease.waits":           {unit: "{wait}", kind: counter, observed: true},
	"tiered.lease.timeouts":        {unit: "{wait}", kind: counter, observed: true},
	"tiered.lease.lost":            {unit: "{lease}", kind: counter, observed: true},
	"tiered.lease.fill_notices":    {unit: "{wait}", kind: counter, observed: true},
	"tiered.refresh.runs":          {unit: "{refresh}", kind: counter, observed: true},
	"tiered.refresh.skipped":       {unit: "{refresh}", kind: counter, observed: true},
	"tiered.log.suppressed":        {unit: "{log_record}", kind: counter, observed: true},
	"tiered.invalidation.sent":     {unit: "{message}", kind: counter, observed: true},
	"tiered.invalidation.received": {unit: "{message}", kind: counter, observed: true},
	"tiered.invalidation.keys":     {unit: "{key}", kind: counter, observed: true},
	"tiered.subscription.lost":     {unit: "{subscription}", kind: counter, observed: true},
	"tiered.flushes":               {unit: "{flush}", kind: counter, observed: true},
	"tiered.writes.replayed":       {unit: "{key}", kind: counter, observed: true},
	"tiered.nodes.cleared":         {unit: "{node}", kind: counter, observed: true},
	"tiered.nodes.added":           {unit: "{node}", kind: counter, observed: true},
	"tiered.nodes.removed":         {unit: "{node}", kind: counter, observed: true},

	"tiered.node.subscribed":        {unit: "1", kind: gauge, observed: true, perNode: true},
	"tiered.node.breaker.state":     {unit: "1", kind: gauge, observed: true, perNode: true},
	"tiered.node.writes.pending":    {unit: "{key}", kind: gauge, observed: true, perNode: true},
	"tiered.node.writes.overflowed": {unit: "1", kind: gauge, observed: true, perNode: true},
	"tiered.node.sequence":          {unit: "{message}", kind: gauge, observed: true, perNode: true},
	"tiered.node.member":            {unit: "1", kind: gauge, observed: true, perNode: true},
	"tiered.node.confirmation.age":  {unit: "s", kind: gauge, observed: true, perNode: true},
}

// checkInstruments checks the name, unit, kind and description of every instrument
// collected, and that every observed one was (the per-node ones only if shared).
func checkInstruments(t *testing.T, s snapshot, shared bool) {
	t.Helper()
	for name, want := range instruments {
		if _, ok := s.m[name]; !ok && want.observed && (shared || !want.perNode) {
			t.Errorf("observable instrument %s not collected", name)
		}
	}
	for name, m := range s.m {
		want, ok := instruments[name]
		if !ok {
			t.Errorf("instrument %s collected, not documented", name)
			continue
		}
		if m.Unit != want.unit {
			t.Errorf("%s: unit %q, want %q", name, m.Unit, want.unit)
		}
		if m.Description == "" {
			t.Errorf("%s: no description", name)
		}
		switch d := m.Data.(type) {
		case metricdata.Sum[int64]:
			if want.kind != counter || !d.IsMonotonic || d.Temporality != metricdata.CumulativeTemporality {
				t.Errorf("%s: monotonic %v %v Sum, want a %s", name, d.IsMonotonic, d.Temporality, want.kind)
			}
		case metricdata.Gauge[int64], metricdata.Gauge[float64]:
			if want.kind != gauge {
				t.Errorf("%s: Gauge, want a %s", name, want.kind)
			}
		case metricdata.Histogram[float64]:
			if want.kind != histogram {
				t.Errorf("%s: Histogram, want a %s", name, want.kind)
			}
			for _, p := range d.DataPoints {
				if !slices.Equal(p.Bounds, want.bounds) {
					t.Errorf("%s: bounds %v, want %v", name, p.Bounds, want.bounds)
				}
				if v, _ := p.Attributes.Value(tieredotel.AttrCache); v != s.cache.Value {
					t.Errorf("%s: point %v without %v", name, p.Attributes.ToSlice(), s.cache)
				}
			}
		default:
			t.Errorf("%s: %T, want a %s", name, d, want.kind)
		}
	}
}

var (
	tierLoader   = tieredotel.AttrTier.String("loader")
	tierShared   = tieredotel.AttrTier.String("shared")
	getOK        = tieredotel.AttrGetOutcome.String("ok")
	getNotFound  = tieredotel.AttrGetOutcome.String("not_found")
	loadOK       = tieredotel.AttrLoadOutcome.String("ok")
	loadNotFound = tieredotel.AttrLoadOutcome.String("not_found")
	leaseFilled  = tieredotel.AttrLeaseOutcome.String("filled")
	resubscribe  = tieredotel.AttrFlushCause.String("resubscribe")
)

func stateAttr(s tiered.BreakerState) attribute.KeyValue {
	return tieredotel.AttrBreakerState.String(s.String())
}

var breakerStates = []tiered.BreakerState{tiered.BreakerClosed, tiered.BreakerHalfOpen, tiered.BreakerOpen}

// TestTwoReplicas runs two caches on two real Redis nodes, as two replicas of a
// service would, and checks that what each exports is what it did: loads, shared and
// near hits, a lease wait, an invalidation from one to the other.
func TestTwoReplicas(t *testing.T) {
	servers := redistest.Start(t, 2)
	addrs := []string{servers[0].Addr(), servers[1].Addr()}
	data := []string{"k0", "v0", "k1", "v1", "k2", "v2", "slow", "vs"}
	a := newReplica(t, "users", newSource(data...), ringOpts(t, addrs))
	b := newReplica(t, "users", newSource(data...), ringOpts(t, addrs))
	waitFor(t, "both caches subscribed to both nodes", func() bool {
		return allSubscribed(a.cache, 2) && allSubscribed(b.cache, 2)
	})
	keys := []string{"k0", "k1", "k2"}

	// A loads 3 keys and finds a 4th absent at the source, then hits its near-cache.
	for _, k := range keys {
		get(t, a.cache, k)
	}
	get(t, a.cache, "missing")
	for _, k := range keys {
		if v := get(t, a.cache, k); v != "v"+k[1:] {
			t.Fatalf("A: Get(%s) = %q", k, v)
		}
	}
	// B reads them from Redis, then hits its near-cache once.
	for _, k := range keys {
		if v := get(t, b.cache, k); v != "v"+k[1:] {
			t.Fatalf("B: Get(%s) = %q", k, v)
		}
	}
	get(t, b.cache, "missing")
	get(t, b.cache, "k0")

	// B waits for A's lease on "slow" and is answered by A's fill.
	entered, release := a.src.blockOn("slow")
	defer release()
	results := make(chan string, 2)
	go func() { v, _ := a.cache.Get(context.Background(), "slow"); results <- v }()
	<-entered
	go func() { v, _ := b.cache.Get(context.Background(), "slow"); results <- v }()
	waitFor(t, "B waits for A's lease", func() bool { return b.cache.Stats().LeaseWaits == 1 })
	release()
	for range 2 {
		if v := <-results; v != "vs" {
			t.Fatalf("Get(slow) = %q, want vs", v)
		}
	}

	// A writes k0: B receives the invalidation.
	if err := a.cache.Set(context.Background(), "k0", "v0b"); err != nil {
		t.Fatalf("Set: %v", err)
	}
	waitFor(t, "B receives A's invalidation", func() bool { return b.cache.Stats().InvalidationsReceived == 1 })

	sa, sb := a.collect(t), b.collect(t)
	checkInstruments(t, sa, true)
	checkInstruments(t, sb, true)
	stA, stB := a.cache.Stats(), b.cache.Stats()
	t.Logf("A: %+v", stA)
	t.Logf("B: %+v", stB)

	// Every observed counter is its Stats field.
	for _, r := range []struct {
		name string
		s    snapshot
		st   tiered.Stats
	}{{"A", sa, stA}, {"B", sb, stB}} {
		s, st := r.s, r.st
		for name, want := range map[string]uint64{
			"tiered.near.hits":             st.LocalHits,
			"tiered.near.misses":           st.LocalMisses,
			"tiered.shared.hits":           st.RemoteHits,
			"tiered.shared.misses":         st.RemoteMisses,
			"tiered.shared.errors":         st.RemoteErrors,
			"tiered.load.keys":             st.Loads,
			"tiered.load.not_found":        st.NotFound,
			"tiered.lease.waits":           st.LeaseWaits,
			"tiered.lease.fill_notices":    st.FillNotices,
			"tiered.invalidation.sent":     st.InvalidationsSent,
			"tiered.invalidation.received": st.InvalidationsReceived,
			"tiered.invalidation.keys":     st.KeysInvalidated,
		} {
			if got := s.value(name); uint64(got) != want {
				t.Errorf("%s: %s = %d, Stats has %d", r.name, name, got, want)
			}
		}
		if got := s.value("tiered.flushes", resubscribe); got != int64(st.FlushesResubscribe) || got != 2 {
			t.Errorf("%s: tiered.flushes{resubscribe} = %d, Stats has %d, want 2 (one per node)", r.name, got, st.FlushesResubscribe)
		}
		// Every Get that missed the near-cache is one point of tiered.get.duration.
		if got := s.countAll("tiered.get.duration"); got != st.LocalMisses {
			t.Errorf("%s: tiered.get.duration count %d, near misses %d", r.name, got, st.LocalMisses)
		}
		for _, addr := range addrs {
			node := tieredotel.AttrNode.String(addr)
			for name, want := range map[string]int64{
				"tiered.node.subscribed":        1,
				"tiered.node.member":            1,
				"tiered.node.writes.pending":    0,
				"tiered.node.writes.overflowed": 0,
			} {
				if got := s.value(name, node); got != want {
					t.Errorf("%s: %s{%s} = %d, want %d", r.name, name, addr, got, want)
				}
			}
			for _, st := range breakerStates {
				if got, want := s.value("tiered.node.breaker.state", node, stateAttr(st)), int64(0); st == tiered.BreakerClosed && got != 1 || st != tiered.BreakerClosed && got != want {
					t.Errorf("%s: tiered.node.breaker.state{%s, %s} = %d", r.name, addr, st, got)
				}
			}
			// Confirmed every HealthCheck (250 ms): an age that is not negative, and far
			// from the test's length on a healthy node, however loaded the machine.
			if age := s.floatValue("tiered.node.confirmation.age", node); age < 0 || age > 30 {
				t.Errorf("%s: tiered.node.confirmation.age{%s} = %v s", r.name, addr, age)
			}
			if got := s.value("tiered.node.flushes", node, resubscribe); got != 1 {
				t.Errorf("%s: tiered.node.flushes{%s, resubscribe} = %d, want 1", r.name, addr, got)
			}
		}
	}

	// A: 5 distinct keys loaded once each (one absent at the source), the rest near
	// hits; one invalidation sent, on k0's node.
	if n := a.src.calls.Load(); n != 5 {
		t.Errorf("A's Loader called %d times, want 5", n)
	}
	if got := sa.value("tiered.load.keys"); got != 5 {
		t.Errorf("A: tiered.load.keys = %d, want 5", got)
	}
	if got := sa.value("tiered.load.not_found"); got != 1 {
		t.Errorf("A: tiered.load.not_found = %d, want 1", got)
	}
	if ok, nf := sa.count("tiered.load.duration", loadOK), sa.count("tiered.load.duration", loadNotFound); ok != 4 || nf != 1 {
		t.Errorf("A: tiered.load.duration counts ok %d not_found %d, want 4 and 1", ok, nf)
	}
	if ok, nf := sa.count("tiered.get.duration", tierLoader, getOK), sa.count("tiered.get.duration", tierLoader, getNotFound); ok+nf != stA.Loads || ok != 4 || nf != 1 {
		t.Errorf("A: tiered.get.duration{loader} counts ok %d not_found %d, want 4 and 1 (loads %d)", ok, nf, stA.Loads)
	}
	if got := sa.value("tiered.near.hits"); got < 3 {
		t.Errorf("A: tiered.near.hits = %d, want at least 3", got)
	}
	if got := sa.value("tiered.invalidation.sent"); got != 1 {
		t.Errorf("A: tiered.invalidation.sent = %d, want 1", got)
	}
	sent := sa.int64Points("tiered.node.invalidation.sent")
	if len(sent) != 1 || sent[0].Value != 1 {
		t.Fatalf("A: tiered.node.invalidation.sent points %v, want one of 1", sent)
	}
	k0Node, _ := sent[0].Attributes.Value(tieredotel.AttrNode)
	if !slices.Contains(addrs, k0Node.AsString()) {
		t.Errorf("A: invalidation sent on node %q, not one of %v", k0Node.AsString(), addrs)
	}

	// B: no load; its Gets answered by Redis (one after waiting for A's lease);
	// one invalidation received from k0's node, with its lag.
	if n := b.src.calls.Load(); n != 0 {
		t.Errorf("B's Loader called %d times, want 0", n)
	}
	if got := sb.total("tiered.load.keys"); got != 0 {
		t.Errorf("B: tiered.load.keys = %d, want 0", got)
	}
	if got := sb.countAll("tiered.load.duration"); got != 0 {
		t.Errorf("B: tiered.load.duration count %d, want 0", got)
	}
	if got := sb.count("tiered.get.duration", tierShared, getOK); got != 4 {
		t.Errorf("B: tiered.get.duration{shared, ok} count %d, want 4 (3 keys and the lease wait)", got)
	}
	if got := sb.count("tiered.get.duration", tierShared, getNotFound); got != 1 {
		t.Errorf("B: tiered.get.duration{shared, not_found} count %d, want 1", got)
	}
	if got := sb.count("tiered.get.duration", tierShared, getOK) + sb.count("tiered.get.duration", tierShared, getNotFound); got != stB.RemoteHits {
		t.Errorf("B: tiered.get.duration{shared} count %d, shared hits %d", got, stB.RemoteHits)
	}
	if got := sb.value("tiered.near.hits"); got < 1 {
		t.Errorf("B: tiered.near.hits = %d, want at least 1", got)
	}
	if got := sb.count("tiered.lease.wait.duration", leaseFilled); got != 1 {
		t.Errorf("B: tiered.lease.wait.duration{filled} count %d, want 1", got)
	}
	node := tieredotel.AttrNode.String(k0Node.AsString())
	if got := sb.value("tiered.node.invalidation.received", node); got != 1 {
		t.Errorf("B: tiered.node.invalidation.received{%s} = %d, want 1", k0Node.AsString(), got)
	}
	if got := sb.total("tiered.node.invalidation.received"); got != 1 {
		t.Errorf("B: tiered.node.invalidation.received total %d, want 1", got)
	}
	if got, all := sb.count("tiered.invalidation.lag", node), sb.countAll("tiered.invalidation.lag"); got != 1 || all != 1 {
		t.Errorf("B: tiered.invalidation.lag{%s} count %d (all nodes %d), want 1", k0Node.AsString(), got, all)
	}
	if got := sb.value("tiered.node.sequence", node); got < 1 {
		t.Errorf("B: tiered.node.sequence{%s} = %d, want at least 1", k0Node.AsString(), got)
	}
}

// TestBreaker pauses the only node until its circuit breaker opens, then resumes it
// until it closes, and checks the breaker's gauge and transitions.
func TestBreaker(t *testing.T) {
	servers := redistest.Start(t, 1)
	opts := ringOpts(t, []string{servers[0].Addr()})
	opts.Timeout = 200 * time.Millisecond // each call to the paused node costs this
	r := newReplica(t, "sessions", newSource(), opts)
	waitFor(t, "subscribed", func() bool { return allSubscribed(r.cache, 1) })
	node := tieredotel.AttrNode.String(r.cache.Nodes()[0].Name)
	state := func(s snapshot) tiered.BreakerState {
		var on []tiered.BreakerState
		for _, st := range breakerStates {
			if s.value("tiered.node.breaker.state", node, stateAttr(st)) == 1 {
				on = append(on, st)
			}
		}
		if len(on) != 1 {
			t.Fatalf("tiered.node.breaker.state is 1 for %v, want one state", on)
		}
		return on[0]
	}
	if s := r.collect(t); state(s) != tiered.BreakerClosed {
		t.Fatalf("breaker %v before the pause", state(s))
	}

	if err := servers[0].Pause(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { servers[0].Resume() }) // before the Cache closes
	i := 0
	var s snapshot
	waitFor(t, "breaker open", func() bool {
		i++
		get(t, r.cache, fmt.Sprintf("k%d", i)) // the Loader answers
		s = r.collect(t)
		return state(s) == tiered.BreakerOpen
	})
	if got := s.value("tiered.node.breaker.transitions", node, stateAttr(tiered.BreakerOpen)); got < 1 {
		t.Errorf("tiered.node.breaker.transitions{open} = %d while open", got)
	}
	if got := s.value("tiered.breaker.opens"); got < 1 {
		t.Errorf("tiered.breaker.opens = %d while open", got)
	}
	waitFor(t, "subscription down", func() bool { return r.collect(t).value("tiered.node.subscribed", node) == 0 })

	if err := servers[0].Resume(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "breaker closed and subscribed", func() bool {
		i++
		get(t, r.cache, fmt.Sprintf("k%d", i)) // a probe, once half-open
		s = r.collect(t)
		return state(s) == tiered.BreakerClosed && s.value("tiered.node.subscribed", node) == 1
	})
	checkInstruments(t, s, true)
	st := r.cache.Stats()
	opens := s.value("tiered.node.breaker.transitions", node, stateAttr(tiered.BreakerOpen))
	if got := s.value("tiered.breaker.opens"); got != opens || uint64(got) != st.BreakerOpens {
		t.Errorf("tiered.breaker.opens = %d, transitions to open %d, Stats %d: want equal", got, opens, st.BreakerOpens)
	}
	for _, to := range []tiered.BreakerState{tiered.BreakerHalfOpen, tiered.BreakerClosed} {
		if got := s.value("tiered.node.breaker.transitions", node, stateAttr(to)); got < 1 {
			t.Errorf("tiered.node.breaker.transitions{%s} = %d, want at least 1", to, got)
		}
	}
	if got := s.value("tiered.subscription.lost"); got < 1 {
		t.Errorf("tiered.subscription.lost = %d, want at least 1", got)
	}
	if got := s.value("tiered.node.flushes", node, resubscribe); got < 2 || uint64(got) != st.FlushesResubscribe {
		t.Errorf("tiered.node.flushes{resubscribe} = %d, Stats %d, want at least 2", got, st.FlushesResubscribe)
	}
	if got := s.value("tiered.shared.errors"); got < 1 {
		t.Errorf("tiered.shared.errors = %d, want at least 1", got)
	}
}

// TestObserveLifecycle checks Observe, Unregister and Close on a Cache without a
// shared tier (no per-node instruments).
func TestObserveLifecycle(t *testing.T) {
	r := newReplica(t, "local", newSource("a", "1"), tiered.Options[string]{})
	get(t, r.cache, "a")
	get(t, r.cache, "a")
	s := r.collect(t)
	checkInstruments(t, s, false)
	if got := s.value("tiered.near.hits"); uint64(got) != r.cache.Stats().LocalHits || got != 1 {
		t.Errorf("tiered.near.hits = %d, Stats %d, want 1", got, r.cache.Stats().LocalHits)
	}
	if got := s.count("tiered.get.duration", tierLoader, getOK); got != 1 {
		t.Errorf("tiered.get.duration{loader, ok} count %d, want 1", got)
	}
	for name, in := range instruments {
		if _, ok := s.m[name]; ok && in.perNode {
			t.Errorf("%s collected without a shared tier", name)
		}
	}

	if _, err := r.m.Observe(r.cache); !errors.Is(err, tieredotel.ErrObserving) {
		t.Errorf("second Observe: %v, want ErrObserving", err)
	}
	r.m.Close()
	if _, ok := r.collect(t).m["tiered.near.hits"]; ok {
		t.Error("tiered.near.hits collected after Close")
	}
	if _, err := r.m.Observe(r.cache); !errors.Is(err, tieredotel.ErrClosed) {
		t.Errorf("Observe after Close: %v, want ErrClosed", err)
	}
	get(t, r.cache, "b") // recording goes on
	if got := r.collect(t).count("tiered.get.duration", tierLoader, getNotFound); got != 1 {
		t.Errorf("tiered.get.duration{loader, not_found} count %d after Close, want 1", got)
	}
}

// TestUnregister checks that an unregistered Observe stops reporting, and that the
// Metrics can observe again (a new Cache).
func TestUnregister(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	m, err := tieredotel.New(mp, tieredotel.Options{Cache: "c"})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	c, err := tiered.New(tiered.Options[string]{Recorder: m})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := &replica{name: "c", cache: c, m: m, reader: reader}
	reg, err := m.Observe(c)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := r.collect(t).m["tiered.near.misses"]; !ok {
		t.Fatal("tiered.near.misses not collected while observed")
	}
	if err := reg.Unregister(); err != nil {
		t.Fatal(err)
	}
	if err := reg.Unregister(); err != nil {
		t.Fatalf("second Unregister: %v", err)
	}
	if _, ok := r.collect(t).m["tiered.near.misses"]; ok {
		t.Fatal("tiered.near.misses collected after Unregister")
	}
	if _, err := m.Observe(c); err != nil {
		t.Fatalf("Observe after Unregister: %v", err)
	}
	if _, ok := r.collect(t).m["tiered.near.misses"]; !ok {
		t.Fatal("tiered.near.misses not collected when observed again")
	}
}

func TestNewNeedsName(t *testing.T) {
	if _, err := tieredotel.New(nil, tieredotel.Options{}); err == nil {
		t.Fatal("New without Options.Cache: no error")
	}
	if _, err := tieredotel.New(nil, tieredotel.Options{Cache: "c"}); err != nil {
		t.Fatalf("New with the global MeterProvider: %v", err)
	}
}

// recordAll calls every Recorder method once.
func recordAll(m *tieredotel.Metrics, notFound error) {
	m.RecordGet(tiered.TierShared, time.Millisecond, nil)
	m.RecordGet(tiered.TierLoader, time.Millisecond, notFound)
	m.RecordLoad(1, time.Millisecond, nil)
	m.RecordLeaseWait(time.Millisecond, true)
	m.RecordInvalidationSent("node-0", 1)
	m.RecordInvalidationReceived("node-0", 1, 100*time.Microsecond)
	m.RecordFlush("node-0", tiered.FlushGap)
	m.RecordBreaker("node-0", tiered.BreakerOpen)
	m.RecordMissedWrite("node-0", 1)
	m.RecordReplay("node-0", 1, true)
}

// TestRecorderNoAllocs checks that the Recorder methods, which run on the cache's hot
// paths, allocate nothing once a node has been seen.
func TestRecorderNoAllocs(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	m, err := tieredotel.New(mp, tieredotel.Options{Cache: "c"})
	if err != nil {
		t.Fatal(err)
	}
	notFound := fmt.Errorf("load: %w", tiered.ErrNotFound)
	recordAll(m, notFound)
	if n := testing.AllocsPerRun(100, func() { recordAll(m, notFound) }); n != 0 {
		t.Errorf("Recorder methods: %v allocations per round, want 0", n)
	}
	r := &replica{name: "c", m: m, reader: reader}
	s := r.collect(t)
	if got := s.count("tiered.get.duration", tierLoader, getNotFound); got != 102 {
		t.Errorf("tiered.get.duration{loader, not_found} count %d, want 102", got)
	}
	if got := s.value("tiered.node.cleared", tieredotel.AttrNode.String("node-0")); got != 102 {
		t.Errorf("tiered.node.cleared{node-0} = %d, want 102", got)
	}
}

func BenchmarkRecordGet(b *testing.B) {
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	defer mp.Shutdown(context.Background())
	m, err := tieredotel.New(mp, tieredotel.Options{Cache: "c"})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.RecordGet(tiered.TierShared, 300*time.Microsecond, nil)
		}
	})
}

func BenchmarkRecordInvalidationReceived(b *testing.B) {
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	defer mp.Shutdown(context.Background())
	m, err := tieredotel.New(mp, tieredotel.Options{Cache: "c"})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.RecordInvalidationReceived("node-0", 1, 100*time.Microsecond)
		}
	})
}
