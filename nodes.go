package tiered

import (
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/tieredcache/tiered/internal/remote"
)

// NodeStatus is one shared-tier node as this process sees it (see Cache.Nodes).
type NodeStatus struct {
	// Name places the node on the ring (Options.Nodes, Options.Addrs, AddNode);
	// "redis" for Options.Client.
	Name string
	// Addr is the address its client dials (a Cluster's seed addresses,
	// comma-separated), or "" if the client's type does not tell.
	Addr string
	// Member is false for a node removed by RemoveNode and still in its handoff
	// (its invalidations are followed, no key is routed to it).
	Member bool
	// Breaker is its circuit breaker's state; on a Redis Cluster, the worst among
	// its masters' (open, then half-open, then closed).
	Breaker BreakerState
	// Subscribed reports that its invalidation subscription is confirmed: only
	// then are its keys served from the near-cache (invariant C4).
	Subscribed bool
	// Since is when Subscribed last changed (when its subscriber started, if it
	// never has).
	Since time.Time
	// Confirmed is when the invalidations the node published were last confirmed
	// (by a pong on its subscription, and on a Redis Cluster by every master: see
	// Options.MaxStaleness); zero before the first confirmation. Its keys are
	// served from the near-cache only until MaxStaleness after Confirmed: a
	// Confirmed older than that (a slow, silent or lost link) means they are read
	// from Redis, or the Loader.
	Confirmed time.Time
	// MissedWrites counts the keys of Sets and Deletes that could not be confirmed
	// on the node, not yet replayed (see Options.MissedDeletes); those keys are not
	// read there until they are. Overflowed reports that they exceeded
	// MissedDeletes: none of its keys is read until the node is cleared.
	MissedWrites int
	Overflowed   bool
	// Epoch and Seq are the node epoch and sequence number of the last
	// invalidation message received from it ("" and 0 before the first, and on a
	// Redis Cluster, whose messages carry none).
	Epoch string
	Seq   uint64
}

// Nodes returns a snapshot of the shared tier's nodes, in the order they were added
// (removed ones included while in their handoff); nil without a shared tier, or after
// Close. Each field is read on its own: the snapshot is not atomic across fields or
// nodes.
func (c *Cache[V]) Nodes() []NodeStatus {
	r, ok := c.shared.(*remote.Redis)
	if !ok || c.closed.Load() {
		return nil
	}
	var out []NodeStatus
	for idx := range r.Nodes() {
		member := c.isMember(idx)
		sub := c.followed(idx).sub
		if !member && !c.isRetiring(idx) {
			continue
		}
		ns := NodeStatus{Name: r.Name(idx), Addr: r.Addr(idx), Member: member, Breaker: breakerState(r.Breaker(idx))}
		ns.MissedWrites, ns.Overflowed = r.Pending(idx)
		if sub != nil {
			st := sub.Status()
			ns.Subscribed, ns.Since, ns.Epoch, ns.Seq = st.Up, st.Since, st.Epoch, st.Seq
		}
		ns.Confirmed = c.local.Confirmed(idx)
		out = append(out, ns)
	}
	return out
}

// isRetiring reports whether node idx was removed and is still in its handoff.
func (c *Cache[V]) isRetiring(idx int) bool {
	c.retiredMu.Lock()
	defer c.retiredMu.Unlock()
	for _, rt := range c.retired {
		if rt.idx == idx {
			return true
		}
	}
	return false
}

func breakerState(s gobreaker.State) BreakerState {
	switch s {
	case gobreaker.StateOpen:
		return BreakerOpen
	case gobreaker.StateHalfOpen:
		return BreakerHalfOpen
	}
	return BreakerClosed
}
