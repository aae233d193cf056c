// Package local is the near-cache: an in-process ristretto v2 cache whose entries are
// fenced, so that a copy that may be stale is never served.
//
// Ristretto applies Sets asynchronously through a buffer, may drop them, and may apply
// a Set after a later Del of the same key (the Del removes the stored item at once,
// the Set lands when the buffer drains). It also rejects a second pending Set of a new
// key, keeping the first. None of that may leak out as a stale read, so validity is not
// decided by presence in ristretto but by three checks on every hit:
//
//  1. Stripe generation. Keys hash onto a fixed array of atomic counters. Invalidate
//     bumps the key's stripe; an entry records its stripe's generation as read before
//     the fill began (a Fence) and is served only while the stripe still holds that
//     value. A late-landing or reordered ristretto Set therefore carries an old
//     generation and reads as a miss. A bump on another key of the same stripe only
//     costs a miss, never a stale read.
//  2. Node generation. Each entry records the generation counter of the shared-tier
//     node that owns its key, and that counter's value. FlushNode (a sequence gap, a restarted node) is one
//     atomic increment that retires all of the node's entries without iterating. An
//     odd generation marks the node down (MarkDown: its invalidations cannot reach us):
//     nothing of it is served, since the increment retired its entries, and nothing of
//     it is stored until MarkUp. Suspend stores nothing of it either, but serves what
//     it holds until the node's confirmation expires (MaxStaleness, see Confirm).
//  3. Expiry, against a coarse clock (an atomic the Cache's own goroutine advances every
//     Tick), so a hit makes no clock call.
//
// Ristretto still bounds memory: each entry costs its value's encoded size plus its key
// and a fixed overhead, with MaxCost in bytes. Expired entries are not scanned for; they
// are replaced on the next fill or evicted by cost.
package local

import (
	"errors"
	"hash/maphash"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/ristretto/v2"
)

// Tick is the resolution of the coarse clock that expiry is checked against. Stored
// TTLs are shortened by one Tick so that an entry never outlives its deadline.
//
// 10 ms keeps the clock goroutine to 100 wake-ups a second: at 1 ms its wake-ups
// measurably delayed invalidation delivery on a 2-core machine (p99 of
// BenchmarkInvalidationLatency about 15% higher), for a precision no cache TTL needs.
const Tick = 10 * time.Millisecond

// stripes is the number of fencing counters (uint32 each, 256 KiB in all). More
// stripes mean fewer false conflicts (a write to one key causing a miss of another).
const stripes = 1 << 16

// EntryOverhead is the cost in bytes charged for each entry beyond its value and key:
// the entry struct, ristretto's item and map slot.
const EntryOverhead = 112

// Config configures a near-cache.
type Config struct {
	MaxCost int64 // total cost in bytes; required
	// MaxStaleness, if above 0, serves a node's entries only until MaxStaleness
	// after the node's last confirmation (Confirm): a node never confirmed serves
	// nothing. 0: node entries are served whatever the confirmations.
	MaxStaleness time.Duration
}

// nodeState is one node's: its generation, and until when its entries may be served.
type nodeState struct {
	gen       atomic.Uint32
	fresh     atomic.Int64 // coarse-clock nanoseconds: the last confirmation plus MaxStaleness
	suspended atomic.Bool  // Suspend: nothing of the node is stored until MarkUp
}

type entry[V any] struct {
	key        string
	val        V
	absent     bool        // a negative entry: the source has no value
	expire     int64       // coarse-clock nanoseconds
	refreshAt  int64       // coarse-clock nanoseconds from which a hit reports a refresh due
	gen        uint32      // stripe generation at fence time
	nodeGen    uint32      // the node's generation at fence time
	node       *nodeState  // the owning node's
	refreshing atomic.Bool // a hit has reported the refresh due: report it once
}

// Never is a refresh delay that never comes.
const Never = time.Duration(1<<63 - 1)

