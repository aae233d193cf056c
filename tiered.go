package tiered

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/singleflight"

	"github.com/tieredcache/tiered/internal/envelope"
	"github.com/tieredcache/tiered/internal/invalidation"
	"github.com/tieredcache/tiered/internal/local"
	"github.com/tieredcache/tiered/internal/remote"
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

// sharedTier is what the read and write paths need from the shared tier.
// remote.Redis implements it; noShared is the null object for a Cache without Redis.
type sharedTier interface {
	Owner(key string) int
	Get(ctx context.Context, node int, key string) ([]byte, error)
	Fill(ctx context.Context, node int, key string, b []byte, ttl time.Duration) error
	Repair(ctx context.Context, node int, key string, b []byte, ttl time.Duration) error
	Set(ctx context.Context, node int, key string, b []byte, ttl time.Duration, payload []byte) error
	GetMany(ctx context.Context, items []remote.Item)
	FillMany(ctx context.Context, items []remote.Item, ttl func(i int) time.Duration)
	Del(ctx context.Context, items []remote.Item, payload func(keys []string) []byte) error
	Lease(ctx context.Context, node int, key, token string, ttl time.Duration) ([]byte, remote.LeaseState, error)
	FillLeased(ctx context.Context, node int, key, token string, b []byte, ttl time.Duration) error
	TryLease(ctx context.Context, node int, key, token string, ttl, threshold time.Duration) (bool, error)
	ReleaseLease(ctx context.Context, node int, key, token string) error
}

var _ sharedTier = (*remote.Redis)(nil)

// noShared is the shared tier of a Cache without Redis: it holds nothing.
type noShared struct{}

func (noShared) Owner(string) int { return 0 }
func (noShared) Get(context.Context, int, string) ([]byte, error) {
	return nil, remote.ErrMiss
}
func (noShared) Fill(context.Context, int, string, []byte, time.Duration) error   { return nil }
func (noShared) Repair(context.Context, int, string, []byte, time.Duration) error { return nil }
func (noShared) Set(context.Context, int, string, []byte, time.Duration, []byte) error {
	return nil
}
func (noShared) GetMany(_ context.Context, items []remote.Item) {
	for i := range items {
		items[i].Err = remote.ErrMiss
	}
}
func (noShared) FillMany(context.Context, []remote.Item, func(int) time.Duration) {}
func (noShared) Del(context.Context, []remote.Item, func([]string) []byte) error  { return nil }
func (noShared) Lease(context.Context, int, string, string, time.Duration) ([]byte, remote.LeaseState, error) {
	return nil, remote.LeaseWon, nil // nobody to share a load with
}
func (noShared) FillLeased(context.Context, int, string, string, []byte, time.Duration) error {
	return nil
}
func (noShared) TryLease(context.Context, int, string, string, time.Duration, time.Duration) (bool, error) {
	return true, nil
}
func (noShared) ReleaseLease(context.Context, int, string, string) error { return nil }

// New returns a Cache configured by opts. It validates opts and starts one
// invalidation subscriber per Redis node, waiting up to Options.Timeout for their
// subscriptions; it does not fail on Redis: a node that is down at start is handled
// like one that fails later (its keys bypass the near-cache until it answers).
func New[V any](opts Options[V]) (*Cache[V], error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	c := &Cache[V]{opts: o, tag: envelope.Tag(o.Codec.Name()), origin: strconv.FormatUint(rand.Uint64(), 36)}
	c.shared, err = c.newShared()
	if err != nil {
		c.closeOwned()
		return nil, err
	}
	_, c.localOnly = c.shared.(noShared)
	c.local, err = local.New[V](local.Config{MaxCost: o.LocalMaxCost})
	if err != nil {
		c.closeOwned()
		return nil, err
	}
	c.closing, c.cancel = context.WithCancel(context.Background())
	c.kick = make(chan struct{}, 1)
	if r, ok := c.shared.(*remote.Redis); ok {
		c.subscribe(r)
		c.wg.Add(1)
		go c.repairLoop(r)
	}
	c.startRefreshers()
	return c, nil
}

// subscribe starts one invalidation subscriber per node. Each node is down (its keys
// bypass the near-cache) until its subscription is confirmed; New waits up to
// Options.Timeout for that, so that a Cache is usually fully warm-able on return.
func (c *Cache[V]) subscribe(r *remote.Redis) {
	var subs []*invalidation.Subscriber
	for i := range r.Nodes() {
		subs = append(subs, c.startSubscriber(r, i))
	}
	deadline := time.NewTimer(c.opts.Timeout)
	defer deadline.Stop()
	for _, s := range subs {
		select {
		case <-s.Ready():
		case <-deadline.C:
			return
		}
	}
}

