package tiered

import (
	"time"

	"github.com/tieredcache/tiered/internal/invalidation"
)

// busHandler applies what the invalidation subscribers learn to the near-cache.
// Its methods run on the subscribers' goroutines and never block.
type busHandler[V any] struct{ c *Cache[V] }

var _ invalidation.Handler = busHandler[int]{}

// Invalidate evicts keys another process wrote. The eviction is a generation bump,
// so it also fences any fill of those keys in flight here (a fill that read the old
// value before the write and would store it after this message).
func (h busHandler[V]) Invalidate(node int, m *invalidation.Message) {
	c := h.c
	for _, k := range m.Keys {
		c.local.Invalidate(c.local.Hash(k))
		c.wakeFill(k, nil) // a write ends any wait for the key's fill
	}
	if hook := c.afterInvalidate.Load(); hook != nil {
		(*hook)(m)
	}
	c.stats.invalidationsReceived.Add(1)
	c.stats.keysInvalidated.Add(uint64(len(m.Keys)))
	if m.SentUs > 0 {
		lag := time.Now().UnixMicro() - m.SentUs
		if c.recording {
			c.rec.RecordInvalidationReceived(c.shared.Name(node), len(m.Keys), time.Duration(max(lag, 0))*time.Microsecond)
		}
		c.stats.lagSumUs.Add(max(lag, 0))
		for {
			old := c.stats.lagMaxUs.Load()
			if lag <= old || c.stats.lagMaxUs.CompareAndSwap(old, lag) {
				break
			}
		}
	}
}

// Down stops filling the near-cache with node's keys; what it holds of them is
// served until the node's last confirmation is MaxStaleness old (local.Suspend), so
// a long MaxStaleness keeps the near-cache answering through a Redis outage.
func (h busHandler[V]) Down(node int) {
	if h.c.local.Up(node) {
		h.c.stats.nodeDowns.Add(1)
	}
	h.c.local.Suspend(node)
}

func (h busHandler[V]) Up(node int) {
	h.c.stats.flushesResubscribe.Add(1)
	h.c.rec.RecordFlush(h.c.shared.Name(node), FlushResubscribe)
	h.c.local.MarkUp(node)
	h.c.kickRepair() // the node answers: replay what it missed
}

func (h busHandler[V]) Flush(node int, cause invalidation.Cause) {
	fc := FlushGap
	switch cause {
	case invalidation.CauseEpoch:
		h.c.stats.flushesEpoch.Add(1)
		fc = FlushEpoch
	case invalidation.CauseCleared:
		h.c.stats.flushesCleared.Add(1)
		fc = FlushCleared
	default:
		h.c.stats.flushesGap.Add(1)
	}
	h.c.local.FlushNode(node)
	h.c.rec.RecordFlush(h.c.shared.Name(node), fc)
}

// Confirmed lets node's entries be served until MaxStaleness after at.
func (h busHandler[V]) Confirmed(node int, at time.Time) { h.c.local.Confirm(node, at) }

// Filled wakes this process's waiters for key's fill (see pollLease), handing them
// the value it was filled with, if the notice carried it.
func (h busHandler[V]) Filled(_ int, key string, value []byte) { h.c.wakeFill(key, value) }

// fillWait is what the waiters for one key's fill share: ch is closed by the notice,
// after value (the filled value, or nil: read the key) is set.
type fillWait struct {
	ch      chan struct{}
	value   []byte
	waiters int // under Cache.fillMu
}

// fillWaiter registers a wait for key's fill notice: w.ch is closed by the notice;
// done must be called when the wait ends.
func (c *Cache[V]) fillWaiter(key string) (w *fillWait, done func()) {
	c.fillMu.Lock()
	defer c.fillMu.Unlock()
	if c.fills == nil {
		c.fills = make(map[string]*fillWait)
	}
	w = c.fills[key]
	if w == nil {
		w = &fillWait{ch: make(chan struct{})}
		c.fills[key] = w
	}
	w.waiters++
	c.fillWaits.Add(1)
	return w, func() {
		c.fillMu.Lock()
		defer c.fillMu.Unlock()
		c.fillWaits.Add(-1)
		if w.waiters--; w.waiters == 0 && c.fills[key] == w {
			delete(c.fills, key)
		}
	}
}

// wakeFill wakes the waiters for key's fill, if any, with the filled value if it is
// known (nil: they read the key; a write of the key wakes them so).
func (c *Cache[V]) wakeFill(key string, value []byte) {
	if c.fillWaits.Load() == 0 {
		return
	}
	c.fillMu.Lock()
	defer c.fillMu.Unlock()
	if w := c.fills[key]; w != nil {
		w.value = value
		close(w.ch)
		delete(c.fills, key) // later waiters get a new channel
	}
}
