package tiered

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tieredcache/tiered/internal/invalidation"
	"github.com/tieredcache/tiered/internal/remote"
)

// repairLoop replays the writes that nodes missed (see remote.Redis.Replay) as soon
// as they answer again: on every health-check tick, and when a subscription comes
// back. It also ends the handoff of removed nodes.
func (c *Cache[V]) repairLoop(r *remote.Redis) {
	defer c.wg.Done()
	t := time.NewTicker(c.opts.HealthCheck)
	defer t.Stop()
	for {
		select {
		case <-c.closing.Done():
			return
		case <-t.C:
		case <-c.kick:
		}
		for idx := range r.Nodes() {
			if r.Unsynced(idx) && c.isMember(idx) {
				c.replay(c.closing, r, idx)
			}
		}
		c.replayHints(r)
		if err := c.retire(false); err != nil {
			c.opts.Logger.Warn("tiered: closing a removed node's client failed", "err", err)
		}
	}
}

// kickRepair asks the repair loop to run now, without blocking.
func (c *Cache[V]) kickRepair() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

func (c *Cache[V]) isMember(idx int) bool { return c.ring == nil || c.ring.Name(idx) != "" }

// replay applies node idx's missed writes, if it answers.
func (c *Cache[V]) replay(ctx context.Context, r *remote.Redis, idx int) {
	if !r.Unsynced(idx) {
		return
	}
	payload := c.replayPayload()
	keys, cleared, err := r.Replay(ctx, idx, payload(nil), payload)
	c.stats.writesReplayed.Add(uint64(keys))
	if keys > 0 || cleared {
		c.rec.RecordReplay(r.Name(idx), keys, cleared)
	}
	switch {
	case err != nil:
		c.opts.Logger.Debug("tiered: node not repaired yet", "node", r.Name(idx), "err", err)
	case cleared:
		c.stats.nodesCleared.Add(1)
		c.opts.Logger.Info("tiered: node cleared of the namespace's keys before use", "node", r.Name(idx))
	case keys > 0:
		c.opts.Logger.Info("tiered: missed deletes replayed", "node", r.Name(idx), "keys", keys)
	}
}

// replayPayload returns the invalidation message of a replay's deletion of keys;
// payload(nil) is a node's flush.
func (c *Cache[V]) replayPayload() (payload func(keys []string) []byte) {
	now := time.Now().UnixMicro()
	return func(keys []string) []byte { return invalidation.AppendPayload(nil, c.origin, now, keys) }
}

// replayHints applies the missed writes other processes (maybe exited since) left as
// hints on the nodes, for the nodes that answer (see remote/hints.go).
func (c *Cache[V]) replayHints(r *remote.Redis) {
	keys, cleared, err := r.ReplayHints(c.closing, c.replayPayload())
	for _, k := range keys { // our own invalidations do not reach us
		c.local.Invalidate(c.local.Hash(k))
	}
	for _, idx := range cleared {
		c.local.FlushNode(idx)
		c.stats.nodesCleared.Add(1)
	}
	c.stats.writesReplayed.Add(uint64(len(keys)))
	if len(keys) > 0 || len(cleared) > 0 {
		c.opts.Logger.Info("tiered: hinted writes replayed", "keys", len(keys), "nodes cleared", len(cleared))
	}
	if err != nil {
		c.opts.Logger.Debug("tiered: hints not replayed yet", "err", err)
	}
}

// replayOwn tries once, at Close, to apply this process's missed writes, and reports
// those it could not (they remain as hints on other nodes, if those were written).
func (c *Cache[V]) replayOwn(r *remote.Redis) error {
	var errs []error
	for idx := range r.Nodes() {
		if !r.Unsynced(idx) {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), c.opts.Timeout)
		c.replay(ctx, r, idx)
		cancel()
		if !r.Unsynced(idx) {
			continue
		}
		keys := r.PendingKeys(idx)
		pending, overflowed := r.Pending(idx)
		c.opts.Logger.Error("tiered: Close: writes not confirmed on a node; other processes replay them from their hints when it answers",
			"node", r.Name(idx), "keys", keys, "pending", pending, "overflowed", overflowed)
		errs = append(errs, fmt.Errorf("tiered: Close: %d writes not confirmed on node %q (hinted on other nodes where they could be)", pending, r.Name(idx)))
	}
	return errors.Join(errs...)
}

// retire ends the subscriptions of removed nodes whose handoff is over (all of them
// if all), and closes the clients the Cache created for them, reporting the errors.
func (c *Cache[V]) retire(all bool) error {
	c.retiredMu.Lock()
	var done []retired
	keep := c.retired[:0]
	for _, rt := range c.retired {
		if all || time.Now().After(rt.until) {
			done = append(done, rt)
		} else {
			keep = append(keep, rt)
		}
	}
	c.retired = keep
	c.retiredMu.Unlock()
	var errs []error
	for _, rt := range done {
		errs = append(errs, c.unfollow(rt.f, true))
	}
	return errors.Join(errs...)
}