// startSubscriber marks node idx down and starts following its invalidations.
func (c *Cache[V]) startSubscriber(r *remote.Redis, idx int) *invalidation.Subscriber {
	c.local.MarkDown(idx)
	s := invalidation.Start(invalidation.Config{
		Node: idx, Client: r.Client(idx), Channel: r.Channel(), Origin: c.origin, Handler: busHandler[V]{c},
		Health: c.opts.HealthCheck, Timeout: c.opts.Timeout, Logger: c.opts.Logger,
	})
	c.subsMu.Lock()
	defer c.subsMu.Unlock()
	for len(c.subs) <= idx {
		c.subs = append(c.subs, nil)
	}
	c.subs[idx] = s
	return s
}

// newClient returns a client for a node given by address (Options.Addrs, AddNode).
func (c *Cache[V]) newClient(addr string) *redis.Client {
	o := c.opts
	return redis.NewClient(&redis.Options{
		Addr:                  addr,
		ContextTimeoutEnabled: true,
		MaxRetries:            -1, // the Loader is the fallback; retries only add latency
		DialTimeout:           max(o.Timeout, time.Second),
		ReadTimeout:           o.Timeout,
		WriteTimeout:          o.Timeout,
	})
}

func (c *Cache[V]) newShared() (sharedTier, error) {
	o := c.opts
	var nodes []remote.Node
	switch {
	case o.Client != nil:
		nodes = []remote.Node{{Name: "redis", Client: o.Client}}
	case len(o.Nodes) > 0:
		for _, n := range o.Nodes {
			if n.Client == nil {
				return nil, fmt.Errorf("tiered: node %q has a nil Client", n.Name)
			}
			nodes = append(nodes, remote.Node{Name: n.Name, Client: n.Client})
		}
	case len(o.Addrs) > 0:
		for i, addr := range o.Addrs {
			cl := c.newClient(addr)
			c.ownedByNode.Store(i, cl)
			nodes = append(nodes, remote.Node{Name: addr, Client: cl})
		}
	default:
		return noShared{}, nil
	}
	cfg := remote.Config{Nodes: nodes, Namespace: o.Namespace, Timeout: o.Timeout, MissedDeletes: o.MissedDeletes,
		OnBreakerOpen: func(name string) {
			c.stats.breakerOpens.Add(1)
			o.Logger.Warn("tiered: circuit breaker open: failing fast for a while", "node", name)
		},
	}
	if o.Client == nil { // a ring, even of one node, so that nodes can be added
		names := make([]string, len(nodes))
		for i, n := range nodes {
			names[i] = n.Name
		}
		rg, err := ring.New(names, o.RingReplicas)
		if err != nil {
			return nil, fmt.Errorf("tiered: %w", err)
		}
		cfg.Picker, c.ring = rg, rg
	}
	r, err := remote.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("tiered: %w", err)
	}
	return r, nil
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

// classify turns the outcome of a shared-tier read of key (its bytes, or the error)
// into a hit with its time left, a miss, undecodable bytes or a failed node, and
// counts and logs it. Get and GetMany share it.
func (c *Cache[V]) classify(key string, b []byte, err error) (shared[V], time.Duration) {
	switch {
	case err == nil:
		v, absent, ttl, derr := c.decode(b)
		if derr == nil {
			c.stats.remoteHits.Add(1)
			return shared[V]{flight: flight[V]{v: v, absent: absent}, hit: true}, ttl
		}
		c.stats.decodeErrors.Add(1)
		c.opts.Logger.Warn("tiered: undecodable value in the shared tier; reloading", "key", key, "err", derr)
		return shared[V]{corrupt: true}, 0
	case errors.Is(err, remote.ErrMiss):
		c.stats.remoteMisses.Add(1)
		return shared[V]{}, 0
	default:
		c.stats.remoteErrors.Add(1)
		c.opts.Logger.Warn("tiered: shared tier read failed; loading from source", "key", key, "err", err)
		return shared[V]{failed: true}, 0
	}
}

