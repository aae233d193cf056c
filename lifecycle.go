package tiered

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
	"github.com/tieredcache/tiered/internal/envelope"
	"github.com/tieredcache/tiered/internal/invalidation"
	"github.com/tieredcache/tiered/internal/local"
	"github.com/tieredcache/tiered/internal/remote"
	"github.com/tieredcache/tiered/internal/ring"
)

// New returns a Cache configured by opts. It validates opts (Options.Addrs included)
// and starts one invalidation subscriber per Redis node. It does no I/O itself and
// does not fail on Redis: a node that is down or hung at start is handled like one
// that fails later (its keys bypass the near-cache until its subscription is
// confirmed). New waits for the subscriptions, dials included, only until
// Options.Timeout has passed since it was called, one deadline for all nodes: it
// returns after at most Timeout, or at once if building the ring and the
// near-cache (CPU work) alone took longer. Use Ping to wait for readiness.
func New[V any](opts Options[V]) (*Cache[V], error) {
	start := time.Now()
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := checkCodec(o.Codec); err != nil {
		return nil, err
	}
	c := &Cache[V]{opts: o, tag: envelope.Tag(o.Codec.Name()), origin: strconv.FormatUint(rand.Uint64(), 36), leasePoll: leasePollMin, rec: o.Recorder}
	_, nop := o.Recorder.(NopRecorder)
	c.recording = !nop
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
		c.subscribeUntil(r, start.Add(o.Timeout))
		c.wg.Add(1)
		go c.repairLoop(r)
	}
	c.startRefreshers()
	return c, nil
}

// subscribe starts one invalidation subscriber per node and waits up to
// Options.Timeout for their subscriptions (see subscribeUntil).
func (c *Cache[V]) subscribe(r *remote.Redis) { c.subscribeUntil(r, time.Now().Add(c.opts.Timeout)) }

// subscribeUntil starts one invalidation subscriber per node. Each node is down (its
// keys bypass the near-cache) until its subscription is confirmed; New waits for that
// until deadline, so that a Cache is usually fully warm-able on return.
func (c *Cache[V]) subscribeUntil(r *remote.Redis, deadline time.Time) {
	var subs []*invalidation.Subscriber
	for i := range r.Nodes() {
		subs = append(subs, c.startSubscriber(r, i))
	}
	wait := time.Until(deadline)
	if wait <= 0 {
		return
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	for _, s := range subs {
		select {
		case <-s.Ready():
		case <-t.C:
			return
		}
	}
}

// startSubscriber marks node idx down and starts following its invalidations.
func (c *Cache[V]) startSubscriber(r *remote.Redis, idx int) *invalidation.Subscriber {
	c.local.MarkDown(idx)
	s := invalidation.Start(invalidation.Config{
		Node: idx, Name: r.Name(idx), Client: r.Client(idx), Channel: r.Channel(), FillChannel: r.FillChannel(), Origin: c.origin, Handler: busHandler[V]{c},
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
//
// Nothing in it may wait on the node longer than Timeout, and a refused connection
// must fail at once: the Loader is the fallback, so retries only add latency.
// go-redis's defaults would not: its pool retries a failed dial DialerRetries (5)
// times, 100 ms apart, so a refused connection cost min(Timeout, 400 ms) per call
// (the backoff ends only when the call's context does); DialTimeout (5 s) and
// PoolTimeout (ReadTimeout + 1 s) bound the dials and pool waits that no call's
// context bounds (the pool's dial probe once PoolSize dials in a row have failed,
// calls without a deadline).
func (c *Cache[V]) newClient(addr string) *redis.Client {
	o := c.opts
	return redis.NewClient(&redis.Options{
		Addr:                  addr,
		ContextTimeoutEnabled: true,
		MaxRetries:            -1, // no command retries
		DialerRetries:         1,  // one dial attempt per connection: a refused dial fails at once
		DialTimeout:           o.Timeout,
		PoolTimeout:           o.Timeout,
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
		OnBreaker: func(name string, to gobreaker.State) {
			state := breakerState(to)
			if state == BreakerOpen {
				c.stats.breakerOpens.Add(1)
				o.Logger.Warn("tiered: circuit breaker open: failing fast for a while", "node", name)
			}
			c.rec.RecordBreaker(name, state)
		},
		OnMissed: func(name string, pending int) { c.rec.RecordMissedWrite(name, pending) },
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
	if r, ok := c.shared.(*remote.Redis); ok {
		r.Wait() // pipelines that callers gave up on: ended at once on the clients just closed
	}
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
