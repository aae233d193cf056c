package tieredotel

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/tieredcache/tiered"
)

// ScopeName is the instrumentation scope (the Meter's name) of every instrument.
const ScopeName = "github.com/tieredcache/tiered/tieredotel"

// Attribute keys.
const (
	AttrCache        = attribute.Key("tiered.cache")         // Options.Cache, on every measurement
	AttrTier         = attribute.Key("tiered.tier")          // "none", "shared" or "loader" (tiered.Tier)
	AttrGetOutcome   = attribute.Key("tiered.get.outcome")   // "ok", "not_found" or "error"
	AttrLoadOutcome  = attribute.Key("tiered.load.outcome")  // "ok", "not_found" or "error"
	AttrLeaseOutcome = attribute.Key("tiered.lease.outcome") // "filled" or "loaded"
	AttrNode         = attribute.Key("tiered.node")          // a node's name (tiered.NodeStatus.Name)
	AttrFlushCause   = attribute.Key("tiered.flush.cause")   // "resubscribe", "gap", "epoch" or "cleared" (tiered.FlushCause)
	AttrBreakerState = attribute.Key("tiered.breaker.state") // "closed", "half-open" or "open" (tiered.BreakerState)
)

// Options configures New.
type Options struct {
	// Cache names the cache: the value of the tiered.cache attribute on every
	// measurement. Required. Give each Cache of a process its own name (and its own
	// Metrics).
	Cache string
}

// Explicit bucket boundaries, in seconds, advised for the histograms.
var (
	// getBuckets: a near miss answered by Redis takes a few hundred microseconds;
	// one that loads, or waits for a lease, up to seconds.
	getBuckets = []float64{0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}
	// lagBuckets: a pub/sub delivery takes tens to hundreds of microseconds.
	lagBuckets = []float64{0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1}
	// loadBuckets: a Loader is a database or a service, up to LoadTimeout (10 s).
	loadBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}
)

// outcomes indexes the ok / not_found / error attribute values.
const (
	outcomeOK = iota
	outcomeNotFound
	outcomeError
	numOutcomes
)

var outcomeNames = [numOutcomes]string{"ok", "not_found", "error"}

func outcomeOf(err error) int {
	switch {
	case err == nil:
		return outcomeOK
	case errors.Is(err, tiered.ErrNotFound):
		return outcomeNotFound
	}
	return outcomeError
}

// The values of tiered.Tier, tiered.FlushCause and tiered.BreakerState that the
// precomputed attribute sets cover; a value beyond them (a later version's) is
// recorded with attributes built on the spot.
const (
	numTiers    = int(tiered.TierLoader) + 1
	numCauses   = int(tiered.FlushCleared) + 1
	numBreakers = int(tiered.BreakerOpen) + 1
)

// Metrics exposes one Cache's metrics as OpenTelemetry instruments. It is a
// tiered.Recorder (set it as Options.Recorder: latencies and per-node events), and
// Observe adds the instruments read from Cache.Stats and Cache.Nodes at each
// collection. Its methods are safe for concurrent use.
type Metrics struct {
	meter metric.Meter
	cache attribute.KeyValue // tiered.cache

	// The Recorder's instruments, and their measurement options.
	getDur, loadDur, leaseDur, lag       metric.Float64Histogram
	sent, received, flushes, transitions metric.Int64Counter
	missed, replayed, cleared            metric.Int64Counter
	getOpts                              [numTiers][numOutcomes][]metric.RecordOption
	loadOpts                             [numOutcomes][]metric.RecordOption
	leaseOpts                            [2][]metric.RecordOption // loaded, filled
	nodes                                sync.Map                 // node name -> *nodeAttrs

	// Observe's instruments, and their measurement options.
	observed                                []metric.Observable // all of them, for RegisterCallback
	stats                                   []statInstrument
	flushesTotal                            metric.Int64ObservableCounter
	nodeSubscribed, nodeBreaker, nodeMember metric.Int64ObservableGauge
	nodePending, nodeOverflowed, nodeSeq    metric.Int64ObservableGauge
	nodeConfirmAge                          metric.Float64ObservableGauge
	cacheObserve                            []metric.ObserveOption
	causeObserve                            [numCauses][]metric.ObserveOption

	mu     sync.Mutex
	reg    *Registration // the current Observe's, or nil
	closed bool
}

