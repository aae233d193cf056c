package tiered

import (
	"context"
	"errors"
	"time"

	"github.com/tieredcache/tiered/internal/local"
	"github.com/tieredcache/tiered/internal/remote"
)

// Refresh-ahead (Options.RefreshAhead): a near-cache hit on a value whose time left
// in the shared tier has fallen below RefreshAhead x TTL queues a background refresh,
// once per stored entry. A refresh worker takes the key's lease, whether or not the
// value is still there but only while its time left is still below the threshold, so
// that one process in the fleet refreshes it and the others then find it fresh; loads it; and
// fills both tiers, fenced like any fill: a Set or Delete after the refresh began
// voids its lease (Redis is not re-populated) and its fence (neither is the
// near-cache). A refresh that fails leaves the old value served until its TTL ends.

// refreshIn returns when a value with remaining time left in the shared tier is due
// for a refresh, or local.Never.
func (c *Cache[V]) refreshIn(remaining time.Duration) time.Duration {
	if c.opts.RefreshAhead == 0 {
		return local.Never
	}
	return remaining - time.Duration(c.opts.RefreshAhead*float64(c.opts.TTL))
}

// startRefreshers starts the refresh workers, if refresh-ahead is on. Close stops
// them (they are counted in c.wg).
func (c *Cache[V]) startRefreshers() {
	if c.opts.RefreshAhead == 0 {
		return
	}
	// Room for a burst of keys coming due together; past it a refresh is skipped
	// (counted), which costs only a later miss.
	c.refreshes = make(chan string, 64*c.opts.RefreshWorkers)
	c.wg.Add(c.opts.RefreshWorkers)
	for range c.opts.RefreshWorkers {
		go func() {
			defer c.wg.Done()
			for {
				select {
				case <-c.closing.Done():
					return
				case key := <-c.refreshes:
					c.refresh(key)
				}
			}
		}()
	}
}

// scheduleRefresh queues key for a refresh without blocking the hit that found it due.
func (c *Cache[V]) scheduleRefresh(key string) {
	select {
	case c.refreshes <- key:
	default:
		c.stats.refreshesSkipped.Add(1)
	}
}

// refresh reloads key ahead of its expiry. It runs as the leader of key's flight, so
// that a Get or GetMany that misses the key meanwhile joins the refresh instead of
// loading the key a second time; if a flight of the key is already running, that
// flight is the refresh.
func (c *Cache[V]) refresh(key string) {
	if !c.hasLoader() {
		return
	}
	fl, lead, _ := c.begin(key, c.local.Hash(key), c.shared.Owner(key), nil)
	if !lead {
		return
	}
	ctx, cancel := c.loadContext(context.Background())
	defer cancel()
	fl.setPhase(phaseLease)
	token := remote.NewToken()
	// The lease is taken only while the value is not fresh: its time left is under
	// halfway between the refresh threshold and the full TTL. A value another process
	// has just refreshed has nearly its whole TTL; one still due has about the
	// threshold, plus the few milliseconds between the writer's clock (which set the
	// expiry this process computed the due time from) and Redis's SET.
	threshold := c.opts.RefreshAhead * float64(c.opts.TTL)
	fresh := time.Duration(threshold + (float64(c.opts.TTL)-threshold)/2)
	won, err := c.shared.TryLease(ctx, fl.node, key, token, c.opts.LeaseTTL, fresh)
	switch {
	case err != nil:
		c.stats.remoteErrors.Add(1)
		c.warnNode(fl.node, "tiered: refresh lease failed", "key", key, "err", err)
		c.finish(fl, outcome[V]{err: errRetry})
		return
	case !won:
		// Another process is refreshing the key, or has refreshed it: this flight
		// has no value for anyone who joined it, who start their own.
		c.finish(fl, outcome[V]{err: errRetry})
		return
	}
	c.stats.refreshes.Add(1)
	fl.setPhase(phaseLoad)
	v, err := c.loadKey(ctx, key)
	c.fillOne(ctx, fl, plan{token: token, refresh: true, write: !c.localOnly}, v, err)
	if fl.out.err != nil && !errors.Is(fl.out.err, ErrClosed) {
		c.opts.Logger.Warn("tiered: refresh failed; the old value stays until its TTL", "key", key, "err", fl.out.err)
	}
}
