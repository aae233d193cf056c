package tiered

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tieredcache/tiered/internal/invalidation"
	"github.com/tieredcache/tiered/internal/local"
	"github.com/tieredcache/tiered/internal/remote"
	"github.com/tieredcache/tiered/internal/ring"
	"github.com/tieredcache/tiered/internal/warm"
)

// Cache is a two-tier read-through cache of V values under string keys. It is safe
// for concurrent use. Create it with New and release it with Close.
type Cache[V any] struct {
	opts      Options[V] // with defaults applied
	local     *local.Cache[V]
	shared    sharedTier
	tag       uint32     // envelope tag of opts.Codec
	raw       bool       // opts.Codec is the raw codec, which decode applies inline
	flights   flights[V] // keys being read or loaded (flight.go)
	stats     counters
	rec       Recorder // opts.Recorder
	recording bool     // rec is not a NopRecorder: time and name what it is told of
	warned    sync.Map // node index -> *atomic.Int64: when its last warning was logged (frame.go)

	fillMu    sync.Mutex           // protects fills
	fills     map[string]*fillWait // keys whose fill a flight waits for (coherence.go)
	fillWaits atomic.Int64         // waits registered in fills
	origin    string               // this Cache's id in invalidation messages
	loads     warm.Pool            // the goroutines of loads, kept warm (see lead)
	// localOnly is set when there is no shared tier: a Set then exists only in the near-cache.
	localOnly bool

	// Test hooks, nil outside tests: called between a fill's read (of the shared
	// tier, or of the Loader) and its store into the near-cache.
	afterSharedRead, afterLoad func(key string)
	// leasePoll is the first fallback poll of a lease waiter (leasePollMin; tests
	// lengthen it to show that a notice, not the poll, woke the waiter).
	leasePoll time.Duration
	// afterInvalidate is called when a message from another process was applied
	// (atomic: the subscriber goroutines read it while tests set it).
	afterInvalidate atomic.Pointer[func(m *invalidation.Message)]
	refreshes       chan string // keys whose refresh-ahead is due, for the refresh workers

	// Membership (membership.go). ring is nil unless the shared tier is a ring of
	// standalone nodes (Options.Nodes or Options.Addrs).
	sh        *Shared // the connections (nil without a shared tier)
	ownsSh    bool    // sh was made for this Cache: Close closes it
	ring      *ring.Ring
	handoff   atomic.Pointer[handoff] // the membership before the last change
	subsMu    sync.Mutex              // protects follows
	follows   []follow                // by node index
	retiredMu sync.Mutex              // protects retired
	retired   []retired               // removed nodes in their handoff
	kick      chan struct{}           // wakes the repair loop

	closed  atomic.Bool
	mu      sync.RWMutex       // orders enter's wg.Add before Close's wg.Wait
	wg      sync.WaitGroup     // calls and loads in flight
	closing context.Context    // cancelled by Close
	cancel  context.CancelFunc // cancels closing
	closeMu sync.Mutex         // serialises Close
	closeFn func() error       // result of the first Close
}

// Get returns the value of key: from the near-cache, else from the shared tier, else
// from the Loader, filling the tiers on the way back. It returns ErrNotFound if the
// key is absent at the source, the Loader's error if the load failed, ctx's error if
// ctx ends first (the load goes on for the other callers), ErrInvalidKey, or ErrClosed.
// A shared tier that fails or times out is not an error while a Loader answers.
func (c *Cache[V]) Get(ctx context.Context, key string) (V, error) {
	h := c.local.Hash(key)
	if v, ok, err := c.near(h, key); ok {
		return v, err
	}
	return c.get(ctx, h, key, perCall[V]{})
}

// near answers key from the near-cache, if it holds it (ok).
func (c *Cache[V]) near(h uint64, key string) (v V, ok bool, err error) {
	v, absent, ok, refresh := c.local.Lookup(h, key)
	if !ok {
		return v, false, nil
	}
	c.stats.localHit(h)
	if refresh {
		c.scheduleRefresh(key)
	}
	if absent {
		return v, true, ErrNotFound
	}
	return v, true, nil
}

// GetOrLoad is Get with a loader and a TTL of the call's own, for keys that the
// Cache's Loader and TTL do not fit: on a miss in both tiers it loads key with load,
// instead of Options.Loader, and stores the value in the shared tier for ttl (0:
// Options.TTL), in the near-cache for at most min(LocalTTL, ttl). Everything else is
// Get's: one flight per key (a Get or GetOrLoad of key arriving during the load
// receives its value, whichever loader started it), the lease across processes,
// fencing, negative caching for NegativeTTL. Refresh-ahead, if on, reloads with
// Options.Loader only. A near-cache hit costs what Get's does.
func (c *Cache[V]) GetOrLoad(ctx context.Context, key string, ttl time.Duration, load LoaderFunc[V]) (V, error) {
	if load == nil || ttl < 0 {
		var zero V
		return zero, fmt.Errorf("tiered: GetOrLoad %q: a nil loader or a negative TTL", key)
	}
	h := c.local.Hash(key)
	if v, ok, err := c.near(h, key); ok {
		return v, err
	}
	return c.get(ctx, h, key, perCall[V]{load: load, ttl: ttl})
}

