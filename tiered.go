package tiered

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/singleflight"

	"github.com/tieredcache/tiered/internal/invalidation"
	"github.com/tieredcache/tiered/internal/local"
	"github.com/tieredcache/tiered/internal/ring"
)

// Cache is a two-tier read-through cache of V values under string keys. It is safe
// for concurrent use. Create it with New and release it with Close.
type Cache[V any] struct {
	opts   Options[V] // with defaults applied
	local  *local.Cache[V]
	shared sharedTier
	tag    uint32             // envelope tag of opts.Codec
	reads  singleflight.Group // shared-tier reads in flight, by flightKey
	loads  singleflight.Group // loads in flight, by flightKey
	// loading holds the flight keys of the loads in flight, so that callers that
	// arrive during a load join it without reading the shared tier first.
	loading sync.Map
	stats   counters
	origin  string // this Cache's id in invalidation messages
	// localOnly is set when there is no shared tier: a Set then exists only in the near-cache.
	localOnly bool

	// Test hooks, nil outside tests: called between a fill's read (of the shared
	// tier, or of the Loader) and its store into the near-cache.
	afterSharedRead, afterLoad func(key string)
	// afterInvalidate is called when a message from another process was applied
	// (atomic: the subscriber goroutines read it while tests set it).
	afterInvalidate atomic.Pointer[func(m *invalidation.Message)]
	refreshes       chan string // keys whose refresh-ahead is due, for the refresh workers

	// Membership (membership.go). ring is nil unless the shared tier is a ring of
	// standalone nodes (Options.Nodes or Options.Addrs).
	ring        *ring.Ring
	memberMu    sync.Mutex                 // serialises AddNode and RemoveNode
	handoff     atomic.Pointer[handoff]    // the membership before the last change
	ownedByNode sync.Map                   // node index -> io.Closer: clients the Cache created
	subsMu      sync.Mutex                 // protects subs
	subs        []*invalidation.Subscriber // by node index
	retiredMu   sync.Mutex                 // protects retired
	retired     []retired                  // removed nodes in their handoff
	kick        chan struct{}              // wakes the repair loop

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
	if v, absent, ok, refresh := c.local.Lookup(h, key); ok {
		c.stats.localHit(h)
		if refresh {
			c.scheduleRefresh(key)
		}
		if absent {
			return v, ErrNotFound
		}
		return v, nil
	}
	return c.get(ctx, h, key)
}

// flight is the outcome of a read or a load, shared by every caller that joined it.
type flight[V any] struct {
	v      V
	absent bool
}

// shared is the outcome of a shared-tier read.
type shared[V any] struct {
	flight[V]
	hit     bool
	failed  bool // the node failed or timed out: do not write to it
	corrupt bool // undecodable bytes are stored: overwrite them
}

func (c *Cache[V]) get(ctx context.Context, h uint64, key string) (V, error) {
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
	c.stats.localMisses.Add(1)
	node := c.shared.Owner(key)
	f := c.local.Fence(h, node)
	// Flight keys carry the fence's generations. A Get that starts after an
	// invalidation of key (a Set or Delete here, or a message from another process)
	// therefore never joins a read or load that started before it:
	//
	//   1. Get A reads the old value from Redis
	//   2. Delete(key) removes it from Redis and bumps key's generation
	//   3. Get B misses locally; with the plain key it would join A
	//      and return the value deleted in 2
	//
	// With the generation in the key, B starts its own read, and A's Store is
	// refused because A's fence is older than step 2.
	fk := flightKey(key, f)

	// A caller that arrives while the key is loading joins the load rather than
	// reading the shared tier again (C6: one shared-tier read per miss).
	var load <-chan singleflight.Result
	if _, loading := c.loading.Load(fk); loading {
		load = c.loads.DoChan(fk, func() (any, error) { return c.load(ctx, key, node, f, shared[V]{}, true) })
	} else {
		// Phase 1: the shared-tier read runs inline in the first caller, with no
		// goroutine hand-off on the path of a shared hit; concurrent callers share
		// it. It is bounded by Options.Timeout, which also bounds how long a caller
		// whose ctx ends may stay in it.
		r, _, _ := c.reads.Do(fk, func() (any, error) {
			if _, loading := c.loading.Load(fk); loading {
				// The read this caller missed has just ended in a load: join it
				// (below) rather than read the shared tier a second time.
				return shared[V]{}, nil
			}
			sr := c.readShared(context.WithoutCancel(ctx), key, node, f)
			if !sr.hit {
				// Start the load before releasing the callers of this read, so
				// that they all join it (below) rather than start their own.
				c.loading.Store(fk, struct{}{})
				load = c.loads.DoChan(fk, func() (any, error) { return c.load(ctx, key, node, f, sr, false) })
			}
			return sr, nil
		})
		sr := r.(shared[V])
		if sr.hit {
			return result(sr.flight)
		}
		// Phase 2: the load runs in its own goroutine, so that every caller
		// honours its own ctx while waiting and none cancels it for the others. A
		// caller that joined another's read joins its load; if that load has
		// already ended, the new one reads the shared tier again first, where the
		// ended one left the value, unless the read failed: a node that just timed
		// out is not asked again, which would cost this caller a second Timeout.
		if load == nil {
			load = c.loads.DoChan(fk, func() (any, error) { return c.load(ctx, key, node, f, sr, !sr.failed) })
		}
	}
	select {
	case res := <-load:
		c.loading.Delete(fk) // also done by the load itself; see load
		if res.Err != nil {
			return zero, res.Err
		}
		return result(res.Val.(flight[V]))
	case <-ctx.Done():
		return zero, ctx.Err()
	case <-c.closing.Done():
		return zero, ErrClosed
	}
}

func result[V any](fl flight[V]) (V, error) {
	if fl.absent {
		var zero V
		return zero, ErrNotFound
	}
	return fl.v, nil
}

func flightKey(key string, f local.Fence) string {
	b := make([]byte, 0, len(key)+24)
	b = append(b, key...)
	b = append(b, 0)
	b = strconv.AppendUint(b, f.Generation(), 36)
	return string(b)
}

// readShared reads key from the shared tier and, on a hit, fills the near-cache.
func (c *Cache[V]) readShared(ctx context.Context, key string, node int, f local.Fence) shared[V] {
	b, err := c.shared.Get(ctx, node, key)
	sr, ttl := c.classify(key, b, err)
	if sr.hit {
		if c.afterSharedRead != nil {
			c.afterSharedRead(key)
		}
		c.storeLocal(f, key, sr.v, sr.absent, int64(len(b)), ttl)
	}
	return sr
}