// Cache is a fenced near-cache. It is safe for concurrent use.
type Cache[V any] struct {
	rc      *ristretto.Cache[uint64, *entry[V]]
	seed    maphash.Seed
	now     atomic.Int64 // coarse clock: nanoseconds since start
	start   time.Time
	stripes *[stripes]atomic.Uint32

	// Node generations, by node index. Indexes come from the shared tier, which
	// appends nodes and never reuses an index, so every index ever seen keeps a
	// counter of its own (4 bytes, plus 8 for its pointer here): an array indexed
	// modulo a fixed size would let node i+size's MarkUp re-enable node i while i is
	// still down. The counters are allocated in chunks and never move; entries and
	// Fences point at their node's counter, so a hit reads it with one load and
	// never touches this table (BenchmarkLookup: as fast as the fixed array was).
	// Only Fence and the node calls index the table; growing it (under growMu)
	// copies pointers, so it loses no concurrent update.
	nodes  atomic.Pointer[[]*nodeState]
	growMu sync.Mutex // serialises growing nodes
	noNode nodeState  // the state of keys no node owns (a negative index): always fresh

	maxStale int64 // Config.MaxStaleness in nanoseconds; 0: every node is always fresh

	// Staged stores (see stage.go): fills wait here, visible to Lookup, until the
	// clock goroutine hands them to ristretto in one batch per Tick.
	stages  [stageShards]stageShard[V]
	staged  atomic.Int64 // entries in stages
	flushMu sync.Mutex   // serialises flushes

	stopOnce sync.Once
	stop     chan struct{} // closed by Close
	done     chan struct{} // closed when the clock goroutine returns
}

// New starts a near-cache and its clock goroutine; Close stops both.
func New[V any](cfg Config) (*Cache[V], error) {
	if cfg.MaxCost <= 0 {
		return nil, errors.New("local: MaxCost must be positive")
	}
	// About ten admission counters per expected entry, assuming entries of ~1 KiB.
	counters := min(max(cfg.MaxCost/100, 10_000), 50_000_000)
	rc, err := ristretto.NewCache(&ristretto.Config[uint64, *entry[V]]{
		NumCounters: counters,
		MaxCost:     cfg.MaxCost,
		// Gets hand their key hashes to ristretto's policy goroutine in batches of
		// BufferItems, each send waking that goroutine. ristretto suggests 64; at 64,
		// a sequential shared hit on a 2-core machine paid for the wake-ups and the
		// runtime's sysmon wake-ups that follow them (futex syscalls): interleaved
		// single runs of BenchmarkGetRemoteHit, 44.5-50.9 us at 64, 33.4-39.5 us at
		// 512 (medians 46.2, 34.4), GetLocalHit and the parallel workloads unchanged,
		// and the same hit ratio on a Zipf(1.1) workload over a full cache.
		BufferItems:        512,
		IgnoreInternalCost: true,
		// Keys are hashed once by Hash; the entry carries the full key and Lookup
		// compares it, which replaces ristretto's conflict hash.
		KeyToHash: func(h uint64) (uint64, uint64) { return h, 0 },
	})
	if err != nil {
		return nil, err
	}
	c := &Cache[V]{
		rc:      rc,
		seed:    maphash.MakeSeed(),
		start:   time.Now(),
		stripes: new([stripes]atomic.Uint32),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	c.nodes.Store(new([]*nodeState))
	c.maxStale = int64(cfg.MaxStaleness)
	c.noNode.fresh.Store(math.MaxInt64)
	go c.tick()
	return c, nil
}

// node returns the generation counter of node index idx, adding counters up to idx
// if it is new.
func (c *Cache[V]) node(idx int) *nodeState {
	if idx < 0 {
		return &c.noNode
	}
	if t := *c.nodes.Load(); idx < len(t) {
		return t[idx]
	}
	c.growMu.Lock()
	defer c.growMu.Unlock()
	old := *c.nodes.Load()
	if idx < len(old) {
		return old[idx]
	}
	n := max(idx+1, 2*len(old), 8)
	t := make([]*nodeState, n)
	copy(t, old)
	chunk := make([]nodeState, n-len(old))
	for i := range chunk {
		if c.maxStale == 0 {
			chunk[i].fresh.Store(math.MaxInt64)
		}
		t[len(old)+i] = &chunk[i]
	}
	c.nodes.Store(&t)
	return t[idx]
}

func (c *Cache[V]) tick() {
	defer close(c.done)
	t := time.NewTicker(Tick)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			c.now.Store(int64(time.Since(c.start)))
			c.flush()
		}
	}
}

// Close stops the clock and ristretto's goroutines and waits for them. Idempotent.
func (c *Cache[V]) Close() {
	c.stopOnce.Do(func() {
		close(c.stop)
		<-c.done
		c.rc.Close()
		c.dropStage() // a closed near-cache serves nothing, as a closed ristretto does
	})
}