// frame encodes a loaded value (or an absence) for the shared tier with its jittered
// TTL. ok is false if the value cannot be cached: too large, or not encodable.
func (c *Cache[V]) frame(key string, v V, absent bool) (frame []byte, ttl time.Duration, ok bool) {
	h := envelope.Header{Kind: envelope.KindAbsent, CodecTag: c.tag}
	ttl = c.jitter(c.opts.NegativeTTL)
	var payload []byte
	if !absent {
		var err error
		if payload, err = c.opts.Codec.Marshal(v); err != nil {
			c.stats.loadErrors.Add(1)
			c.opts.Logger.Warn("tiered: loaded value does not encode; not cached", "key", key, "err", err)
			return nil, 0, false
		}
		if len(payload) > c.opts.MaxValueSize {
			c.stats.oversize.Add(1)
			c.opts.Logger.Warn("tiered: loaded value over MaxValueSize; not cached", "key", key, "size", len(payload))
			return nil, 0, false
		}
		h.Kind, ttl = envelope.KindValue, c.jitter(c.opts.TTL)
	}
	h.ExpireMs = time.Now().Add(ttl).UnixMilli()
	return envelope.Encode(h, payload), ttl, true
}

// decode parses bytes read from the shared tier, and returns how long the value has
// left to live there.
func (c *Cache[V]) decode(b []byte) (v V, absent bool, ttl time.Duration, err error) {
	h, payload, err := envelope.Decode(b)
	if err != nil {
		return v, false, 0, err
	}
	if h.CodecTag != c.tag {
		return v, false, 0, fmt.Errorf("tiered: value written with another codec (tag %#x, ours %q is %#x)", h.CodecTag, c.opts.Codec.Name(), c.tag)
	}
	ttl = time.Until(time.UnixMilli(h.ExpireMs))
	if h.Kind == envelope.KindAbsent {
		return v, true, ttl, nil
	}
	if err := c.opts.Codec.Unmarshal(payload, &v); err != nil {
		return v, false, 0, fmt.Errorf("tiered: decode with %s: %w", c.opts.Codec.Name(), err)
	}
	return v, false, ttl, nil
}

// storeLocal puts a filled value in the near-cache, for no longer than the local TTL
// nor than remaining (its time left in the shared tier), fenced by f.
func (c *Cache[V]) storeLocal(f local.Fence, key string, v V, absent bool, cost int64, remaining time.Duration) {
	ttl := c.jitter(c.opts.LocalTTL)
	refreshIn := local.Never
	if absent {
		ttl = c.jitter(min(c.opts.LocalTTL, c.opts.NegativeTTL))
	} else {
		refreshIn = c.refreshIn(remaining)
	}
	c.local.Store(f, key, v, absent, cost, min(ttl, remaining), refreshIn)
}

func (c *Cache[V]) jitter(d time.Duration) time.Duration {
	if c.opts.Jitter == 0 || d <= 0 {
		return d
	}
	return d - time.Duration(rand.Float64()*c.opts.Jitter*float64(d))
}

// Set stores v under key in the shared tier (on the key's owner node) and in this
// process's near-cache, and publishes an invalidation that evicts the key from every
// other process's near-cache (see Coherence in the package documentation). It returns ErrValueTooLarge, ErrInvalidKey, ErrClosed, or the
// shared tier's error; after an error the key is evicted from the near-cache, since
// the shared tier may or may not hold v.
func (c *Cache[V]) Set(ctx context.Context, key string, v V) error {
	if err := c.checkKey(key); err != nil {
		return err
	}
	if !c.enter() {
		return ErrClosed
	}
	defer c.wg.Done()
	payload, err := c.opts.Codec.Marshal(v)
	if err != nil {
		return fmt.Errorf("tiered: set %q: encode: %w", key, err)
	}
	if len(payload) > c.opts.MaxValueSize {
		return fmt.Errorf("%w: %q encodes to %d bytes, more than MaxValueSize (%d)", ErrValueTooLarge, key, len(payload), c.opts.MaxValueSize)
	}
	ttl := c.jitter(c.opts.TTL)
	frame := envelope.Encode(envelope.Header{Kind: envelope.KindValue, CodecTag: c.tag, ExpireMs: time.Now().Add(ttl).UnixMilli()}, payload)
	h := c.local.Hash(key)
	node := c.shared.Owner(key)
	f := c.local.Fence(h, node) // before the write: see local.Cache.Replace
	msg := invalidation.AppendPayload(nil, c.origin, time.Now().UnixMicro(), []string{key})
	if err := c.shared.Set(ctx, node, key, frame, ttl, msg); err != nil {
		c.local.Invalidate(h)
		return fmt.Errorf("tiered: set %q: %w", key, err)
	}
	if prev, moved := c.handoffOwner(key, node); moved {
		// Best effort: a failure is remembered and replayed (see membership.go).
		_ = c.shared.Del(ctx, []remote.Item{{Key: key, Node: prev}}, func(keys []string) []byte { return msg })
	}
	c.local.Replace(f, key, v, int64(len(frame)), min(c.jitter(c.opts.LocalTTL), ttl), c.refreshIn(ttl), c.localOnly)
	if !c.localOnly {
		c.stats.invalidationsSent.Add(1)
	}
	return nil
}

