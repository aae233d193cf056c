package local

// Staged stores.
//
// Ristretto's Set hands each item to ristretto's goroutine through a channel, which
// wakes that goroutine on every Set when fills are sparse: on a 2-core machine the
// wake-up and the context switches cost a shared-tier hit more than its own work
// (BenchmarkGetRemoteHit: about 20 µs of 77). So a store is staged instead: put in a
// small sharded map that Lookup consults when ristretto misses, and handed to
// ristretto by the clock goroutine once per Tick, in one batch (one wake-up for all of
// it). A staged entry is visible at once, sooner than a ristretto Set ever is, and is
// checked by the same fences, node generations and expiry as a stored one. It leaves
// the stage only after ristretto has applied its batch, so it never disappears in
// between. A shard that reaches stageFlushAt entries is flushed by the caller that
// filled it, which bounds the stage's memory (it is not counted in MaxCost).

import "sync"

const (
	stageShards  = 64
	stageFlushAt = 256
)

type stageShard[V any] struct {
	mu sync.Mutex // protects m
	m  map[uint64]stagedEntry[V]
}

type stagedEntry[V any] struct {
	e    *entry[V]
	cost int64
}

// stage puts e, the entry of hash h, on the stage.
func (c *Cache[V]) stage(h uint64, e *entry[V], cost int64) {
	sh := &c.stages[h%stageShards]
	sh.mu.Lock()
	if sh.m == nil {
		sh.m = make(map[uint64]stagedEntry[V])
	}
	_, replaced := sh.m[h]
	sh.m[h] = stagedEntry[V]{e: e, cost: cost}
	full := len(sh.m) >= stageFlushAt
	sh.mu.Unlock()
	if !replaced {
		c.staged.Add(1)
	}
	if full {
		c.flush()
	}
}

// stagedEntry returns the staged entry of hash h, or nil.
func (c *Cache[V]) stagedEntry(h uint64) *entry[V] {
	sh := &c.stages[h%stageShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.m[h].e
}

// flush hands every staged entry to ristretto, waits for ristretto to apply them, and
// then takes them off the stage (unless a newer store of the same hash replaced them
// meanwhile).
func (c *Cache[V]) flush() {
	if c.staged.Load() == 0 {
		return
	}
	c.flushMu.Lock()
	defer c.flushMu.Unlock()
	var batch []struct {
		h uint64
		stagedEntry[V]
	}
	for i := range c.stages {
		sh := &c.stages[i]
		sh.mu.Lock()
		for h, se := range sh.m {
			batch = append(batch, struct {
				h uint64
				stagedEntry[V]
			}{h, se})
		}
		sh.mu.Unlock()
	}
	if len(batch) == 0 {
		return
	}
	for _, b := range batch {
		c.rc.Set(b.h, b.e, b.cost)
	}
	c.rc.Wait()
	for _, b := range batch {
		sh := &c.stages[b.h%stageShards]
		sh.mu.Lock()
		if cur, ok := sh.m[b.h]; ok && cur.e == b.e {
			delete(sh.m, b.h)
			c.staged.Add(-1)
		}
		sh.mu.Unlock()
	}
}

// dropStage empties the stage (Close).
func (c *Cache[V]) dropStage() {
	for i := range c.stages {
		sh := &c.stages[i]
		sh.mu.Lock()
		sh.m = nil
		sh.mu.Unlock()
	}
	c.staged.Store(0)
}
