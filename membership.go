package tiered

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tieredcache/tiered/internal/invalidation"
	"github.com/tieredcache/tiered/internal/remote"
	"github.com/tieredcache/tiered/internal/ring"
)

// Runtime membership and repair of nodes that missed writes.
//
// Nodes join and leave the ring while the Cache serves (AddNode, RemoveNode). Each
// process changes its own ring, so for a while processes disagree about which node
// owns a key that moved. For Options.TTL after a change (the handoff), a Set or Delete
// of a key whose owner changed also deletes the key on its previous owner, publishing
// the invalidation there: a process still on the old membership then misses on the old
// owner and loads from the source rather than reading the value the write replaced.
// The reverse, a write through a process still on the old membership, reaches only the
// old owner: change membership in every process promptly.

// handoff is the membership before the last change, consulted by writes until until.
type handoff struct {
	prev  *ring.Ring
	until time.Time
}

// retired is a removed node this Cache follows through its handoff.
type retired struct {
	idx   int
	f     follow
	until time.Time
}

// AddNode adds a standalone Redis node to the ring while the Cache serves; about 1/N of
// the keys move to it. With a nil Client, a client is created for Addr (or for Name
// as a "host:port" address), checked and dialled as for Options.Addrs, and closed
// when the node is removed or the connections closed. On Options.Shared, the node
// joins every Cache on it (Shared.AddNode).
// The node may hold values from an earlier membership, which no invalidation kept
// current, so its keys in the namespace are cleared (SCAN + UNLINK) before it serves
// reads; until then, and while it cannot be reached, its keys are loaded from the
// source. This process subscribes to its invalidations before routing keys to it,
// waiting up to Options.Timeout. AddNode needs a ring (Options.Nodes, Addrs, or a
// Shared of them).
func (c *Cache[V]) AddNode(ctx context.Context, n Node) error {
	if err := checkNode(n, "AddNode"); err != nil {
		return err
	}
	sh, err := c.ringShared()
	if err != nil {
		return err
	}
	return sh.AddNode(ctx, n)
}

// RemoveNode removes the named node from the ring while the Cache serves; its keys
// move to the other nodes. Its invalidations are still followed, and the handoff
// deletes of writes still reach it, for Options.TTL; then its client is closed if it
// was created from an address (a client passed in is the caller's to close, after
// that or after Close). The last node cannot be removed. On Options.Shared, the node
// leaves every Cache on it (Shared.RemoveNode).
func (c *Cache[V]) RemoveNode(ctx context.Context, name string) error {
	sh, err := c.ringShared()
	if err != nil {
		return err
	}
	return sh.RemoveNode(ctx, name)
}

// SetNodes makes the ring's membership nodes while the Cache serves (Shared.SetNodes).
func (c *Cache[V]) SetNodes(ctx context.Context, nodes []Node) error {
	sh, err := c.ringShared()
	if err != nil {
		return err
	}
	return sh.SetNodes(ctx, nodes)
}

// Members returns the nodes on the ring now (Shared.Members); nil without a ring.
func (c *Cache[V]) Members() []Node {
	if c.sh == nil || c.ring == nil {
		return nil
	}
	return c.sh.Members()
}

func (c *Cache[V]) ringShared() (*Shared, error) {
	if c.closed.Load() {
		return nil, ErrClosed
	}
	if c.sh == nil || c.ring == nil {
		return nil, errors.New("tiered: membership changes need a ring of standalone nodes (Options.Nodes, Addrs or Shared)")
	}
	return c.sh, nil
}

// joinNode adds sn to this Cache's ring (Shared.AddNode, under the Shared's lock).
func (c *Cache[V]) joinNode(ctx context.Context, sn *sharedNode) error {
	if !c.enter() {
		return ErrClosed
	}
	defer c.wg.Done()
	r := c.shared.(*remote.Redis)
	idx, err := r.AddNode(remote.Node{Name: sn.name, Client: sn.client})
	if err != nil {
		return fmt.Errorf("tiered: AddNode: %w", err)
	}
	r.MarkDirty(idx)
	c.awaitSub(ctx, c.followNode(idx, sn))
	c.replay(c.closing, r, idx)
	prev := c.ring.Clone()
	if err := c.ring.Add(sn.name); err != nil { // cannot fail: the Shared checked the name
		return fmt.Errorf("tiered: AddNode: %w", err)
	}
	if got, _ := c.ring.Index(sn.name); got != idx { // both append under the Shared's lock: cannot differ
		return fmt.Errorf("tiered: AddNode: ring index %d and node index %d of %q differ", got, idx, sn.name)
	}
	c.handoff.Store(&handoff{prev: prev, until: time.Now().Add(c.opts.TTL)})
	c.stats.nodesAdded.Add(1)
	return nil
}

// awaitSub waits for sub's confirmation, at most Options.Timeout or until ctx ends.
func (c *Cache[V]) awaitSub(ctx context.Context, sub *invalidation.Sub) {
	wait := time.NewTimer(c.opts.Timeout)
	defer wait.Stop()
	select {
	case <-sub.Ready():
	case <-wait.C:
	case <-ctx.Done():
	}
}

// leaveNode removes the named node from this Cache's ring (Shared.RemoveNode, under
// the Shared's lock); it is followed until its handoff ends.
func (c *Cache[V]) leaveNode(name string) error {
	if !c.enter() {
		return ErrClosed
	}
	defer c.wg.Done()
	idx, ok := c.ring.Index(name)
	if !ok {
		return fmt.Errorf("tiered: RemoveNode: %q is not a member", name)
	}
	prev := c.ring.Clone()
	if err := c.ring.Remove(name); err != nil {
		return fmt.Errorf("tiered: RemoveNode: %w", err)
	}
	until := time.Now().Add(c.opts.TTL)
	c.handoff.Store(&handoff{prev: prev, until: until})
	c.retiredMu.Lock()
	c.retired = append(c.retired, retired{idx: idx, f: c.followed(idx), until: until})
	c.retiredMu.Unlock()
	c.stats.nodesRemoved.Add(1)
	return nil
}

// moveNode makes the node old's name reach Redis at sn from now on, under the same
// ring position (Shared.SetNodes, under the Shared's lock). The new address may hold
// anything: its keys in the namespace are cleared before they are read, and the
// node's near-cache entries are flushed when sn's subscription is confirmed.
func (c *Cache[V]) moveNode(ctx context.Context, old, sn *sharedNode) error {
	if !c.enter() {
		return ErrClosed
	}
	defer c.wg.Done()
	idx, ok := c.ring.Index(sn.name)
	if !ok {
		return fmt.Errorf("tiered: SetNodes: %q is not a member", sn.name)
	}
	r := c.shared.(*remote.Redis)
	prev := c.followed(idx)
	if err := r.Replace(idx, remote.Node{Name: sn.name, Client: sn.client}); err != nil {
		return fmt.Errorf("tiered: SetNodes: %w", err)
	}
	sub := c.followNode(idx, sn) // marks the node down: no near hit until sn confirms
	c.unfollow(prev, false)      // the Shared releases old
	c.awaitSub(ctx, sub)
	c.replay(c.closing, r, idx)
	return nil
}

// handoffOwner returns the node that owned key before the last membership change,
// if that was another node than now and the handoff is still on.
func (c *Cache[V]) handoffOwner(key string, now int) (int, bool) {
	h := c.handoff.Load()
	if h == nil || time.Now().After(h.until) {
		return 0, false
	}
	p, ok := h.prev.Owner(key)
	return p, ok && p != now
}