// Delete removes keys from the shared tier (one script per owner node, the nodes in
// parallel) and from this process's near-cache, and publishes their invalidation to
// every other process. All keys are checked before anything is
// deleted. It returns an error naming the nodes where the delete could not be
// confirmed; the near-cache is cleared of every key either way.
func (c *Cache[V]) Delete(ctx context.Context, keys ...string) error {
	for _, k := range keys {
		if err := c.checkKey(k); err != nil {
			return err
		}
	}
	if !c.enter() {
		return ErrClosed
	}
	defer c.wg.Done()
	items := make([]remote.Item, len(keys))
	var handoffs []remote.Item // the previous owners of moved keys (membership.go)
	for i, k := range keys {
		items[i] = remote.Item{Key: k, Node: c.shared.Owner(k)}
		if prev, moved := c.handoffOwner(k, items[i].Node); moved {
			handoffs = append(handoffs, remote.Item{Key: k, Node: prev})
		}
	}
	sent := time.Now().UnixMicro()
	payload := func(keys []string) []byte { return invalidation.AppendPayload(nil, c.origin, sent, keys) }
	err := c.shared.Del(ctx, items, payload)
	if len(handoffs) > 0 {
		_ = c.shared.Del(ctx, handoffs, payload) // best effort: failures are remembered and replayed
	}
	// Invalidate after the shared tier's delete, so that a fill that read the old
	// value before it cannot store it (its fence predates this bump).
	for _, k := range keys {
		c.local.Invalidate(c.local.Hash(k))
	}
	if err != nil {
		return fmt.Errorf("tiered: delete: %w", err)
	}
	if !c.localOnly {
		c.stats.invalidationsSent.Add(1)
	}
	return nil
}

// GetMany returns the values of keys: near-cache hits, then one round trip per shared
// tier node (the nodes in parallel), then the BatchLoader (or the Loader per key, at
// most LoadConcurrency at a time) for the rest, filling both tiers. Keys absent at the
// source are left out of the map. If some loads fail, it returns the values it has
// and an error joining the failures; an invalid key fails the call before any work.
func (c *Cache[V]) GetMany(ctx context.Context, keys []string) (map[string]V, error) {
	for _, k := range keys {
		if err := c.checkKey(k); err != nil {
			return nil, err
		}
	}
	if !c.enter() {
		return nil, ErrClosed
	}
	defer c.wg.Done()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out := make(map[string]V, len(keys))
	type miss struct {
		h uint64
		f local.Fence
	}
	misses := make(map[string]miss)
	var items []remote.Item
	for _, k := range keys {
		if _, dup := misses[k]; dup {
			continue
		}
		h := c.local.Hash(k)
		if v, absent, ok, refresh := c.local.Lookup(h, k); ok {
			c.stats.localHit(h)
			if refresh {
				c.scheduleRefresh(k)
			}
			if !absent {
				out[k] = v
			}
			continue
		}
		c.stats.localMisses.Add(1)
		node := c.shared.Owner(k)
		misses[k] = miss{h: h, f: c.local.Fence(h, node)}
		items = append(items, remote.Item{Key: k, Node: node})
	}
	if len(items) == 0 {
		return out, nil
	}

	c.shared.GetMany(ctx, items)
	var toLoad []remote.Item // Val unset; Err marks a node that failed
	for _, it := range items {
		sr, ttl := c.classify(it.Key, it.Val, it.Err)
		if sr.hit {
			c.storeLocal(misses[it.Key].f, it.Key, sr.v, sr.absent, int64(len(it.Val)), ttl)
			if !sr.absent {
				out[it.Key] = sr.v
			}
			continue
		}
		if !sr.failed {
			it.Err = nil // load and fill; a non-nil Err keeps the failed node out of the fill
		}
		it.Val, it.Overwrite = nil, sr.corrupt // undecodable bytes are replaced, as by Get
		toLoad = append(toLoad, it)
	}
	if len(toLoad) == 0 || (c.opts.Loader == nil && c.opts.BatchLoader == nil) {
		return out, nil
	}

	ctx, cancel := c.loadContext(ctx)
	defer cancel()
	loaded, errs := c.loadMany(ctx, toLoad)
	var fills []remote.Item
	var ttls []time.Duration
	for _, it := range toLoad {
		r, ok := loaded[it.Key]
		if !ok {
			continue // failed; its error is in errs
		}
		frame, ttl, ok := c.frame(it.Key, r.v, r.absent)
		if ok {
			if it.Err == nil { // skip nodes that failed the read
				fills = append(fills, remote.Item{Key: it.Key, Node: it.Node, Val: frame, Overwrite: it.Overwrite})
				ttls = append(ttls, ttl)
			}
			c.storeLocal(misses[it.Key].f, it.Key, r.v, r.absent, int64(len(frame)), ttl)
		}
		if !r.absent {
			out[it.Key] = r.v
		}
	}
	c.local.Wait() // as in load
	if len(fills) > 0 {
		c.shared.FillMany(ctx, fills, func(i int) time.Duration { return ttls[i] })
		for _, it := range fills {
			if it.Err != nil {
				c.stats.remoteErrors.Add(1)
				c.opts.Logger.Warn("tiered: shared tier fill failed", "key", it.Key, "err", it.Err)
			}
		}
	}
	return out, errors.Join(errs...)
}

