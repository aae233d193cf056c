package tieredprom

import (
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tieredcache/tiered"
)

// Default histogram buckets, in seconds. Each is used when the matching Options field
// is nil; replace a field to change one histogram's buckets.
var (
	// DefaultGetBuckets (Options.GetBuckets): 50 µs to 5 s. A near miss answered by
	// Redis takes a round trip (about 100 µs on a LAN), one answered by the Loader
	// takes the Loader's time, and a node that hangs costs up to Options.Timeout.
	DefaultGetBuckets = []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}
	// DefaultLoadBuckets (Options.LoadBuckets): 100 µs to 10 s, the default
	// tiered.Options.LoadTimeout.
	DefaultLoadBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
	// DefaultLeaseWaitBuckets (Options.LeaseWaitBuckets): 50 µs to 5 s; a wait is
	// bounded by tiered.Options.LeaseTTL (2 s by default) plus 50 ms.
	DefaultLeaseWaitBuckets = []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}
	// DefaultLagBuckets (Options.LagBuckets): 50 µs to 1 s. A pub/sub delivery takes
	// well under a millisecond on a LAN; the upper buckets show a subscriber that
	// falls behind (or clocks that disagree: the lag is measured from the writer's
	// clock to the reader's).
	DefaultLagBuckets = []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1}
)

// Options configures New. The zero value is valid: every field has a default.
type Options struct {
	// Namespace is the first part of every metric name ("<Namespace>_loads_total").
	// Default "tiered". Use letters, digits and underscores, as in classic metric
	// names.
	Namespace string

	// Cache is the value of the constant label "cache" that every metric carries, so
	// that several caches of one process can register side by side (each with its own
	// Metrics and Collector, each with a different Cache). Default "default". Two
	// Collectors with the same Namespace and Cache on one registry make the second
	// Register fail with a duplicate-descriptor error.
	Cache string

	// Buckets of the histograms, in seconds, in increasing order. Nil selects
	// DefaultGetBuckets, DefaultLoadBuckets, DefaultLeaseWaitBuckets and
	// DefaultLagBuckets.
	GetBuckets       []float64 // <Namespace>_get_duration_seconds
	LoadBuckets      []float64 // <Namespace>_load_duration_seconds
	LeaseWaitBuckets []float64 // <Namespace>_lease_wait_duration_seconds
	LagBuckets       []float64 // <Namespace>_invalidation_lag_seconds
}

// Metrics is a tiered.Recorder that keeps a cache's latencies and per-node events as
// Prometheus histograms and counters. Create one per cache with New, pass it in
// tiered.Options.Recorder, and register Collector(cache): the Collector exposes these
// metrics together with the cache's counters (Stats) and node states (Nodes), read at
// each scrape.
//
// Its Record methods are safe for concurrent use. Each costs a histogram observation
// or a counter's atomic add (and, for a node's event, a sync.Map lookup); once a node
// has been seen, none allocates or takes a lock (TestRecordAllocs).
type Metrics struct {
	ns, cache string

	// Recorder families (collected by every Collector of this Metrics).
	get          *prometheus.HistogramVec // tier
	getErrors    *prometheus.CounterVec   // tier
	load         *prometheus.HistogramVec // outcome
	leaseWait    *prometheus.HistogramVec // outcome
	lag          *prometheus.HistogramVec // node
	sent         *prometheus.CounterVec   // node
	sentKeys     *prometheus.CounterVec   // node
	received     *prometheus.CounterVec   // node
	receivedKeys *prometheus.CounterVec   // node
	flushes      *prometheus.CounterVec   // node, cause
	breaker      *prometheus.CounterVec   // node, state
	missed       *prometheus.CounterVec   // node
	replayed     *prometheus.CounterVec   // node
	cleared      *prometheus.CounterVec   // node

	// Children resolved at New, indexed by tiered.Tier (nil for TierNear: near hits
	// are counted by Stats, never observed here).
	getObs    [tierCount]prometheus.Observer
	getErrs   [tierCount]prometheus.Counter
	loadOK    prometheus.Observer
	loadAbs   prometheus.Observer
	loadErr   prometheus.Observer
	leaseFill prometheus.Observer
	leaseLoad prometheus.Observer

	nodes   sync.Map   // node name -> *nodeMetrics
	nodesMu sync.Mutex // serialises the creation of a nodeMetrics

	// Descriptors of the metrics a Collector builds at each scrape (collector.go).
	descs scrapeDescs
}

// How many values each label that the Record methods index by a tiered enum has.
const (
	tierCount    = int(tiered.TierLoader) + 1
	flushCount   = int(tiered.FlushCleared) + 1
	breakerCount = int(tiered.BreakerOpen) + 1
)

// nodeMetrics are one node's children of the per-node families, resolved once.
type nodeMetrics struct {
	lag                    prometheus.Observer
	sent, sentKeys         prometheus.Counter
	received, receivedKeys prometheus.Counter
	flushes                [flushCount]prometheus.Counter
	breaker                [breakerCount]prometheus.Counter
	missed, replayed       prometheus.Counter
	cleared                prometheus.Counter
}