// Hash returns the hash Lookup, Fence and Invalidate take for key.
func (c *Cache[V]) Hash(key string) uint64 { return maphash.String(c.seed, key) }

// Lookup returns the entry for key if one is stored and still valid; absent reports
// a negative entry. It reports, to the first caller past the entry's refresh time
// only, that a refresh is due. It allocates nothing.
func (c *Cache[V]) Lookup(h uint64, key string) (v V, absent, ok, refresh bool) {
	e, found := c.rc.Get(h)
	now := c.now.Load()
	if !found || !c.valid(e, h, key, now) {
		if c.staged.Load() == 0 {
			return v, false, false, false
		}
		if e = c.stagedEntry(h); e == nil || !c.valid(e, h, key, now) {
			return v, false, false, false
		}
	}
	if e.refreshAt <= now {
		refresh = e.refreshing.CompareAndSwap(false, true)
	}
	return e.val, e.absent, true, refresh
}

// valid reports whether e, found under h, holds key and may be served at now.
func (c *Cache[V]) valid(e *entry[V], h uint64, key string, now int64) bool {
	return e.key == key && e.gen == c.stripes[h%stripes].Load() && e.nodeGen == e.node.gen.Load() && e.expire > now &&
		now <= e.node.fresh.Load()
}

// Confirm records that every invalidation node published before at has been
// applied: its entries may be served until MaxStaleness after at (on the coarse
// clock, which lags by at most a Tick). Confirmations only move that forward.
func (c *Cache[V]) Confirm(node int, at time.Time) {
	if c.maxStale == 0 {
		return
	}
	until := int64(at.Sub(c.start)) + c.maxStale
	f := &c.node(node).fresh
	for {
		old := f.Load()
		if until <= old || f.CompareAndSwap(old, until) {
			return
		}
	}
}

// Confirmed returns when node was last confirmed (the at of the latest Confirm, on
// the coarse clock), or the zero time if it never was or no bound is set.
func (c *Cache[V]) Confirmed(node int) time.Time {
	f := c.node(node).fresh.Load()
	if c.maxStale == 0 || f == 0 || f == math.MaxInt64 {
		return time.Time{}
	}
	return c.start.Add(time.Duration(f - c.maxStale))
}

// Fresh reports whether node's entries may be served now (see Confirm).
func (c *Cache[V]) Fresh(node int) bool { return c.now.Load() <= c.node(node).fresh.Load() }

// Fence records the generations a fill of key starts from. Take it before reading the
// shared tier or calling the loader; Store with it stores nothing if key, or the node,
// was invalidated in between.
type Fence struct {
	h       uint64
	gen     uint32
	nodeGen uint32
	node    *nodeState
}

// Fence returns the fence for a fill of the key with hash h, owned by node (a
// negative node: no node owns the key).
func (c *Cache[V]) Fence(h uint64, node int) Fence {
	n := c.node(node)
	return Fence{h: h, gen: c.stripes[h%stripes].Load(), node: n, nodeGen: n.gen.Load()}
}

// Valid reports whether nothing has invalidated f's key or node since f was taken,
// and f's node was up when it was.
func (c *Cache[V]) Valid(f Fence) bool {
	return f.nodeGen%2 == 0 && c.stripes[f.h%stripes].Load() == f.gen && f.node.gen.Load() == f.nodeGen && !f.node.suspended.Load()
}

// Store stores v (or, with absent, a negative entry) for key for at most ttl, fenced
// by f: it reports false and stores nothing if f is no longer valid. Even when it
// reports true the entry may be dropped by ristretto; a later hit is never stale.
// Lookup reports a refresh due from refreshIn on (Never: no refresh).
func (c *Cache[V]) Store(f Fence, key string, v V, absent bool, cost int64, ttl, refreshIn time.Duration) bool {
	ttl -= Tick
	if ttl <= 0 || !c.Valid(f) {
		return false
	}
	return c.set(f, f.gen, key, v, absent, cost, ttl, refreshIn)
}

func (c *Cache[V]) set(f Fence, gen uint32, key string, v V, absent bool, cost int64, ttl, refreshIn time.Duration) bool {
	now := c.now.Load()
	refreshAt := int64(Never)
	if refreshIn < Never {
		refreshAt = now + int64(max(refreshIn, 0))
	}
	e := &entry[V]{
		key: key, val: v, absent: absent,
		expire: now + int64(ttl), refreshAt: refreshAt,
		gen: gen, node: f.node, nodeGen: f.nodeGen,
	}
	c.stage(f.h, e, cost+int64(len(key))+EntryOverhead)
	return true
}

