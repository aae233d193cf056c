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

// LeaseState is the outcome of Lease.
type LeaseState int

const (
	LeaseFound LeaseState = iota // the value is there after all (returned)
	LeaseWon                     // the caller holds the lease: load, then FillLeased
	LeaseHeld                    // another process holds it: wait for its fill
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
		return nil, 0, err
	}
	switch v := res.(type) {
	case string:
		return []byte(v), LeaseFound, nil
	case int64:
		if v == 1 {
			return nil, LeaseWon, nil
		}
		return nil, LeaseHeld, nil
	}
	return nil, 0, fmt.Errorf("remote lease %q on %s: unexpected reply %T", key, r.Name(idx), res)
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