var _ tiered.Recorder = (*Metrics)(nil)

// New returns the Metrics of one cache.
func New(o Options) *Metrics {
	if o.Namespace == "" {
		o.Namespace = "tiered"
	}
	if o.Cache == "" {
		o.Cache = "default"
	}
	o.GetBuckets = bucketsOr(o.GetBuckets, DefaultGetBuckets)
	o.LoadBuckets = bucketsOr(o.LoadBuckets, DefaultLoadBuckets)
	o.LeaseWaitBuckets = bucketsOr(o.LeaseWaitBuckets, DefaultLeaseWaitBuckets)
	o.LagBuckets = bucketsOr(o.LagBuckets, DefaultLagBuckets)

	m := &Metrics{ns: o.Namespace, cache: labelValue(o.Cache)}
	constLabels := prometheus.Labels{"cache": m.cache}
	histogram := func(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: m.ns, Name: name, Help: help, ConstLabels: constLabels, Buckets: buckets,
		}, labels)
	}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: m.ns, Name: name, Help: help, ConstLabels: constLabels,
		}, labels)
	}

	m.get = histogram("get_duration_seconds",
		"Duration of Gets (and GetMany keys) that missed the near-cache, by the tier that answered: "+
			"shared (Redis), loader, or none (the caller's context ended first). Near-cache hits are not observed: see near_hits_total.",
		o.GetBuckets, "tier")
	m.getErrors = counter("get_errors_total",
		"Gets (and GetMany calls or keys) that missed the near-cache and returned an error other than ErrNotFound, by the tier that answered.",
		"tier")
	m.load = histogram("load_duration_seconds",
		"Duration of Loader and BatchLoader calls, by outcome: ok, not_found (ErrNotFound), or error (including panics).",
		o.LoadBuckets, "outcome")
	m.leaseWait = histogram("lease_wait_duration_seconds",
		"Time loads waited for another process's lease on their key, by outcome: filled (that process's fill or a write answered) "+
			"or loaded (the wait timed out or failed and this process loaded the key itself).",
		o.LeaseWaitBuckets, "outcome")
	m.lag = histogram("invalidation_lag_seconds",
		"Time from a writer's send of an invalidation to its eviction here, by node (writer's clock to this process's clock).",
		o.LagBuckets, "node")
	m.sent = counter("invalidations_sent_total",
		"Invalidation messages published on the node by Sets and Deletes of this cache.", "node")
	m.sentKeys = counter("invalidation_keys_sent_total",
		"Keys named by the invalidation messages this cache published on the node.", "node")
	m.received = counter("invalidations_received_total",
		"Invalidation messages from other processes received from the node and applied to the near-cache.", "node")
	m.receivedKeys = counter("invalidation_keys_received_total",
		"Keys evicted from the near-cache by invalidation messages received from the node.", "node")
	m.flushes = counter("node_flushes_total",
		"Flushes of the near-cache entries of the node's keys, by cause: resubscribe (the invalidation subscription was "+
			"(re)established, the first one included), gap (a lost message), epoch (the node restarted or failed over), "+
			"cleared (a process cleared the node's keys).",
		"node", "cause")
	m.breaker = counter("breaker_transitions_total",
		"Changes of the node's circuit breaker, by the state entered: closed, half-open or open.", "node", "state")
	m.missed = counter("missed_writes_total",
		"Sets and Deletes that could not be confirmed on the node; their keys are not read there until replayed.", "node")
	m.replayed = counter("missed_writes_replayed_total",
		"Keys deleted on the node, with their invalidations, after a Set or Delete there could not be confirmed.", "node")
	m.cleared = counter("nodes_cleared_total",
		"Times this process cleared the node of the namespace's keys (its missed writes overflowed).", "node")

	for t := range tierCount {
		if tiered.Tier(t) == tiered.TierNear {
			continue
		}
		m.getObs[t] = m.get.WithLabelValues(tiered.Tier(t).String())
		m.getErrs[t] = m.getErrors.WithLabelValues(tiered.Tier(t).String())
	}
	m.loadOK = m.load.WithLabelValues("ok")
	m.loadAbs = m.load.WithLabelValues("not_found")
	m.loadErr = m.load.WithLabelValues("error")
	m.leaseFill = m.leaseWait.WithLabelValues("filled")
	m.leaseLoad = m.leaseWait.WithLabelValues("loaded")

	m.descs = newScrapeDescs(m.ns, constLabels)
	return m
}

func bucketsOr(b, def []float64) []float64 {
	if b == nil {
		return def
	}
	return b
}

// labelValue makes s a valid label value: Prometheus refuses (and WithLabelValues
// panics on) invalid UTF-8.
func labelValue(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }

