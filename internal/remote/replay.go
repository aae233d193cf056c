package remote

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Missed writes.
//
// A Set or Delete that fails on a node (no answer in time, an error reply, a caller
// that gave up) may or may not have changed the key there. If it did not, the node
// keeps the old value, which every process would read again once the node answers.
// So the node remembers the key, and reads of that key there (Get, GetMany, Lease,
// TryLease) fail with ErrNodeUnavailable, which sends the cache to its Loader, until
// Replay has deleted it there and published its invalidation; other keys are read
// as usual (on a Cluster, a hung master's missed writes do not block the others).
// Beyond Config.MissedDeletes keys the node is dirty instead, and none of its keys is
// read until Replay has unlinked every key of the namespace on it (SCAN + UNLINK) and
// published a flush, which makes every process drop its near-cache entries of the node.
//
// The memory is this process's: another process that reads the node after it answers
// again and before this one's Replay can read the old value, until the replay's
// invalidation reaches it. The cache runs Replay as soon as the node answers (see
// tiered's repair loop), so that window is about one health-check interval.

// replayBatch is the number of keys one replayed delete script takes.
const replayBatch = 256

// remember records that a write of key may not have reached n.
func (r *Redis) remember(n *node, key string) {
	n.mu.Lock()
	n.failures++
	if !n.dirty {
		if n.missed == nil {
			n.missed = make(map[string]uint64)
		}
		n.missed[key] = n.failures
		if len(n.missed) > r.maxMiss {
			n.dirty, n.missed = true, nil
		}
	}
	n.unsynced.Store(true)
	pending := n.pendingLocked(r.maxMiss)
	n.mu.Unlock()
	if r.onMissed != nil {
		r.onMissed(n.name, pending)
	}
}

// pendingLocked returns the keys remembered on n: MissedDeletes+1 once they
// overflowed. n.mu must be held.
func (n *node) pendingLocked(maxMiss int) int {
	if n.dirty {
		return maxMiss + 1
	}
	return len(n.missed)
}

