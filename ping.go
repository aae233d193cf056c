package tiered

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/tieredcache/tiered/internal/remote"
)

// Ping reports whether the shared tier serves this Cache fully, for readiness
// probes: every node of the ring (or the Client, every master and replica of a
// Redis Cluster) answers PING, and this process's invalidation subscription to every
// node is confirmed and currently up. A node whose subscription is down still
// serves Get, Set and Delete, but its keys bypass the near-cache; a node that does
// not answer costs its keys a Loader call each. The nodes are checked in parallel,
// all within one deadline: ctx's, or Options.Timeout from the call if earlier.
//
// Ping returns nil if every node passes, or else an error joining one error per
// failing node, each naming the node (errors.Is finds the underlying causes, such
// as syscall.ECONNREFUSED or context.DeadlineExceeded). It returns ErrClosed after
// Close, and nil for a Cache without a shared tier. Ping does not count towards the
// circuit breakers or Stats. A node added by AddNode is checked once AddNode
// returns; a removed node is no longer checked.
func (c *Cache[V]) Ping(ctx context.Context) error {
	if !c.enter() {
		return ErrClosed
	}
	defer c.wg.Done()
	r, ok := c.shared.(*remote.Redis)
	if !ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	var nodes []int
	for idx := range r.Nodes() {
		if c.isMember(idx) {
			nodes = append(nodes, idx)
		}
	}
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, idx := range nodes {
		wg.Go(func() { errs[i] = c.pingNode(ctx, r, idx) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// pingNode checks node idx: its PING, then its subscription.
func (c *Cache[V]) pingNode(ctx context.Context, r *remote.Redis, idx int) error {
	var perr error
	if cc, ok := r.Client(idx).(*redis.ClusterClient); ok {
		perr = cc.ForEachShard(ctx, func(ctx context.Context, shard *redis.Client) error {
			if err := shard.Ping(ctx).Err(); err != nil {
				return fmt.Errorf("shard %s: %w", shard.Options().Addr, err)
			}
			return nil
		})
	} else {
		perr = r.Client(idx).Ping(ctx).Err()
	}
	subscribed := c.subscribed(idx)
	switch {
	case perr != nil && !subscribed:
		return fmt.Errorf("tiered: node %q: PING: %w (and its invalidation subscription is not confirmed)", r.Name(idx), perr)
	case perr != nil:
		return fmt.Errorf("tiered: node %q: PING: %w", r.Name(idx), perr)
	case !subscribed:
		return fmt.Errorf("tiered: node %q: invalidation subscription not confirmed (its keys bypass the near-cache)", r.Name(idx))
	}
	return nil
}

// subscribed reports whether node idx's invalidation subscription has been confirmed
// and is up now (not lost since: see busHandler.Down).
func (c *Cache[V]) subscribed(idx int) bool {
	s := c.followed(idx).sub
	if s == nil {
		return false
	}
	select {
	case <-s.Ready():
		return c.local.Up(idx)
	default:
		return false
	}
}