// perCall is a GetOrLoad's loader and TTL (zero for Get).
type perCall[V any] struct {
	load Loader[V]
	ttl  time.Duration
}

// shared is the outcome of a shared-tier read.
type shared[V any] struct {
	outcome[V]
	hit     bool
	failed  bool   // the node failed or timed out: do not write to it
	corrupt bool   // undecodable bytes are stored: overwrite them
	token   string // the read took the key's lease with this token (won), or tried to (held)
	held    bool   // another process holds the key's lease
}

// get is Get after a near-cache miss: it joins key's flight, or starts and leads it
// (flight.go).
//
// Its frame is kept small, and the leader's work is in lead: most callers of a
// missed key are its flight's waiters, often in goroutines just started (a request's
// fan-out, a stampede), whose 2 KB stack a deeper path would make the runtime grow
// (copy) on the way in. For the same reason the owner is looked up here rather than
// in begin: the ring's lookup and the flight's wait are never on the stack together.
func (c *Cache[V]) get(ctx context.Context, h uint64, key string, pc perCall[V]) (V, error) {
	var zero V
	if err := c.checkKey(key); err != nil {
		return zero, err
	}
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	if !c.enter() {
		return zero, ErrClosed
	}
	defer c.wg.Done()
	var start time.Time
	if c.recording {
		start = time.Now()
	}
	node := c.shared.Owner(key)
	for missed := false; ; missed = true {
		fl, lead, ready := c.begin(key, h, node, nil)
		if ready && !missed {
			// Loaded, and on its way into the near-cache behind its fill (see
			// announce): a near hit, counted (and not recorded) as one.
			c.stats.localHit(h)
			return result(fl.out)
		}
		if !missed {
			c.stats.localMisses.Add(1)
		}
		if !lead || !c.lead(ctx, fl, pc) {
			if err := c.wait(ctx, fl); err != nil {
				c.record(start, TierNone, err)
				return zero, err
			}
			if fl.out.err == errRetry {
				node = c.shared.Owner(key) // the membership may have changed meanwhile
				continue
			}
		}
		v, err := result(fl.out)
		c.record(start, fl.out.tier, err)
		return v, err
	}
}

// record records a Get that began at start and was answered by tier (Options.Recorder).
func (c *Cache[V]) record(start time.Time, tier Tier, err error) {
	if c.recording {
		c.rec.RecordGet(tier, time.Since(start), err)
	}
}

// lead runs fl's phase read inline in the caller, its leader, bounded by
// Options.Timeout (which also bounds how long a leader whose ctx ends stays in it);
// callers arriving meanwhile join the flight and wait for it. It reports that fl
// ended with the read (a hit); otherwise the load goes on in a goroutine of its own,
// which the leader waits for as the others do.
func (c *Cache[V]) lead(ctx context.Context, fl *flight[V], pc perCall[V]) bool {
	fl.load, fl.ttl = pc.load, pc.ttl
	sr := c.readShared(detached(ctx), fl)
	if sr.hit {
		c.finish(fl, sr.outcome)
		return true
	}
	c.wg.Add(1) // for load; this call's own count keeps Close waiting
	// On a goroutine kept from an earlier load: a new one's stack would grow on the
	// way through the fill's go-redis calls, every time.
	c.loads.Go(func() { c.load(ctx, fl, sr) })
	return false
}

// readShared reads fl's key from the shared tier and, on a hit, fills the near-cache.
// With a Loader the read also takes the key's lease if the key is missing (one
// command: see Leases in loader.go), so that a near miss costs two round trips, this
// one and the fill. A Cache without a shared tier reads nothing.
func (c *Cache[V]) readShared(ctx context.Context, fl *flight[V]) shared[V] {
	if c.localOnly {
		return shared[V]{}
	}
	var b []byte
	var err error
	var sr shared[V]
	var ttl time.Duration
	if fl.load != nil || c.hasLoader() {
		var state remote.LeaseState
		var token string // a new one, made in the lease's command
		b, state, token, err = c.shared.Lease(ctx, fl.node, fl.id.key, "", c.opts.LeaseTTL)
		switch {
		case err == nil && state == remote.LeaseWon:
			c.stats.remoteMisses.Add(1)
			return shared[V]{token: token}
		case err == nil && state == remote.LeaseHeld:
			c.stats.remoteMisses.Add(1)
			return shared[V]{token: token, held: true}
		}
	} else {
		b, err = c.shared.Get(ctx, fl.node, fl.id.key)
	}
	sr, ttl = c.classify(fl.node, fl.id.key, b, err)
	if sr.hit {
		if c.afterSharedRead != nil {
			c.afterSharedRead(fl.id.key)
		}
		c.storeLocal(fl.fence, fl.id.key, sr.v, sr.absent, int64(len(b)), ttl)
	}
	return sr
}

// detached returns ctx without its cancellation (it keeps its values): ctx itself when
// it cannot be cancelled, which saves an allocation.
func detached(ctx context.Context) context.Context {
	if ctx.Done() == nil {
		return ctx
	}
	return context.WithoutCancel(ctx)
}
