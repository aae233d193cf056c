package remote

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/sony/gobreaker/v2"
)

// Hinted handoff (as in Dynamo and Cassandra).
//
// A missed write is remembered by the process that made it (see remember), which is
// lost if that process exits before the node answers again: every other process
// would then read the value the write should have replaced, from the node, until its
// TTL ended. So a missed write is also recorded as a hint on another node: the set
// "<namespace>:hints" there gets the member "<node name>\x00<key>" ("<node name>\x00"
// alone when the missed writes overflowed: clear the node). Every process's repair
// loop reads the hint sets of every node it reaches (ReplayHints) and, for each
// hinted node that answers, deletes the keys there with their invalidations (or
// clears it), then removes the hints. So the delete happens although its writer has
// exited, within a repair interval of the node answering.
//
// What remains: a process that reads the node after it answers and before the
// replay (one repair interval, Options.HealthCheck) can read the old value; the
// replay's invalidation then evicts its copy. A hint that could not be written (every
// other node unreachable from the writer too) is only in the writer's memory. Hints
// expire with the namespace's TTL (Config.HintTTL), past which the value they would
// delete has expired too.

// hintMiss writes hints that keys' writes may not have reached node idx, on the
// first other node that takes them (at most two tries, each bounded by the timeout).
// It reports an error if no node took them.
func (r *Redis) hintMiss(ctx context.Context, idx int, keys []string) error {
	nodes := *r.nodes.Load()
	if len(nodes) < 2 || r.hintTTL <= 0 || len(keys) == 0 {
		return nil
	}
	target := nodes[idx]
	members := make([]any, len(keys))
	target.mu.Lock()
	overflow := target.dirty
	target.mu.Unlock()
	for i, k := range keys {
		members[i] = target.name + "\x00" + k
	}
	if overflow {
		members = []any{target.name + "\x00"}
	}
	ctx = context.WithoutCancel(ctx) // the write failed; its caller may have given up
	var errs []error
	tries := 0
	for j := 1; j < len(nodes) && tries < 2; j++ {
		h := nodes[(idx+j)%len(nodes)]
		if h.cb.State() == gobreaker.StateOpen {
			continue
		}
		tries++
		cctx, cancel := context.WithTimeout(ctx, r.timeout)
		p := h.c.TxPipeline()
		p.SAdd(cctx, r.hintKey, members...)
		p.PExpire(cctx, r.hintKey, r.hintTTL)
		_, err := p.Exec(cctx)
		cancel()
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("on %s: %w", h.name, err))
	}
	if len(errs) == 0 {
		return fmt.Errorf("remote: no node to hold the hints for %s", target.name)
	}
	return fmt.Errorf("remote: hints for %s not written: %w", target.name, errors.Join(errs...))
}

// ReplayHints reads the hints every node holds and applies those for the nodes that
// answer: it deletes the hinted keys there, publishing their invalidation (payload),
// or, for an overflowed node, clears it and publishes payload(nil), a flush (see
// Replay); payload is called only when there is something to replay. Then it
// removes the applied hints. Hints for a node that is not in this process's shared
// tier are left for the processes that have it. It returns the keys deleted and the
// nodes cleared: the caller evicts them from its own near-cache, which its own
// messages do not reach.
func (r *Redis) ReplayHints(ctx context.Context, payload func(keys []string) []byte) (replayed []string, cleared []int, err error) {
	nodes := *r.nodes.Load()
	if len(nodes) < 2 || r.hintTTL <= 0 {
		return nil, nil, nil
	}
	byName := make(map[string]int, len(nodes))
	for i, n := range nodes {
		byName[n.name] = i
	}
	var errs []error
	for _, h := range nodes {
		if h.cb.State() == gobreaker.StateOpen {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, r.timeout)
		members, err := h.c.SMembers(cctx, r.hintKey).Result()
		cancel()
		if err != nil || len(members) == 0 {
			continue // unreachable, or nothing held: next tick
		}
		byTarget := make(map[string][]string)
		for _, m := range members {
			name, _, ok := strings.Cut(m, "\x00")
			if ok {
				byTarget[name] = append(byTarget[name], m)
			}
		}
		for name, ms := range byTarget {
			idx, ok := byName[name]
			if !ok {
				continue
			}
			n := nodes[idx]
			var keys []string
			clear := false
			for _, m := range ms {
				_, k, _ := strings.Cut(m, "\x00")
				if k == "" {
					clear = true
				} else {
					keys = append(keys, k)
				}
			}
			if clear {
				r.MarkDirty(idx)
				if _, _, err := r.Replay(ctx, idx, payload(nil), payload); err != nil {
					errs = append(errs, err)
					continue
				}
			} else if err := r.delOnBatches(ctx, n, keys, payload); err != nil {
				errs = append(errs, fmt.Errorf("remote: replaying hints for %s: %w", name, err))
				continue
			}
			replayed = append(replayed, keys...)
			if clear {
				cleared = append(cleared, idx)
			}
			args := make([]any, len(ms))
			for i, m := range ms {
				args[i] = m
			}
			cctx, cancel := context.WithTimeout(ctx, r.timeout)
			if err := h.c.SRem(cctx, r.hintKey, args...).Err(); err != nil {
				errs = append(errs, fmt.Errorf("remote: removing replayed hints from %s: %w", h.name, err))
			}
			cancel()
		}
	}
	return replayed, cleared, errors.Join(errs...)
}

// delOnBatches is delOn in batches of replayBatch keys.
func (r *Redis) delOnBatches(ctx context.Context, n *node, keys []string, payload func(keys []string) []byte) error {
	for len(keys) > 0 {
		chunk := keys[:min(len(keys), replayBatch)]
		keys = keys[len(chunk):]
		if err := r.delOn(ctx, n, chunk, payload); err != nil {
			return err
		}
	}
	return nil
}

// PendingKeys returns the keys of writes that node idx missed, still to replay (nil
// if it overflowed: see Pending).
func (r *Redis) PendingKeys(idx int) []string {
	n, err := r.node(idx)
	if err != nil {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	keys := make([]string, 0, len(n.missed))
	for k := range n.missed {
		keys = append(keys, k)
	}
	return keys
}
