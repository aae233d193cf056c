package tieredotel

import (
	"context"
	"errors"
	"math"
	"sync"
	"time"

	"go.opentelemetry.io/otel/metric"

	"github.com/tieredcache/tiered"
)

// Source is what Observe reads at each collection: a *tiered.Cache[V] of any V.
type Source interface {
	Stats() tiered.Stats
	Nodes() []tiered.NodeStatus
}

var _ Source = (*tiered.Cache[string])(nil)

// statInstrument is an observable counter read from one Stats field.
type statInstrument struct {
	inst  metric.Int64ObservableCounter
	value func(*tiered.Stats) uint64
}

// statInstruments are the observable counters read from Stats, one per field
// (the four Flushes* fields are tiered.flushes, by cause). DeliveryLagMax and
// DeliveryLagMean are left out: tiered.invalidation.lag has the distribution.
var statInstruments = []struct {
	name, unit, desc string
	value            func(*tiered.Stats) uint64
}{
	{"tiered.near.hits", "{get}", "Gets (and GetMany keys) answered by the near-cache.",
		func(s *tiered.Stats) uint64 { return s.LocalHits }},
	{"tiered.near.misses", "{get}", "Gets (and GetMany keys) that missed the near-cache.",
		func(s *tiered.Stats) uint64 { return s.LocalMisses }},
	{"tiered.shared.hits", "{get}", "Near misses answered by the shared tier (Redis).",
		func(s *tiered.Stats) uint64 { return s.RemoteHits }},
	{"tiered.shared.misses", "{get}", "Near misses the shared tier had no value for.",
		func(s *tiered.Stats) uint64 { return s.RemoteMisses }},
	{"tiered.shared.errors", "{error}", "Shared-tier reads and writes that failed or timed out.",
		func(s *tiered.Stats) uint64 { return s.RemoteErrors }},
	{"tiered.shared.decode_errors", "{error}", "Values in the shared tier that did not decode (treated as misses).",
		func(s *tiered.Stats) uint64 { return s.DecodeErrors }},
	{"tiered.breaker.opens", "{transition}", "Times a node's circuit breaker opened.",
		func(s *tiered.Stats) uint64 { return s.BreakerOpens }},
	{"tiered.load.keys", "{key}", "Keys loaded: Loader calls, and keys passed to the BatchLoader.",
		func(s *tiered.Stats) uint64 { return s.Loads }},
	{"tiered.load.errors", "{error}", "Loads that failed other than with ErrNotFound (panics included).",
		func(s *tiered.Stats) uint64 { return s.LoadErrors }},
	{"tiered.load.not_found", "{key}", "Loads that found the key absent at the source (negative-cached).",
		func(s *tiered.Stats) uint64 { return s.NotFound }},
	{"tiered.load.oversize", "{key}", "Loaded values over MaxValueSize: returned, not cached.",
		func(s *tiered.Stats) uint64 { return s.Oversize }},
	{"tiered.lease.waits", "{wait}", "Loads that waited for another process's lease.",
		func(s *tiered.Stats) uint64 { return s.LeaseWaits }},
	{"tiered.lease.timeouts", "{wait}", "Lease waits that gave up after LeaseTTL and loaded without writing Redis.",
		func(s *tiered.Stats) uint64 { return s.LeaseTimeouts }},
	{"tiered.lease.lost", "{lease}", "Loads whose lease a write or delete voided: their value was not stored.",
		func(s *tiered.Stats) uint64 { return s.LeasesLost }},
	{"tiered.lease.fill_notices", "{wait}", "Lease waits woken by the holder's fill notice or a write rather than by the poll.",
		func(s *tiered.Stats) uint64 { return s.FillNotices }},
	{"tiered.refresh.runs", "{refresh}", "Background refreshes that won the key's lease and called the Loader.",
		func(s *tiered.Stats) uint64 { return s.Refreshes }},
	{"tiered.refresh.skipped", "{refresh}", "Refreshes not queued because the workers were saturated.",
		func(s *tiered.Stats) uint64 { return s.RefreshesSkipped }},
	{"tiered.log.suppressed", "{log_record}", "Warnings about a failing node left out of the log (at most one per node per second is logged).",
		func(s *tiered.Stats) uint64 { return s.LogsSuppressed }},
	{"tiered.invalidation.sent", "{message}", "Writes whose invalidation was published.",
		func(s *tiered.Stats) uint64 { return s.InvalidationsSent }},
	{"tiered.invalidation.received", "{message}", "Invalidation messages from other processes applied to the near-cache.",
		func(s *tiered.Stats) uint64 { return s.InvalidationsReceived }},
	{"tiered.invalidation.keys", "{key}", "Keys that invalidation messages evicted from the near-cache.",
		func(s *tiered.Stats) uint64 { return s.KeysInvalidated }},
	{"tiered.subscription.lost", "{subscription}", "Times a node's invalidation subscription was lost.",
		func(s *tiered.Stats) uint64 { return s.SubscriptionsLost }},
	{"tiered.writes.replayed", "{key}", "Keys deleted on a node after a Set or Delete there could not be confirmed.",
		func(s *tiered.Stats) uint64 { return s.WritesReplayed }},
	{"tiered.nodes.cleared", "{node}", "Nodes this process cleared of the namespace's keys.",
		func(s *tiered.Stats) uint64 { return s.NodesCleared }},
	{"tiered.nodes.added", "{node}", "Nodes added with AddNode.",
		func(s *tiered.Stats) uint64 { return s.NodesAdded }},
	{"tiered.nodes.removed", "{node}", "Nodes removed with RemoveNode.",
		func(s *tiered.Stats) uint64 { return s.NodesRemoved }},
}

