package tiered

import (
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
				c.replay(r, idx)
			}
		}
		c.retire(false)
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
func (c *Cache[V]) replay(r *remote.Redis, idx int) {
	if !r.Unsynced(idx) {
		return
	}
	now := time.Now().UnixMicro()
	keys, cleared, err := r.Replay(c.closing,
		idx, invalidation.AppendPayload(nil, c.origin, now, nil),
		func(keys []string) []byte { return invalidation.AppendPayload(nil, c.origin, now, keys) })
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

// retire ends the subscriptions of removed nodes whose handoff is over (all of them
// if all), and closes the clients the Cache created for them.
func (c *Cache[V]) retire(all bool) {
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
	for _, rt := range done {
		c.unfollow(rt.f, true)
	}
}
