package tiered

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/redis/go-redis/v9"

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

// retired is a removed node's subscription and client, kept through the handoff.
type retired struct {
	idx    int
	sub    *invalidation.Subscriber
	client io.Closer // nil if the caller owns it
	until  time.Time
}

// AddNode adds a standalone Redis node to the ring while the Cache serves; about 1/N of
// the keys move to it. With a nil Client, a client is created for Name as a
// "host:port" address, checked and dialled as for Options.Addrs, and closed by
// RemoveNode or Close.
// The node may hold values from an earlier membership, which no invalidation kept
// current, so its keys in the namespace are cleared (SCAN + UNLINK) before it serves
// reads; until then, and while it cannot be reached, its keys are loaded from the
// source. This process subscribes to its invalidations before routing keys to it,
// waiting up to Options.Timeout. AddNode needs a ring (Options.Nodes or Options.Addrs).
func (c *Cache[V]) AddNode(ctx context.Context, n Node) error {
	if n.Name == "" {
		return errors.New("tiered: AddNode: empty node name")
	}
	if n.Client == nil {
		if err := checkAddr(n.Name); err != nil {
			return fmt.Errorf("tiered: AddNode: %q (no Client, so an address): %w", redactAddr(n.Name), err)
		}
	}
	if !c.enter() {
		return ErrClosed
	}
	defer c.wg.Done()
	r, err := c.ringed()
	if err != nil {
		return err
	}
	c.memberMu.Lock()
	defer c.memberMu.Unlock()
	if _, ok := c.ring.Index(n.Name); ok {
		return fmt.Errorf("tiered: AddNode: %q is already a member", n.Name)
	}
	var client redis.UniversalClient = n.Client
	var owned io.Closer
	if n.Client == nil {
		cl := c.newClient(n.Name)
		client, owned = cl, cl
	}
	idx, err := r.AddNode(remote.Node{Name: n.Name, Client: client})
	if err != nil {
		if owned != nil {
			owned.Close()
		}
		return fmt.Errorf("tiered: AddNode: %w", err)
	}
	if owned != nil {
		c.ownedByNode.Store(idx, owned)
	}
	r.MarkDirty(idx)
	sub := c.startSubscriber(r, idx)
	wait := time.NewTimer(c.opts.Timeout)
	select {
	case <-sub.Ready():
	case <-wait.C:
	case <-ctx.Done():
	}
	wait.Stop()
	c.replay(r, idx)
	prev := c.ring.Clone()
	if err := c.ring.Add(n.Name); err != nil { // cannot fail: the name was checked under memberMu
		return fmt.Errorf("tiered: AddNode: %w", err)
	}
	if got, _ := c.ring.Index(n.Name); got != idx { // both append under memberMu: cannot differ
		return fmt.Errorf("tiered: AddNode: ring index %d and node index %d of %q differ", got, idx, n.Name)
	}
	c.handoff.Store(&handoff{prev: prev, until: time.Now().Add(c.opts.TTL)})
	c.stats.nodesAdded.Add(1)
	return nil
}

// RemoveNode removes the named node from the ring while the Cache serves; its keys
// move to the other nodes. Its invalidations are still followed, and the handoff
// deletes of writes still reach it, for Options.TTL; then its subscription ends and a
// client created by AddNode or from Options.Addrs is closed (a client passed in is
// the caller's to close, after that or after Close). The last node cannot be removed.
func (c *Cache[V]) RemoveNode(ctx context.Context, name string) error {
	if !c.enter() {
		return ErrClosed
	}
	defer c.wg.Done()
	if _, err := c.ringed(); err != nil {
		return err
	}
	c.memberMu.Lock()
	defer c.memberMu.Unlock()
	idx, ok := c.ring.Index(name)
	if !ok {
		return fmt.Errorf("tiered: RemoveNode: %q is not a member", name)
	}
	if len(c.ring.Nodes()) == 1 {
		return fmt.Errorf("tiered: RemoveNode: %q is the last node", name)
	}
	prev := c.ring.Clone()
	if err := c.ring.Remove(name); err != nil {
		return fmt.Errorf("tiered: RemoveNode: %w", err)
	}
	until := time.Now().Add(c.opts.TTL)
	c.handoff.Store(&handoff{prev: prev, until: until})
	c.subsMu.Lock()
	sub := c.subs[idx]
	c.subsMu.Unlock()
	var owned io.Closer
	if cl, ok := c.ownedByNode.LoadAndDelete(idx); ok {
		owned = cl.(io.Closer)
	}
	c.retiredMu.Lock()
	c.retired = append(c.retired, retired{idx: idx, sub: sub, client: owned, until: until})
	c.retiredMu.Unlock()
	c.stats.nodesRemoved.Add(1)
	return nil
}

// ringed returns the shared tier if the Cache has a ring whose membership can change.
func (c *Cache[V]) ringed() (*remote.Redis, error) {
	r, ok := c.shared.(*remote.Redis)
	if !ok || c.ring == nil {
		return nil, errors.New("tiered: membership changes need a ring of standalone nodes (Options.Nodes or Options.Addrs)")
	}
	return r, nil
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