// Replace is the writer's update after its own write reached the shared tier: it
// invalidates key and then stores v under the new generation, but only if nothing else
// invalidated key or its node since f was taken (before the write). Otherwise the key
// is left invalidated, which is always safe: two writers racing in one process cannot
// leave the loser's value behind.
//
// With wait, Replace returns only once ristretto has applied the store, so that a
// Lookup right after it hits (unless ristretto's admission policy refused the entry). A cache
// with no tier behind it needs that, since the write exists nowhere else; one with a
// shared tier does not, and should not pay for it.
func (c *Cache[V]) Replace(f Fence, key string, v V, cost int64, ttl, refreshIn time.Duration, wait bool) bool {
	g := c.stripes[f.h%stripes].Add(1)
	ttl -= Tick
	if ttl <= 0 || g != f.gen+1 || f.nodeGen%2 != 0 || f.node.gen.Load() != f.nodeGen || f.node.suspended.Load() {
		return false
	}
	if !wait {
		// Ristretto may drop this Set (a Set of a key it has not stored yet is
		// rejected while an earlier Set of that key is still buffered); the caller
		// has a shared tier to fall back on, so that only costs a miss.
		return c.set(f, g, key, v, false, cost, ttl, refreshIn)
	}
	if _, stored := c.rc.Get(f.h); !stored {
		// Drain any earlier Set of the key still buffered, and the Del, before this
		// Set: otherwise ristretto would reject this Set as a second addition, or
		// apply the Del after this Set's in-place update.
		c.rc.Del(f.h)
		c.rc.Wait()
	}
	ok := c.set(f, g, key, v, false, cost, ttl, refreshIn)
	c.Wait()
	return ok
}

// Invalidate makes any copy of the key with hash h unservable, including one whose
// ristretto Set has not landed yet, and fences fills of it that are in flight.
//
// It does not call ristretto's Del: the generation bump alone is what makes the
// copy unservable, and Del hands an item to ristretto's goroutine through a channel
// (a wake-up on every write). The dead entry keeps its cost until the next fill of
// the key replaces it or ristretto evicts it, so memory stays bounded by MaxCost.
func (c *Cache[V]) Invalidate(h uint64) {
	c.stripes[h%stripes].Add(1)
}

// FlushNode makes every entry owned by node unservable, in O(1).
func (c *Cache[V]) FlushNode(node int) { c.node(node).gen.Add(2) }

// MarkDown flushes node and keeps its keys out of the near-cache until MarkUp.
func (c *Cache[V]) MarkDown(node int) { c.flip(node, 1) }

// Suspend keeps node's keys out of the near-cache, as MarkDown does, but leaves the
// entries stored before it served until their node's confirmation (Confirm) expires:
// no invalidation can reach them, and none needs to within MaxStaleness. Without
// MaxStaleness it is MarkDown.
func (c *Cache[V]) Suspend(node int) {
	if c.maxStale == 0 {
		c.MarkDown(node)
		return
	}
	c.node(node).suspended.Store(true)
}

// MarkUp flushes node (what was stored before MarkDown or Suspend may have missed
// invalidations) and lets its keys into the near-cache again.
func (c *Cache[V]) MarkUp(node int) {
	n := c.node(node)
	c.flip(node, 0)
	n.suspended.Store(false) // after the flip: a fence taken before it stays invalid
}

// Up reports whether node is up: neither marked down nor suspended.
func (c *Cache[V]) Up(node int) bool {
	n := c.node(node)
	return n.gen.Load()%2 == 0 && !n.suspended.Load()
}

// flip moves node's generation to the next value of the given parity.
func (c *Cache[V]) flip(node int, parity uint32) {
	g := &c.node(node).gen
	for {
		old := g.Load()
		next := old + 1
		if next%2 != parity {
			next++
		}
		if g.CompareAndSwap(old, next) {
			return
		}
	}
}

// Wait blocks until ristretto has applied the stores buffered so far. It costs a
// few microseconds: use it where a miss would cost more (after a Loader call).
func (c *Cache[V]) Wait() {
	c.flush()
	c.rc.Wait()
}

// Generation identifies the state f was taken in: it changes whenever the key's
// stripe or its node is invalidated.
func (f Fence) Generation() uint64 { return uint64(f.gen)<<32 | uint64(f.nodeGen) }
