package tiered

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/sony/gobreaker/v2"
	"github.com/tieredcache/tiered/internal/envelope"
	"github.com/tieredcache/tiered/internal/invalidation"
	"github.com/tieredcache/tiered/internal/local"
	"github.com/tieredcache/tiered/internal/remote"
	"github.com/tieredcache/tiered/internal/ring"
)

// New returns a Cache configured by opts. It validates opts (Options.Addrs included)
// and follows the invalidations of every Redis node (on the pub/sub connections of
// Options.Shared, or of the Shared it makes for Options.Nodes, Client or Addrs). It
// does no I/O itself and does not fail on Redis: a node that is down or hung at start
// is handled like one that fails later (its keys bypass the near-cache until its
// subscription is confirmed). New waits for the subscriptions, dials included, only
// until Options.Timeout has passed since it was called, one deadline for all nodes:
// it returns after at most Timeout, or at once if building the ring and the
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
	_, raw := o.Codec.(rawCodec[V])
	c := &Cache[V]{opts: o, tag: envelope.Tag(o.Codec.Name()), raw: raw, origin: strconv.FormatUint(rand.Uint64(), 36), leasePoll: leasePollMin, rec: o.Recorder}
	_, nop := o.Recorder.(NopRecorder)
	c.recording = !nop
	lc := local.Config{MaxCost: o.LocalMaxCost}
	if o.Shared != nil || len(o.Nodes) > 0 || o.Client != nil || len(o.Addrs) > 0 {
		lc.MaxStaleness = o.MaxStaleness // confirmed by the nodes' subscribers
	}
	c.local, err = local.New[V](lc)
	if err != nil {
		return nil, err
	}
	c.closing, c.cancel = context.WithCancel(context.Background())
	c.kick = make(chan struct{}, 1)
	c.shared, c.localOnly = noShared{}, true
	if c.sh, c.ownsSh, err = o.sharedConns(); err != nil {
		c.local.Close()
		return nil, err
	}
	if c.sh != nil {
		var subs []*invalidation.Sub
		if err := c.sh.attach(c, func(nodes []*sharedNode) error {
			r, err := c.newRemote(nodes)
			if err != nil {
				return err
			}
			c.shared, c.localOnly = r, false
			for i, sn := range nodes {
				subs = append(subs, c.followNode(i, sn))
			}
			return nil
		}); err != nil {
			c.local.Close()
			if c.ownsSh {
				c.sh.Close()
			}
			return nil, err
		}
		c.awaitSubs(subs, start.Add(o.Timeout))
		c.wg.Add(1)
		go c.repairLoop(c.shared.(*remote.Redis))
	}
	c.startRefreshers()
	return c, nil
}

// sharedConns returns the connections of o's shared tier: o.Shared, or a Shared of the
// Cache's own (owned) for Nodes, Client or Addrs, or nil for none.
func (o Options[V]) sharedConns() (sh *Shared, owned bool, err error) {
	switch {
	case o.Shared != nil:
		return o.Shared, false, nil
	case len(o.Nodes) == 0 && o.Client == nil && len(o.Addrs) == 0:
		return nil, false, nil
	}
	sh, err = NewShared(SharedOptions{
		Nodes: o.Nodes, Client: o.Client, Addrs: o.Addrs, RingReplicas: o.RingReplicas,
		Timeout: o.Timeout, HealthCheck: o.HealthCheck, Logger: o.Logger,
	})
	return sh, true, err
}

// awaitSubs waits until every sub is confirmed, or until deadline.
func (c *Cache[V]) awaitSubs(subs []*invalidation.Sub, deadline time.Time) {
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

// follow is a node of the Shared as one Cache follows it: its pub/sub connection
// (sn) and this Cache's channel on it (sub).
type follow struct {
	sn  *sharedNode
	sub *invalidation.Sub
}

// followNode marks node idx down and follows its invalidations on sn's connection.
func (c *Cache[V]) followNode(idx int, sn *sharedNode) *invalidation.Sub {
	c.local.MarkDown(idx)
	r := c.shared.(*remote.Redis)
	sub := sn.sub.Add(invalidation.Topic{
		Node: idx, Channel: r.Channel(), FillChannel: r.FillChannel(), Origin: c.origin, Handler: busHandler[V]{c},
	})
	c.subsMu.Lock()
	defer c.subsMu.Unlock()
	for len(c.follows) <= idx {
		c.follows = append(c.follows, follow{})
	}
	c.follows[idx] = follow{sn: sn, sub: sub}
	return sub
}

// followed returns how this Cache follows node idx (zero if it does not).
func (c *Cache[V]) followed(idx int) follow {
	c.subsMu.Lock()
	defer c.subsMu.Unlock()
	if idx < len(c.follows) {
		return c.follows[idx]
	}
	return follow{}
}

// unfollow stops following f; its Handler is called no more when it returns.
// With release, the Shared closes the node if nothing else uses it, and reports the
// error of closing its client.
func (c *Cache[V]) unfollow(f follow, release bool) error {
	if f.sub == nil {
		return nil
	}
	f.sn.sub.Remove(f.sub)
	if release {
		return c.sh.release(f.sn)
	}
	return nil
}

// newRemote returns the Cache's shared tier over the Shared's member nodes.
func (c *Cache[V]) newRemote(nodes []*sharedNode) (*remote.Redis, error) {
	o := c.opts
	rn := make([]remote.Node, len(nodes))
	names := make([]string, len(nodes))
	for i, n := range nodes {
		rn[i], names[i] = remote.Node{Name: n.name, Client: n.client}, n.name
	}
	cfg := remote.Config{Nodes: rn, Namespace: o.Namespace, Timeout: o.Timeout, MissedDeletes: o.MissedDeletes, HintTTL: o.TTL,
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
	if c.sh.opts.Client == nil { // a ring, even of one node, so that nodes can be added
		rg, err := ring.New(names, c.sh.opts.RingReplicas)
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
// cancelled and waited for, as are calls in progress and the fills of values already
// returned to their callers (each fill bounded by Options.Timeout); the near-cache's goroutines
// stop; this Cache stops following the nodes' invalidations. Writes a node missed
// (see Options.MissedDeletes) are tried once more; those still not confirmed make
// Close return an error naming the node, and are logged with their keys (other
// processes replay them from their hints when the node answers). A Shared the Cache made
// for Options.Nodes, Client or Addrs is closed with it (clients passed in are the
// caller's); Options.Shared is not. It is idempotent and returns the first call's
// result.
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
	c.abortFlights()
	c.wg.Wait()
	c.loads.Stop() // every load has ended: their goroutines were only kept warm
	var err error
	if r, ok := c.shared.(*remote.Redis); ok {
		err = c.replayOwn(r)
	}
	if c.sh != nil {
		c.sh.detach(c)
		c.subsMu.Lock()
		follows := c.follows
		c.subsMu.Unlock()
		for idx, f := range follows {
			if c.isMember(idx) { // removed nodes are retire's
				err = errors.Join(err, c.unfollow(f, true))
			}
		}
		err = errors.Join(err, c.retire(true))
	}
	c.local.Close()
	if c.ownsSh {
		err = errors.Join(err, c.sh.Close())
	}
	if r, ok := c.shared.(*remote.Redis); ok {
		r.Wait() // pipelines that callers gave up on: ended at once if their clients were just closed
	}
	c.closeFn = func() error { return err }
	return err
}

// closeFromShared closes the Cache when its Shared closes.
func (c *Cache[V]) closeFromShared() { c.Close() }

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