// node returns the children of node name, creating them (all at zero) on first use.
func (m *Metrics) node(name string) *nodeMetrics {
	if n, ok := m.nodes.Load(name); ok {
		return n.(*nodeMetrics)
	}
	m.nodesMu.Lock()
	defer m.nodesMu.Unlock()
	if n, ok := m.nodes.Load(name); ok {
		return n.(*nodeMetrics)
	}
	l := labelValue(name)
	n := &nodeMetrics{
		lag:          m.lag.WithLabelValues(l),
		sent:         m.sent.WithLabelValues(l),
		sentKeys:     m.sentKeys.WithLabelValues(l),
		received:     m.received.WithLabelValues(l),
		receivedKeys: m.receivedKeys.WithLabelValues(l),
		missed:       m.missed.WithLabelValues(l),
		replayed:     m.replayed.WithLabelValues(l),
		cleared:      m.cleared.WithLabelValues(l),
	}
	for c := range flushCount {
		n.flushes[c] = m.flushes.WithLabelValues(l, tiered.FlushCause(c).String())
	}
	for s := range breakerCount {
		n.breaker[s] = m.breaker.WithLabelValues(l, tiered.BreakerState(s).String())
	}
	m.nodes.Store(name, n)
	return n
}

// RecordGet observes d in get_duration_seconds{tier} and counts an error other than
// ErrNotFound in get_errors_total{tier}.
func (m *Metrics) RecordGet(tier tiered.Tier, d time.Duration, err error) {
	var obs prometheus.Observer
	var errs prometheus.Counter
	if int(tier) < tierCount && m.getObs[tier] != nil {
		obs, errs = m.getObs[tier], m.getErrs[tier]
	} else { // TierNear, or a tier newer than this package: resolve its label by name
		obs, errs = m.get.WithLabelValues(tier.String()), m.getErrors.WithLabelValues(tier.String())
	}
	obs.Observe(d.Seconds())
	if err != nil && !errors.Is(err, tiered.ErrNotFound) {
		errs.Inc()
	}
}

// RecordLoad observes d in load_duration_seconds{outcome}: one observation per
// Loader or BatchLoader call, whatever its number of keys.
func (m *Metrics) RecordLoad(_ int, d time.Duration, err error) {
	obs := m.loadOK
	switch {
	case err == nil:
	case errors.Is(err, tiered.ErrNotFound):
		obs = m.loadAbs
	default:
		obs = m.loadErr
	}
	obs.Observe(d.Seconds())
}

// RecordLeaseWait observes d in lease_wait_duration_seconds{outcome}.
func (m *Metrics) RecordLeaseWait(d time.Duration, filled bool) {
	if filled {
		m.leaseFill.Observe(d.Seconds())
		return
	}
	m.leaseLoad.Observe(d.Seconds())
}

// RecordInvalidationSent counts a message in invalidations_sent_total{node} and its
// keys in invalidation_keys_sent_total{node}.
func (m *Metrics) RecordInvalidationSent(node string, keys int) {
	n := m.node(node)
	n.sent.Inc()
	addKeys(n.sentKeys, keys)
}

// RecordInvalidationReceived counts a message in invalidations_received_total{node}
// and its keys in invalidation_keys_received_total{node}, and observes lag in
// invalidation_lag_seconds{node}.
func (m *Metrics) RecordInvalidationReceived(node string, keys int, lag time.Duration) {
	n := m.node(node)
	n.received.Inc()
	addKeys(n.receivedKeys, keys)
	n.lag.Observe(lag.Seconds())
}

// RecordFlush counts node_flushes_total{node,cause}.
func (m *Metrics) RecordFlush(node string, cause tiered.FlushCause) {
	n := m.node(node)
	if int(cause) < flushCount {
		n.flushes[cause].Inc()
		return
	}
	m.flushes.WithLabelValues(labelValue(node), cause.String()).Inc()
}

// RecordBreaker counts breaker_transitions_total{node,state}.
func (m *Metrics) RecordBreaker(node string, state tiered.BreakerState) {
	n := m.node(node)
	if int(state) < breakerCount {
		n.breaker[state].Inc()
		return
	}
	m.breaker.WithLabelValues(labelValue(node), state.String()).Inc()
}

// RecordMissedWrite counts missed_writes_total{node}. The keys pending on the node
// are read from Cache.Nodes at each scrape (node_missed_writes).
func (m *Metrics) RecordMissedWrite(node string, _ int) {
	m.node(node).missed.Inc()
}

// RecordReplay counts the keys replayed in missed_writes_replayed_total{node}, and a
// clearing in nodes_cleared_total{node}.
func (m *Metrics) RecordReplay(node string, keys int, cleared bool) {
	n := m.node(node)
	addKeys(n.replayed, keys)
	if cleared {
		n.cleared.Inc()
	}
}

func addKeys(c prometheus.Counter, keys int) {
	if keys > 0 {
		c.Add(float64(keys))
	}
}

// families are the recorder's metric vectors, described and collected by Collector.
func (m *Metrics) families() []prometheus.Collector {
	return []prometheus.Collector{
		m.get, m.getErrors, m.load, m.leaseWait, m.lag,
		m.sent, m.sentKeys, m.received, m.receivedKeys,
		m.flushes, m.breaker, m.missed, m.replayed, m.cleared,
	}
}
