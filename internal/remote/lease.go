package remote

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Leases (Facebook's memcache leases, NSDI 2013, §3.2.1): a miss hands out a token,
// a write or delete voids it, and only the holder of a live token may fill the key.
// A Loader result read before a Delete can therefore never be written after it: the
// Delete's script deletes the lease, and the holder's fill finds its token gone.
//
// The lease of "<ns>:{<key>}" is "<ns>:{<key>}:lease": the same hash tag, so the
// scripts touch one slot and also run on a Redis Cluster.

// LeaseState is the outcome of Lease for one key. Its zero value, LeaseUnknown, is
// what an error leaves: no outcome, so that a failed call is never mistaken for a
// found value.
type LeaseState int

const (
	LeaseUnknown LeaseState = iota // no outcome: the call failed
	LeaseFound                     // the value is there after all (returned)
	LeaseWon                       // the caller holds the lease: load, then FillLeased
	LeaseHeld                      // another process holds it: wait for its fill
)

// leaseScript: KEYS = value key, lease key; ARGV = token, lease ttl in ms.
// Returns the value (bulk), or 1 (lease won) or 0 (lease held by another).
var leaseScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v then return v end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
`)

// fillLeasedScript: KEYS = value key, lease key; ARGV = token, value, ttl in ms.
// Writes only while the token is still the lease. Returns 1 if it wrote.
var fillLeasedScript = redis.NewScript(`
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
`)

// releaseLeaseScript: KEYS = lease key; ARGV = token. Deletes the lease only while
// token holds it.
var releaseLeaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

// ReleaseLease gives up key's lease if token still holds it: for a load that fills
// nothing (the Loader failed, or its value is not cached), so that the next miss,
// here or in another process, loads at once rather than waiting out the lease.
func (r *Redis) ReleaseLease(ctx context.Context, idx int, key, token string) error {
	return r.call(ctx, idx, key, "release lease", false, func(ctx context.Context, n *node) error {
		return releaseLeaseScript.Run(ctx, n.c, []string{r.LeaseKey(key)}, token).Err()
	})
}

// LeaseKey returns the Redis key of key's lease.
func (r *Redis) LeaseKey(key string) string { return r.Key(key) + ":lease" }

// NewToken returns a lease token, unique with overwhelming probability.
func NewToken() string {
	return strconv.FormatUint(rand.Uint64(), 36) + strconv.FormatUint(rand.Uint64(), 36)
}

// Lease looks key up once more and, if it is still missing, tries to take its lease
// with token for ttl.
func (r *Redis) Lease(ctx context.Context, idx int, key, token string, ttl time.Duration) ([]byte, LeaseState, error) {
	var res any
	err := r.call(ctx, idx, key, "lease", true, func(ctx context.Context, n *node) (err error) {
		res, err = leaseScript.Run(ctx, n.c, []string{r.Key(key), r.LeaseKey(key)}, token, max(ttl.Milliseconds(), 1)).Result()
		return err
	})
	if err != nil {
		return nil, LeaseUnknown, err
	}
	b, state := leaseOutcome(res)
	if state == LeaseUnknown {
		return nil, LeaseUnknown, fmt.Errorf("remote lease %q on %s: unexpected reply %T", key, r.Name(idx), res)
	}
	return b, state, nil
}

// leaseOutcome reads leaseScript's reply.
func leaseOutcome(res any) ([]byte, LeaseState) {
	switch v := res.(type) {
	case string:
		return []byte(v), LeaseFound
	case int64:
		if v == 1 {
			return nil, LeaseWon
		}
		return nil, LeaseHeld
	}
	return nil, LeaseUnknown
}

// LeaseMany is Lease for a batch: for each item it returns the value (State
// LeaseFound, Val set), or takes the key's lease with the item's Token (LeaseWon), or
// finds it held (LeaseHeld). One pipelined round trip per node (per master on a
// Cluster), the nodes in parallel. An item whose key has a missed write to replay, or
// whose node failed, gets Err and State LeaseUnknown.
func (r *Redis) LeaseMany(ctx context.Context, items []Item, ttl time.Duration) {
	ms := max(ttl.Milliseconds(), 1)
	r.perNode(ctx, items, func(ctx context.Context, n *node, batch []*Item) error {
		if batch = r.unblocked(n, batch); len(batch) == 0 {
			return nil
		}
		cmds, err := r.evalPipelined(ctx, n, leaseScript, batch, func(it *Item) ([]string, []any) {
			return []string{r.Key(it.Key), r.LeaseKey(it.Key)}, []any{it.Token, ms}
		})
		if err != nil {
			return err
		}
		for i, it := range batch {
			res, err := cmds[i].Result()
			if err != nil {
				it.Err = fmt.Errorf("remote lease %q on %s: %w", it.Key, n.name, err)
				continue
			}
			if it.Val, it.State = leaseOutcome(res); it.State == LeaseUnknown {
				it.Err = fmt.Errorf("remote lease %q on %s: unexpected reply %T", it.Key, n.name, res)
			}
		}
		return nil
	})
}

// FillLeasedMany is FillLeased for a batch: each item's Val is stored for ttl(i) if
// its Token still holds the key's lease; an item whose lease is gone gets
// ErrLeaseLost. One pipelined round trip per node, the nodes in parallel.
func (r *Redis) FillLeasedMany(ctx context.Context, items []Item, ttl func(i int) time.Duration) {
	pos := make(map[*Item]int, len(items))
	for i := range items {
		pos[&items[i]] = i
	}
	r.perNode(ctx, items, func(ctx context.Context, n *node, batch []*Item) error {
		cmds, err := r.evalPipelined(ctx, n, fillLeasedScript, batch, func(it *Item) ([]string, []any) {
			return []string{r.Key(it.Key), r.LeaseKey(it.Key)}, []any{it.Token, it.Val, max(ttl(pos[it]).Milliseconds(), 1)}
		})
		if err != nil {
			return err
		}
		for i, it := range batch {
			switch wrote, err := cmds[i].Int(); {
			case err != nil:
				it.Err = fmt.Errorf("remote fill %q on %s: %w", it.Key, n.name, err)
			case wrote == 0:
				it.Err = ErrLeaseLost
			}
		}
		return nil
	})
}

// evalPipelined runs script once per item in one pipeline on n. EVALSHA cannot fall
// back to EVAL inside a pipeline (the NOSCRIPT reply comes after Exec), so a node
// that does not know the script yet (restarted, or new) has it loaded and the
// pipeline is sent once more.
func (r *Redis) evalPipelined(ctx context.Context, n *node, script *redis.Script, batch []*Item, args func(*Item) ([]string, []any)) ([]*redis.Cmd, error) {
	for attempt := 0; ; attempt++ {
		cmds := make([]*redis.Cmd, len(batch))
		_, err := n.c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, it := range batch {
				keys, argv := args(it)
				cmds[i] = script.EvalSha(ctx, p, keys, argv...)
			}
			return nil
		})
		if err == nil || attempt > 0 || !redis.HasErrorPrefix(err, "NOSCRIPT") {
			var reply redis.Error
			if err != nil && !errors.As(err, &reply) {
				return nil, err // the node did not answer: a node-level error
			}
			return cmds, nil // per-command errors are in cmds
		}
		if err := script.Load(ctx, n.c).Err(); err != nil {
			return nil, err
		}
	}
}

// unblocked returns the items of batch that may be read from n: a key with a missed
// write to replay there gets ErrNodeUnavailable (see readable).
func (r *Redis) unblocked(n *node, batch []*Item) []*Item {
	if !n.unsynced.Load() {
		return batch
	}
	open := batch[:0:0]
	for _, it := range batch {
		if n.blocks(it.Key) {
			it.Err = fmt.Errorf("%w: %s has a missed write of %q to replay", ErrNodeUnavailable, n.name, it.Key)
		} else {
			open = append(open, it)
		}
	}
	return open
}

// ErrLeaseLost reports that a lease was voided (by a Set or Delete) or expired
// before the holder's fill: nothing was written.
var ErrLeaseLost = errors.New("remote: lease lost")

// FillLeased stores b for key for ttl if token still holds key's lease, and releases
// the lease. It returns ErrLeaseLost if the lease is gone.
func (r *Redis) FillLeased(ctx context.Context, idx int, key, token string, b []byte, ttl time.Duration) error {
	var wrote int
	err := r.call(ctx, idx, key, "fill", false, func(ctx context.Context, n *node) (err error) {
		wrote, err = fillLeasedScript.Run(ctx, n.c, []string{r.Key(key), r.LeaseKey(key)}, token, b, max(ttl.Milliseconds(), 1)).Int()
		return err
	})
	if err == nil && wrote == 0 {
		return ErrLeaseLost
	}
	return err
}

// refreshLeaseScript: KEYS = value key, lease key; ARGV = token, lease ttl in ms,
// fresh threshold in ms. Takes the lease only while the value's time left is at most
// the threshold: once one process has refreshed it, the others find it fresh.
var refreshLeaseScript = redis.NewScript(`
if redis.call('PTTL', KEYS[1]) > tonumber(ARGV[3]) then return 0 end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
`)

// TryLease takes key's lease with token for ttl for a refresh-ahead: only if the
// value's time left in Redis is at most threshold (nobody refreshed it yet) and no one
// holds the lease. It reports whether it won.
func (r *Redis) TryLease(ctx context.Context, idx int, key, token string, ttl, threshold time.Duration) (bool, error) {
	var won int
	err := r.call(ctx, idx, key, "lease", true, func(ctx context.Context, n *node) (err error) {
		won, err = refreshLeaseScript.Run(ctx, n.c, []string{r.Key(key), r.LeaseKey(key)},
			token, max(ttl.Milliseconds(), 1), threshold.Milliseconds()).Int()
		return err
	})
	return won == 1, err
}