// loadMany loads the keys of items with the BatchLoader, or with the Loader per key.
// Keys that failed are missing from the result and have an error in errs.
func (c *Cache[V]) loadMany(ctx context.Context, items []remote.Item) (map[string]flight[V], []error) {
	res := make(map[string]flight[V], len(items))
	if c.opts.BatchLoader != nil {
		keys := make([]string, len(items))
		for i, it := range items {
			keys[i] = it.Key
		}
		c.stats.loads.Add(uint64(len(keys)))
		m, err := c.loadBatch(ctx, keys)
		if err != nil {
			c.stats.loadErrors.Add(1)
			return nil, []error{fmt.Errorf("tiered: batch load of %d keys: %w", len(keys), err)}
		}
		for _, k := range keys {
			v, ok := m[k]
			if !ok {
				c.stats.notFound.Add(1)
			}
			res[k] = flight[V]{v: v, absent: !ok}
		}
		return res, nil
	}
	var mu sync.Mutex // protects res and errs
	var errs []error
	var g errgroup.Group
	g.SetLimit(c.opts.LoadConcurrency)
	for _, it := range items {
		g.Go(func() error {
			c.stats.loads.Add(1)
			v, err := c.loadOne(ctx, it.Key)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				res[it.Key] = flight[V]{v: v}
			case errors.Is(err, ErrNotFound):
				c.stats.notFound.Add(1)
				res[it.Key] = flight[V]{absent: true}
			default:
				c.stats.loadErrors.Add(1)
				errs = append(errs, fmt.Errorf("tiered: load %q: %w", it.Key, err))
			}
			return nil
		})
	}
	_ = g.Wait() // the goroutines report through errs
	return res, errs
}

// Stats returns a snapshot of the cache's counters.
func (c *Cache[V]) Stats() Stats { return c.stats.snapshot() }

// Close stops the Cache: calls made after it return ErrClosed; loads in flight are
// cancelled and waited for, as are calls in progress; the near-cache's goroutines
// stop; clients created from Options.Addrs are closed (clients passed in are the
// caller's). It is idempotent and returns the first call's result.
func (c *Cache[V]) Close() error {
	c.closeMu.Lock()
	defer c.closeMu.Unlock()
	if c.closeFn != nil {
		return c.closeFn()
	}
	c.mu.Lock()
	c.closed.Store(true)
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	c.subsMu.Lock()
	subs := c.subs
	c.subsMu.Unlock()
	for _, s := range subs {
		if s != nil {
			s.Cancel()
		}
	}
	c.retire(true)
	for _, s := range subs {
		if s != nil {
			s.Stop()
		}
	}
	c.local.Close()
	err := c.closeOwned()
	c.closeFn = func() error { return err }
	return err
}

func (c *Cache[V]) closeOwned() error {
	var errs []error
	c.ownedByNode.Range(func(idx, cl any) bool {
		if err := cl.(io.Closer).Close(); err != nil {
			errs = append(errs, err)
		}
		c.ownedByNode.Delete(idx)
		return true
	})
	return errors.Join(errs...)
}

// enter registers a call that Close must wait for. It reports false after Close.
func (c *Cache[V]) enter() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed.Load() {
		return false
	}
	c.wg.Add(1)
	return true
}

func (c *Cache[V]) checkKey(key string) error {
	if key == "" || len(key) > c.opts.MaxKeySize {
		return invalidKey(key, c.opts.MaxKeySize)
	}
	return nil
}