// nodeAttrs are the measurement options of one node, built on its first event.
type nodeAttrs struct {
	add     []metric.AddOption
	record  []metric.RecordOption
	observe []metric.ObserveOption
	flush   [numCauses][]metric.AddOption
	breaker [numBreakers][]metric.AddOption
	state   [numBreakers][]metric.ObserveOption
}

// New creates the instruments of a Cache named opts.Cache on mp's Meter ScopeName;
// a nil mp is otel.GetMeterProvider(). The instruments record from then on: pass the
// Metrics as the Cache's Options.Recorder, then call Observe with the Cache.
func New(mp metric.MeterProvider, opts Options) (*Metrics, error) {
	if opts.Cache == "" {
		return nil, errors.New("tieredotel: Options.Cache must name the cache")
	}
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	m := &Metrics{meter: mp.Meter(ScopeName), cache: AttrCache.String(opts.Cache)}
	if err := m.instruments(); err != nil {
		return nil, err
	}
	m.precompute()
	return m, nil
}

// instruments creates every instrument; see the package documentation for the list.
func (m *Metrics) instruments() error {
	var errs []error
	hist := func(name, desc string, buckets []float64) metric.Float64Histogram {
		h, err := m.meter.Float64Histogram(name, metric.WithUnit("s"), metric.WithDescription(desc),
			metric.WithExplicitBucketBoundaries(buckets...))
		errs = append(errs, err)
		return h
	}
	counter := func(name, unit, desc string) metric.Int64Counter {
		c, err := m.meter.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	observed := func(name, unit, desc string) metric.Int64ObservableCounter {
		c, err := m.meter.Int64ObservableCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		m.observed = append(m.observed, c)
		return c
	}
	gauge := func(name, unit, desc string) metric.Int64ObservableGauge {
		g, err := m.meter.Int64ObservableGauge(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		m.observed = append(m.observed, g)
		return g
	}

	m.getDur = hist("tiered.get.duration",
		"Duration of Gets (and GetMany keys) that missed the near-cache, by the tier that answered.", getBuckets)
	m.loadDur = hist("tiered.load.duration",
		"Duration of Loader and BatchLoader calls.", loadBuckets)
	m.leaseDur = hist("tiered.lease.wait.duration",
		"Time loads waited for another process's lease on their key.", getBuckets)
	m.lag = hist("tiered.invalidation.lag",
		"Time from a writer's send of an invalidation to its eviction here (writer's clock to ours), by node.", lagBuckets)

	m.sent = counter("tiered.node.invalidation.sent", "{message}",
		"Invalidation messages this cache's writes published, by node.")
	m.received = counter("tiered.node.invalidation.received", "{message}",
		"Invalidation messages from other processes applied to the near-cache, by node.")
	m.flushes = counter("tiered.node.flushes", "{flush}",
		"Drops of a node's near-cache entries, by node and cause.")
	m.transitions = counter("tiered.node.breaker.transitions", "{transition}",
		"Circuit breaker state changes, by node and new state.")
	m.missed = counter("tiered.node.writes.missed", "{write}",
		"Sets and Deletes that could not be confirmed on a node, by node.")
	m.replayed = counter("tiered.node.writes.replayed", "{key}",
		"Keys deleted on a node by a replay of its missed writes, by node.")
	m.cleared = counter("tiered.node.cleared", "{clear}",
		"Times a node's keys were all cleared because its missed writes overflowed, by node.")

	for _, s := range statInstruments {
		m.stats = append(m.stats, statInstrument{observed(s.name, s.unit, s.desc), s.value})
	}
	m.flushesTotal = observed("tiered.flushes", "{flush}",
		"Drops of a node's near-cache entries, by cause (tiered.node.flushes has them by node).")

	m.nodeSubscribed = gauge("tiered.node.subscribed", "1",
		"1 while the node's invalidation subscription is confirmed (only then are its keys served from the near-cache), else 0.")
	m.nodeBreaker = gauge("tiered.node.breaker.state", "1",
		"1 for the node's current circuit breaker state (tiered.breaker.state), 0 for the others.")
	m.nodePending = gauge("tiered.node.writes.pending", "{key}",
		"Keys of missed writes not yet replayed on the node.")
	m.nodeOverflowed = gauge("tiered.node.writes.overflowed", "1",
		"1 while the node's missed writes exceed Options.MissedDeletes (none of its keys is read until it is cleared), else 0.")
	m.nodeSeq = gauge("tiered.node.sequence", "{message}",
		"Sequence number of the last invalidation message received from the node.")
	m.nodeMember = gauge("tiered.node.member", "1",
		"1 for a node on the ring, 0 for a removed node still in its handoff.")
	age, err := m.meter.Float64ObservableGauge("tiered.node.confirmation.age", metric.WithUnit("s"),
		metric.WithDescription("Time since the node's invalidations were last confirmed (Options.MaxStaleness): "+
			"its keys are served from the near-cache only while this is under MaxStaleness. Not reported before the first confirmation."))
	errs = append(errs, err)
	m.observed = append(m.observed, age)
	m.nodeConfirmAge = age
	return errors.Join(errs...)
}

// precompute builds the measurement options of every tier, outcome and cause.
func (m *Metrics) precompute() {
	for t := range numTiers {
		for o := range numOutcomes {
			m.getOpts[t][o] = recordOpts(m.cache, AttrTier.String(tiered.Tier(t).String()), AttrGetOutcome.String(outcomeNames[o]))
		}
	}
	for o := range numOutcomes {
		m.loadOpts[o] = recordOpts(m.cache, AttrLoadOutcome.String(outcomeNames[o]))
	}
	m.leaseOpts[0] = recordOpts(m.cache, AttrLeaseOutcome.String("loaded"))
	m.leaseOpts[1] = recordOpts(m.cache, AttrLeaseOutcome.String("filled"))
	m.cacheObserve = observeOpts(m.cache)
	for c := range numCauses {
		m.causeObserve[c] = observeOpts(m.cache, AttrFlushCause.String(tiered.FlushCause(c).String()))
	}
}

func option(kvs ...attribute.KeyValue) metric.MeasurementOption {
	return metric.WithAttributeSet(attribute.NewSet(kvs...))
}

func recordOpts(kvs ...attribute.KeyValue) []metric.RecordOption {
	return []metric.RecordOption{option(kvs...)}
}

func addOpts(kvs ...attribute.KeyValue) []metric.AddOption {
	return []metric.AddOption{option(kvs...)}
}

func observeOpts(kvs ...attribute.KeyValue) []metric.ObserveOption {
	return []metric.ObserveOption{option(kvs...)}
}

// node returns the measurement options of the node named name.
func (m *Metrics) node(name string) *nodeAttrs {
	if na, ok := m.nodes.Load(name); ok {
		return na.(*nodeAttrs)
	}
	node := AttrNode.String(name)
	na := &nodeAttrs{
		add:     addOpts(m.cache, node),
		record:  recordOpts(m.cache, node),
		observe: observeOpts(m.cache, node),
	}
	for c := range numCauses {
		na.flush[c] = addOpts(m.cache, node, AttrFlushCause.String(tiered.FlushCause(c).String()))
	}
	for s := range numBreakers {
		state := AttrBreakerState.String(tiered.BreakerState(s).String())
		na.breaker[s] = addOpts(m.cache, node, state)
		na.state[s] = observeOpts(m.cache, node, state)
	}
	actual, _ := m.nodes.LoadOrStore(name, na)
	return actual.(*nodeAttrs)
}

var _ tiered.Recorder = (*Metrics)(nil)

// RecordGet implements tiered.Recorder: tiered.get.duration.
func (m *Metrics) RecordGet(tier tiered.Tier, d time.Duration, err error) {
	o := outcomeOf(err)
	var opts []metric.RecordOption
	if int(tier) < numTiers {
		opts = m.getOpts[tier][o]
	} else {
		opts = recordOpts(m.cache, AttrTier.String(tier.String()), AttrGetOutcome.String(outcomeNames[o]))
	}
	m.getDur.Record(context.Background(), d.Seconds(), opts...)
}

// RecordLoad implements tiered.Recorder: tiered.load.duration, one point per Loader or
// BatchLoader call (the keys loaded are counted by tiered.load.keys).
func (m *Metrics) RecordLoad(_ int, d time.Duration, err error) {
	m.loadDur.Record(context.Background(), d.Seconds(), m.loadOpts[outcomeOf(err)]...)
}

// RecordLeaseWait implements tiered.Recorder: tiered.lease.wait.duration.
func (m *Metrics) RecordLeaseWait(d time.Duration, filled bool) {
	i := 0
	if filled {
		i = 1
	}
	m.leaseDur.Record(context.Background(), d.Seconds(), m.leaseOpts[i]...)
}

// RecordInvalidationSent implements tiered.Recorder: tiered.node.invalidation.sent.
func (m *Metrics) RecordInvalidationSent(node string, _ int) {
	m.sent.Add(context.Background(), 1, m.node(node).add...)
}

// RecordInvalidationReceived implements tiered.Recorder:
// tiered.node.invalidation.received and tiered.invalidation.lag.
func (m *Metrics) RecordInvalidationReceived(node string, _ int, lag time.Duration) {
	na := m.node(node)
	m.received.Add(context.Background(), 1, na.add...)
	m.lag.Record(context.Background(), lag.Seconds(), na.record...)
}

// RecordFlush implements tiered.Recorder: tiered.node.flushes.
func (m *Metrics) RecordFlush(node string, cause tiered.FlushCause) {
	na := m.node(node)
	var opts []metric.AddOption
	if int(cause) < numCauses {
		opts = na.flush[cause]
	} else {
		opts = addOpts(m.cache, AttrNode.String(node), AttrFlushCause.String(cause.String()))
	}
	m.flushes.Add(context.Background(), 1, opts...)
}

// RecordBreaker implements tiered.Recorder: tiered.node.breaker.transitions.
func (m *Metrics) RecordBreaker(node string, state tiered.BreakerState) {
	na := m.node(node)
	var opts []metric.AddOption
	if int(state) < numBreakers {
		opts = na.breaker[state]
	} else {
		opts = addOpts(m.cache, AttrNode.String(node), AttrBreakerState.String(state.String()))
	}
	m.transitions.Add(context.Background(), 1, opts...)
}

// RecordMissedWrite implements tiered.Recorder: tiered.node.writes.missed (the
// pending keys are the gauge tiered.node.writes.pending).
func (m *Metrics) RecordMissedWrite(node string, _ int) {
	m.missed.Add(context.Background(), 1, m.node(node).add...)
}

// RecordReplay implements tiered.Recorder: tiered.node.writes.replayed and
// tiered.node.cleared.
func (m *Metrics) RecordReplay(node string, keys int, cleared bool) {
	na := m.node(node)
	if keys > 0 {
		m.replayed.Add(context.Background(), int64(keys), na.add...)
	}
	if cleared {
		m.cleared.Add(context.Background(), 1, na.add...)
	}
}
