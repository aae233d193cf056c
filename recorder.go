package tiered

import "time"

// Recorder receives the cache's events as they happen, to feed metrics: the
// github.com/tieredcache/tiered/tieredprom and .../tieredotel modules implement it for
// Prometheus and OpenTelemetry. Set it in Options.Recorder.
//
// The cache calls its methods synchronously, from many goroutines at once (callers of
// Get, load goroutines, the invalidation subscribers): they must be safe for
// concurrent use, fast, and must not block or call back into the Cache. Embed
// NopRecorder to implement only some of them.
//
// Near-cache hits are not reported one by one: a near hit costs tens of nanoseconds
// and a call per hit would be most of it. Read them, with every other counter, from
// Cache.Stats, and per-node state from Cache.Nodes; the exporters do both at each
// collection. What a Recorder adds is what a counter cannot hold: latencies, and
// events by node.
type Recorder interface {
	// RecordGet reports a Get, or one key of GetMany, that missed the near-cache:
	// the tier that answered it, how long the call took, and its error (nil,
	// ErrNotFound, or what the call returned). For GetMany, d is the whole call's.
	RecordGet(tier Tier, d time.Duration, err error)

	// RecordLoad reports one Loader call (keys is 1) or BatchLoader call, its
	// duration and its error: nil, ErrNotFound (absent at the source), or the
	// failure (a *PanicError for a panic).
	RecordLoad(keys int, d time.Duration, err error)

	// RecordLeaseWait reports a load that waited d for another process's lease on
	// its key (see Options.LeaseTTL): filled is true when that process's fill (or
	// a write of the key) answered it, false when the wait timed out or failed and
	// this process loaded the key itself.
	RecordLeaseWait(d time.Duration, filled bool)

	// RecordInvalidationSent reports an invalidation of keys published on node by
	// a Set or Delete of this Cache.
	RecordInvalidationSent(node string, keys int)

	// RecordInvalidationReceived reports an invalidation of keys from another
	// process, applied to the near-cache; lag is the time from the writer's send
	// to this eviction (the writer's clock to ours: skewed clocks skew it).
	RecordInvalidationReceived(node string, keys int, lag time.Duration)

	// RecordFlush reports that the near-cache entries of node's keys were dropped,
	// and why.
	RecordFlush(node string, cause FlushCause)

	// RecordBreaker reports that the circuit breaker of node (on a Redis Cluster,
	// of one of its masters, named by its address) changed to state.
	RecordBreaker(node string, state BreakerState)

	// RecordMissedWrite reports a Set or Delete that could not be confirmed on
	// node: its keys are remembered there (pending keys in all, Node.MissedWrites)
	// until a replay deletes them.
	RecordMissedWrite(node string, pending int)

	// RecordReplay reports a replay of node's missed writes: keys deleted there
	// with their invalidations, or the node's keys all cleared (cleared) after
	// the missed writes overflowed Options.MissedDeletes.
	RecordReplay(node string, keys int, cleared bool)
}

// NopRecorder is a Recorder that records nothing: the default, and a base to embed
// in a Recorder that implements only some methods.
type NopRecorder struct{}

var _ Recorder = NopRecorder{}

func (NopRecorder) RecordGet(Tier, time.Duration, error)                  {}
func (NopRecorder) RecordLoad(int, time.Duration, error)                  {}
func (NopRecorder) RecordLeaseWait(time.Duration, bool)                   {}
func (NopRecorder) RecordInvalidationSent(string, int)                    {}
func (NopRecorder) RecordInvalidationReceived(string, int, time.Duration) {}
func (NopRecorder) RecordFlush(string, FlushCause)                        {}
func (NopRecorder) RecordBreaker(string, BreakerState)                    {}
func (NopRecorder) RecordMissedWrite(string, int)                         {}
func (NopRecorder) RecordReplay(string, int, bool)                        {}

// Tier is what answered a read.
type Tier uint8

const (
	// TierNone: nothing answered; the caller's ctx ended first (the load goes on
	// for the other callers).
	TierNone Tier = iota
	// TierNear: the in-process near-cache.
	TierNear
	// TierShared: the shared tier (Redis), including a value another process
	// filled while this one waited for its lease.
	TierShared
	// TierLoader: the Loader or BatchLoader, called by this process (or failed).
	TierLoader
)

// String returns "none", "near", "shared" or "loader", for labels.
func (t Tier) String() string {
	switch t {
	case TierNear:
		return "near"
	case TierShared:
		return "shared"
	case TierLoader:
		return "loader"
	}
	return "none"
}

// FlushCause is why a node's near-cache entries were dropped (invariant C4: a node's
// invalidations may have been lost, so none of its entries is trusted).
type FlushCause uint8

const (
	// FlushResubscribe: the node's invalidation subscription was (re)established;
	// messages may have been lost while it was down. The first subscription counts.
	FlushResubscribe FlushCause = iota
	// FlushGap: a gap in the node's message sequence (a lost message), or a
	// message that did not parse.
	FlushGap
	// FlushEpoch: the node restarted or failed over (a new epoch).
	FlushEpoch
	// FlushCleared: a process cleared the node's keys (see Options.MissedDeletes).
	FlushCleared
)

// String returns "resubscribe", "gap", "epoch" or "cleared", for labels.
func (f FlushCause) String() string {
	switch f {
	case FlushGap:
		return "gap"
	case FlushEpoch:
		return "epoch"
	case FlushCleared:
		return "cleared"
	}
	return "resubscribe"
}

// BreakerState is the state of a node's circuit breaker: after a few consecutive
// calls that fail without an answer (timeouts, refused connections) it opens and
// calls to the node fail at once, falling through to the Loader; after a second it
// lets one probe through (half-open), whose success closes it.
type BreakerState uint8

const (
	BreakerClosed BreakerState = iota
	BreakerHalfOpen
	BreakerOpen
)

// String returns "closed", "half-open" or "open", for labels.
func (s BreakerState) String() string {
	switch s {
	case BreakerHalfOpen:
		return "half-open"
	case BreakerOpen:
		return "open"
	}
	return "closed"
}
