package tiered

import (
	"context"
	"fmt"
	"time"

	"github.com/tieredcache/tiered/internal/envelope"
	"github.com/tieredcache/tiered/internal/invalidation"
	"github.com/tieredcache/tiered/internal/remote"
)

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
	payload, v, err := c.encode(v) // v becomes what other processes will decode
	if err != nil {
		return fmt.Errorf("tiered: set %q: %w", key, err)
	}
	if len(payload) > c.opts.MaxValueSize {
		return fmt.Errorf("%w: %q encodes to %d bytes, more than MaxValueSize (%d)", ErrValueTooLarge, key, len(payload), c.opts.MaxValueSize)
	}
	ttl := c.jitter(c.opts.TTL)
	frame := envelope.Encode(envelope.Header{Kind: envelope.KindValue, CodecTag: c.tag, ExpireMs: time.Now().Add(ttl).UnixMilli()}, payload)
	h := c.local.Hash(key)
	node := c.shared.Owner(key)
	f := c.local.Fence(h, node) // before the write: see local.Cache.Replace
	sent := time.Now().UnixMicro()
	msg := func(keys []string) []byte { return invalidation.AppendPayload(nil, c.origin, sent, keys) }
	if err := c.shared.Set(ctx, node, key, frame, ttl, msg); err != nil {
		c.local.Invalidate(h)
		return fmt.Errorf("tiered: set %q: %w", key, err)
	}
	if prev, moved := c.handoffOwner(key, node); moved {
		// Best effort: a failure is remembered and replayed (see membership.go).
		_ = c.shared.Del(ctx, []remote.Item{{Key: key, Node: prev}}, msg)
	}
	c.local.Replace(f, key, v, int64(len(frame)), min(c.jitter(c.opts.LocalTTL), ttl), c.refreshIn(ttl), c.localOnly)
	c.wakeFill(key, nil) // a flight here waiting for another process's fill reads the new value
	if !c.localOnly {
		c.stats.invalidationsSent.Add(1)
		if c.recording {
			c.rec.RecordInvalidationSent(c.shared.Name(node), 1)
		}
	}
	return nil
}

// Delete removes keys from the shared tier (one script per owner node, the nodes in
// parallel; joined with other writes queued behind a busy node, as Sets are) and from
// this process's near-cache, and publishes their invalidation to
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
		c.wakeFill(k, nil)
	}
	if err != nil {
		return fmt.Errorf("tiered: delete: %w", err)
	}
	if !c.localOnly {
		c.sent(items)
	}
	return nil
}

// sent counts the invalidations a Delete of items published, one per node, and
// reports them to the Recorder.
func (c *Cache[V]) sent(items []remote.Item) {
	perNode := make(map[int]int, 1)
	for _, it := range items {
		perNode[it.Node]++
	}
	c.stats.invalidationsSent.Add(uint64(len(perNode)))
	if c.recording {
		for node, keys := range perNode {
			c.rec.RecordInvalidationSent(c.shared.Name(node), keys)
		}
	}
}