// Pending returns the keys node idx missed writes of, still to replay
// (MissedDeletes+1 once they overflowed: all its keys are to be cleared), and
// whether they overflowed.
func (r *Redis) Pending(idx int) (keys int, overflowed bool) {
	n, err := r.node(idx)
	if err != nil {
		return 0, false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.pendingLocked(r.maxMiss), n.dirty
}

// Unsynced reports whether node idx has missed writes to replay.
func (r *Redis) Unsynced(idx int) bool {
	n, err := r.node(idx)
	return err == nil && n.unsynced.Load()
}

// Replay applies node idx's missed writes: it deletes each remembered key there and
// publishes the keys' invalidation (payload builds the message), or, for a dirty node,
// unlinks the namespace's keys and publishes flush (a payload with no keys). Reads of
// the node are allowed again once nothing is left to replay. It calls the node
// directly, not through its circuit breaker, each round trip bounded by the timeout:
// it is the probe that finds the node back. It returns the keys deleted and whether
// the node was cleared.
func (r *Redis) Replay(ctx context.Context, idx int, flush []byte, payload func(keys []string) []byte) (keys int, cleared bool, err error) {
	n, err := r.node(idx)
	if err != nil {
		return 0, false, err
	}
	n.replayMu.Lock()
	defer n.replayMu.Unlock()
	n.mu.Lock()
	dirty, start := n.dirty, n.failures
	batch := make([]string, 0, len(n.missed))
	for k := range n.missed {
		batch = append(batch, k)
	}
	n.mu.Unlock()

	if dirty {
		if err := r.clear(ctx, n); err != nil {
			return 0, false, fmt.Errorf("remote: clearing %s: %w", n.name, err)
		}
		if err := r.delOn(ctx, n, nil, func([]string) []byte { return flush }); err != nil {
			return 0, false, fmt.Errorf("remote: publishing the flush of %s: %w", n.name, err)
		}
		n.mu.Lock()
		defer n.mu.Unlock()
		if n.failures == start { // else a write failed during the clear: clear again
			n.dirty, n.missed = false, nil
		}
		n.unsynced.Store(n.dirty || len(n.missed) > 0)
		return 0, true, nil
	}

	size := replayBatch
	if n.cluster {
		size = 1 // one script per key; a key on a hung master does not hold up the rest
	}
	var errs []error
	for len(batch) > 0 {
		chunk := batch[:min(len(batch), size)]
		batch = batch[len(chunk):]
		if err := r.delOn(ctx, n, chunk, payload); err != nil {
			errs = append(errs, err)
			if !n.cluster || ctx.Err() != nil {
				break
			}
			continue
		}
		keys += len(chunk)
		n.mu.Lock()
		for _, k := range chunk {
			if n.missed[k] <= start { // not failed again since
				delete(n.missed, k)
			}
		}
		n.mu.Unlock()
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.unsynced.Store(n.dirty || len(n.missed) > 0)
	if len(errs) > 0 {
		return keys, false, fmt.Errorf("remote: replaying deletes on %s: %w", n.name, errors.Join(errs...))
	}
	return keys, false, nil
}

// delOn deletes keys (with their leases) on n and publishes payload(keys), each
// script bounded by the timeout: one script on a standalone node, one per key on a
// Cluster. With no keys it publishes payload(nil) alone.
func (r *Redis) delOn(ctx context.Context, n *node, keys []string, payload func(keys []string) []byte) error {
	if n.cluster {
		if len(keys) == 0 {
			ctx, cancel := context.WithTimeout(ctx, r.timeout)
			defer cancel()
			return n.c.Publish(ctx, r.channel, "-|0|"+string(payload(nil))).Err()
		}
		for _, k := range keys {
			ctx, cancel := context.WithTimeout(ctx, r.timeout)
			err := clusterDelScript.Run(ctx, n.c, []string{r.Key(k), r.LeaseKey(k)}, r.channel, payload([]string{k})).Err()
			cancel()
			if err != nil {
				return err
			}
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	rkeys := make([]string, 0, 2*len(keys)+2)
	rkeys = append(rkeys, r.seqKey, r.epochKey)
	for _, k := range keys {
		rkeys = append(rkeys, r.Key(k), r.LeaseKey(k))
	}
	return delScript.Run(ctx, n.c, rkeys, r.channel, newEpoch(), payload(keys)).Err()
}

// clear unlinks every key of the namespace on n (every master of a Cluster): values,
// leases, not the invalidation sequence and epoch.
func (r *Redis) clear(ctx context.Context, n *node) error {
	if cc, ok := n.c.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			return r.clearOne(ctx, c, true)
		})
	}
	return r.clearOne(ctx, n.c, false)
}

func (r *Redis) clearOne(ctx context.Context, c redis.Cmdable, cluster bool) error {
	match := globEscape(r.prefix) + "*"
	var cursor uint64
	for {
		if err := func() error {
			ctx, cancel := context.WithTimeout(ctx, r.timeout)
			defer cancel()
			keys, next, err := c.Scan(ctx, cursor, match, 1000).Result()
			if err != nil {
				return err
			}
			cursor = next
			if len(keys) == 0 {
				return nil
			}
			if !cluster {
				return c.Unlink(ctx, keys...).Err()
			}
			// A Cluster node refuses a multi-key command across slots.
			_, err = c.Pipelined(ctx, func(p redis.Pipeliner) error {
				for _, k := range keys {
					p.Unlink(ctx, k)
				}
				return nil
			})
			return err
		}(); err != nil {
			return err
		}
		if cursor == 0 {
			return nil
		}
	}
}

// globEscape escapes the characters special to Redis's glob-style MATCH patterns.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// MarkDirty makes node idx dirty: its reads fail until Replay has cleared the
// namespace's keys on it. For a node that joins the ring and may hold values from
// an earlier membership, which no invalidation has kept current.
func (r *Redis) MarkDirty(idx int) {
	n, err := r.node(idx)
	if err != nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.failures++
	n.dirty, n.missed = true, nil
	n.unsynced.Store(true)
}