// ErrObserving is returned by Observe while another Source is observed.
var ErrObserving = errors.New("tieredotel: already observing a cache: Unregister it first")

// ErrClosed is returned by Observe after Close.
var ErrClosed = errors.New("tieredotel: Metrics closed")

// Registration is an Observe's: Unregister stops it.
type Registration struct {
	m    *Metrics
	once sync.Once
	reg  metric.Registration
	err  error
}

// Observe registers the observable instruments of the package documentation, read
// from src (the Cache) at each collection, until the returned Registration is
// unregistered or the Metrics closed. A Metrics observes one Source at a time: a
// second Observe returns ErrObserving. Observing a new Cache after the first (a
// restart of the cache within the process) starts its counters at 0 again, which
// backends read as a counter reset.
func (m *Metrics) Observe(src Source) (*Registration, error) {
	if src == nil {
		return nil, errors.New("tieredotel: Observe of a nil Source")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.closed:
		return nil, ErrClosed
	case m.reg != nil:
		return nil, ErrObserving
	}
	reg, err := m.meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		m.observe(o, src)
		return nil
	}, m.observed...)
	if err != nil {
		return nil, err
	}
	m.reg = &Registration{m: m, reg: reg}
	return m.reg, nil
}

// Unregister stops the observation: the observable instruments report nothing from
// the next collection on. It is idempotent and returns the first call's error.
func (r *Registration) Unregister() error {
	r.once.Do(func() {
		r.err = r.reg.Unregister()
		r.m.mu.Lock()
		if r.m.reg == r {
			r.m.reg = nil
		}
		r.m.mu.Unlock()
	})
	return r.err
}

// Close unregisters the current Observe, if any; Observe then returns ErrClosed.
// The Recorder methods go on recording (a Cache may call them until its own Close).
func (m *Metrics) Close() error {
	m.mu.Lock()
	m.closed = true
	reg := m.reg
	m.mu.Unlock()
	if reg == nil {
		return nil
	}
	return reg.Unregister()
}

// observe makes one collection's observations of src.
func (m *Metrics) observe(o metric.Observer, src Source) {
	st := src.Stats()
	for _, s := range m.stats {
		o.ObserveInt64(s.inst, clamp(s.value(&st)), m.cacheObserve...)
	}
	for c, n := range [numCauses]uint64{
		tiered.FlushResubscribe: st.FlushesResubscribe,
		tiered.FlushGap:         st.FlushesGap,
		tiered.FlushEpoch:       st.FlushesEpoch,
		tiered.FlushCleared:     st.FlushesCleared,
	} {
		o.ObserveInt64(m.flushesTotal, clamp(n), m.causeObserve[c]...)
	}
	now := time.Now()
	for _, ns := range src.Nodes() {
		na := m.node(ns.Name)
		if !ns.Confirmed.IsZero() {
			o.ObserveFloat64(m.nodeConfirmAge, max(now.Sub(ns.Confirmed).Seconds(), 0), na.observe...)
		}
		o.ObserveInt64(m.nodeSubscribed, bit(ns.Subscribed), na.observe...)
		o.ObserveInt64(m.nodeMember, bit(ns.Member), na.observe...)
		o.ObserveInt64(m.nodePending, int64(ns.MissedWrites), na.observe...)
		o.ObserveInt64(m.nodeOverflowed, bit(ns.Overflowed), na.observe...)
		o.ObserveInt64(m.nodeSeq, clamp(ns.Seq), na.observe...)
		for s := range numBreakers {
			o.ObserveInt64(m.nodeBreaker, bit(int(ns.Breaker) == s), na.state[s]...)
		}
	}
}

func bit(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

func clamp(n uint64) int64 { return int64(min(n, math.MaxInt64)) }
