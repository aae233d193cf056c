package remote

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/redis/go-redis/v9"
)

// Leases (Facebook's memcache leases, NSDI 2013, §3.2.1): a miss hands out a token,
// a write or delete voids it, and only the holder of a live token may fill the key.
// A Loader result read before a Delete can therefore never be written after it: the
// Delete's script deletes the lease, and the holder's fill finds its token gone.
//
// A miss's lease lives in the value key itself, as rueidisaside does: one native
// command, SET <key> <placeholder> NX GET PX <lease ttl> (Redis >= 7.0), returns the
// value (a hit), or nil (the lease is won: the key now holds this caller's
// placeholder), or another holder's placeholder (held). A near miss therefore costs two
// round trips, the read that takes the lease and the fill, a compare-and-set of the
// placeholder. A Set overwrites the placeholder and a Delete removes it, which voids the
// lease. Readers that GET a placeholder see a miss.
//
// A refresh-ahead cannot hide the value it refreshes behind a placeholder, so its lease
// is a companion key, "<ns>:{<key>}:lease" (the same hash tag: one slot, so the scripts
// also run on a Redis Cluster), which Set and Delete delete too.

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

// placeholderPrefix starts every placeholder. No value starts with it: values are
// envelopes, whose first byte is 0xC7.
const placeholderPrefix = "\x00lease:"

func placeholder(token string) string { return placeholderPrefix + token }

// Placeholder returns the bytes a lease taken with token stores in its value key.
func Placeholder(token string) string { return placeholder(token) }

// IsPlaceholder reports whether b, read from a value key, is a lease's placeholder.
func IsPlaceholder(b []byte) bool {
	return len(b) >= len(placeholderPrefix) && string(b[:len(placeholderPrefix)]) == placeholderPrefix
}

// Waiting for another holder's fill. A process that finds a key's lease held marks the
// placeholder (waitedMark appended, AwaitFill) and waits; the holder's fill, or its
// release of the lease, then publishes the key on the fill channel, and a Set or
// Delete of the key publishes its invalidation: either wakes the waiter, which reads
// the key again. A lease nobody waits for ends without publishing anything.
const waitedMark = "|w"

// casScript: KEYS = key; ARGV = placeholder, value, ttl in ms, fill channel, user key.
// Sets key to value for ttl only while it holds the placeholder (marked or not), and
// publishes a fill notice on the fill channel if someone marked it: the value goes
// with it when it is at most FillNoticeMax bytes, so that the waiters need not read
// it (see invalidation.ParseFill). Returns 1 if it wrote.
var casScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] or v == ARGV[1] .. '` + waitedMark + `' then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  if v ~= ARGV[1] then
    local with = ''
    if #ARGV[2] <= ` + strconv.Itoa(FillNoticeMax) + ` then with = ARGV[2] end
    redis.call('PUBLISH', ARGV[4], #ARGV[5] .. ':' .. ARGV[5] .. with)
  end
  return 1
end
return 0
`)

// FillNoticeMax is the largest value a fill notice carries: larger ones the waiters
// read from the node, as after a release.
const FillNoticeMax = 16 << 10

// releaseScript: KEYS = key; ARGV = placeholder, fill channel, user key. Deletes the
// key while it holds the placeholder (marked or not), publishing a fill notice
// without a value if it was marked (the waiters read the key, and take the lease).
var releaseScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] or v == ARGV[1] .. '` + waitedMark + `' then
  redis.call('DEL', KEYS[1])
  if v ~= ARGV[1] then redis.call('PUBLISH', ARGV[2], #ARGV[3] .. ':' .. ARGV[3]) end
  return 1
end
return 0
`)

// awaitScript: KEYS = key; ARGV = placeholder prefix. Returns the value if the key
// holds one, 1 if it is gone (read it again), or 0 once the placeholder is marked.
var awaitScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if not v then return 1 end
if string.sub(v, 1, #ARGV[1]) == ARGV[1] then
  if string.sub(v, -` + "2" + `) ~= '` + waitedMark + `' then redis.call('SET', KEYS[1], v .. '` + waitedMark + `', 'KEEPTTL') end
  return 0
end
return v
`)

// delIfScript: KEYS = key; ARGV = expected. Deletes key only while it holds expected.
var delIfScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

// FillChannel is the channel every node publishes waited-for fills on.
func (r *Redis) FillChannel() string { return r.channel + ":filled" }

// AwaitFill marks key's lease on node idx as waited for, so that its end is published
// on FillChannel. It returns the value if the key holds one (found), or whether the
// placeholder is marked (wait for a notice); neither means the lease is gone: read the
// key again.
func (r *Redis) AwaitFill(ctx context.Context, idx int, key string) (b []byte, marked bool, err error) {
	var res any
	err = r.call(ctx, idx, key, "await fill", true, func(ctx context.Context, n *node) error {
		cmd := n.p.evalsha(ctx, awaitScript, []string{r.Key(key)}, placeholderPrefix)
		if err := cmd.Err(); err != nil {
			return err
		}
		res = cmd.Val()
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	switch v := res.(type) {
	case string:
		return unsafeBytes(v), false, nil
	case int64:
		return nil, v == 0, nil
	}
	return nil, false, fmt.Errorf("remote await fill %q: unexpected reply %T", key, res)
}

// ReleaseLease gives up key's lease if token still holds it: for a load that fills
// nothing (the Loader failed, or its value is not cached), so that the next miss,
// here or in another process, loads at once rather than waiting out the lease.
func (r *Redis) ReleaseLease(ctx context.Context, idx int, key, token string) error {
	return r.call(ctx, idx, key, "release lease", false, func(ctx context.Context, n *node) error {
		return releaseScript.Run(ctx, n.c, []string{r.Key(key)}, placeholder(token), r.FillChannel(), key).Err()
	})
}

// ReleaseRefreshLease gives up a refresh's lease (see TryLease) if token still holds it.
func (r *Redis) ReleaseRefreshLease(ctx context.Context, idx int, key, token string) error {
	return r.call(ctx, idx, key, "release lease", false, func(ctx context.Context, n *node) error {
		return delIfScript.Run(ctx, n.c, []string{r.LeaseKey(key)}, token).Err()
	})
}

// LeaseKey returns the Redis key of key's lease.
func (r *Redis) LeaseKey(key string) string { return r.prefix + key + "}" + leaseSuffix }

// leaseSuffix ends a lease key: LeaseKey(k) is Key(k) + leaseSuffix.
const leaseSuffix = ":lease"

// tokenPrefix makes this process's lease tokens unique across processes; tokenSeq,
// within it.
var (
	tokenPrefix = strconv.FormatUint(rand.Uint64(), 36) + "."
	tokenSeq    atomic.Uint64
)

// NewToken returns a lease token: unique within the process by its sequence number,
// and across processes with overwhelming probability by its random prefix.
func NewToken() string {
	var buf [32]byte
	return string(appendToken(buf[:0]))
}

func appendToken(b []byte) []byte {
	return strconv.AppendUint(append(b, tokenPrefix...), tokenSeq.Add(1), 36)
}

// leaseCmd holds the arguments of one SET <key> <placeholder> NX GET PX <ttl> and the
// strings they point to, in one allocation for the usual key lengths: go-redis writes
// *string and *int64 arguments as it writes string and int64 ones, and boxing a
// pointer (or a constant) allocates nothing. Nothing writes to it once built.
type leaseCmd struct {
	cmd     redis.StatusCmd // the command itself, in the same allocation
	args    [7]any
	key, ph string // the Redis key and the placeholder
	token   string // the token in ph
	px      int64
	buf     [80]byte // key and ph, when they fit
}

// newLeaseCmd builds the lease command of key with token, or with a new token (in
// the same allocation) if token is "".
func (r *Redis) newLeaseCmd(key, token string, ttl time.Duration) *leaseCmd {
	var tb [32]byte
	tok := []byte(nil)
	if token == "" {
		tok = appendToken(tb[:0])
	}
	lc := &leaseCmd{px: max(ttl.Milliseconds(), 1)}
	n := len(r.prefix) + len(key) + 1 + len(placeholderPrefix) + len(token) + len(tok)
	b := lc.buf[:0]
	if n > len(lc.buf) {
		b = make([]byte, 0, n)
	}
	b = append(append(append(b, r.prefix...), key...), '}')
	k := len(b)
	b = append(append(append(b, placeholderPrefix...), token...), tok...)
	lc.key = unsafe.String(&b[0], k)
	lc.ph = unsafe.String(&b[k], len(b)-k)
	lc.token = lc.ph[len(placeholderPrefix):]
	lc.args = [7]any{"set", &lc.key, &lc.ph, "nx", "get", "px", &lc.px}
	return lc
}

// status returns lc as a command under ctx, built in lc itself.
func (lc *leaseCmd) status(ctx context.Context) *redis.StatusCmd {
	lc.cmd = *redis.NewStatusCmd(ctx, lc.args[:]...)
	return &lc.cmd
}

// Lease reads key and, if it is missing, takes its lease with token for ttl, in one
// command: LeaseFound with the value, LeaseWon, or LeaseHeld (another placeholder).
// With token "" it makes a new token (as NewToken does, without allocating one of
// its own); it returns the token it used.
func (r *Redis) Lease(ctx context.Context, idx int, key, token string, ttl time.Duration) ([]byte, LeaseState, string, error) {
	var res string
	var won bool // the reply was nil: the key was missing and now holds our placeholder
	err := r.call(ctx, idx, key, "read", true, func(ctx context.Context, n *node) (err error) {
		lc := r.newLeaseCmd(key, token, ttl)
		token = lc.token
		cmd := lc.status(ctx)
		switch err = n.p.do(ctx, cmd); {
		case err == nil:
			res = cmd.Val()
		case errors.Is(err, redis.Nil):
			won, err = true, nil
		}
		return err // after a ctx error cmd is not ours to read
	})
	if err != nil {
		return nil, LeaseUnknown, token, err
	}
	b, state := leaseOutcome(res, won)
	return b, state, token, nil
}

// unsafeBytes returns the bytes of s without copying: for a string read from the
// network that nothing else holds, handed to the decoder, which owns it (see the root
// package's Codec). Nothing writes to it.
func unsafeBytes(s string) []byte {
	if s == "" {
		return nil
	}
	return unsafe.Slice(unsafe.StringData(s), len(s))
}

// leaseOutcome reads the reply of SET NX GET: nil (won), or the bytes that were there.
func leaseOutcome(res string, isNil bool) ([]byte, LeaseState) {
	switch {
	case isNil:
		return nil, LeaseWon
	case strings.HasPrefix(res, placeholderPrefix):
		return nil, LeaseHeld
	}
	return unsafeBytes(res), LeaseFound
}

// LeaseMany is Lease for a batch: for each item it returns the value (State
// LeaseFound, Val set), or takes the key's lease with the item's Token (LeaseWon), or
// finds it held (LeaseHeld). One pipelined round trip per node (per master on a
// Cluster), the nodes in parallel. An item whose key has a missed write to replay, or
// whose node failed, gets Err and State LeaseUnknown.
func (r *Redis) LeaseMany(ctx context.Context, items []Item, ttl time.Duration) {
	r.perNode(ctx, items, func(ctx context.Context, n *node, batch []*Item) error {
		if batch = r.unblocked(n, batch); len(batch) == 0 {
			return nil
		}
		cmds := make([]*redis.StatusCmd, len(batch))
		_, err := n.c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, it := range batch {
				cmds[i] = p.SetArgs(ctx, r.Key(it.Key), placeholder(it.Token), redis.SetArgs{Mode: "NX", Get: true, TTL: ttl})
			}
			return nil
		})
		var reply redis.Error
		if err != nil && !errors.Is(err, redis.Nil) && !errors.As(err, &reply) {
			return err // the node did not answer: a node-level error
		}
		for i, it := range batch {
			res, err := cmds[i].Result()
			if err != nil && !errors.Is(err, redis.Nil) {
				it.Err = fmt.Errorf("remote lease %q on %s: %w", it.Key, n.name, err)
				continue
			}
			it.Val, it.State = leaseOutcome(res, errors.Is(err, redis.Nil))
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
		cmds, err := r.evalPipelined(ctx, n, casScript, batch, func(it *Item) ([]string, []any) {
			return []string{r.Key(it.Key)}, []any{placeholder(it.Token), it.Val, max(ttl(pos[it]).Milliseconds(), 1), r.FillChannel(), it.Key}
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

// FillLeased stores b for key for ttl if token's placeholder still holds the key (the
// lease is ours). It returns ErrLeaseLost if the lease is gone: a Set or Delete voided
// it, or it expired.
func (r *Redis) FillLeased(ctx context.Context, idx int, key, token string, b []byte, ttl time.Duration) error {
	var wrote int
	err := r.call(ctx, idx, key, "fill", false, func(ctx context.Context, n *node) (err error) {
		wrote, err = n.p.evalsha(ctx, casScript, []string{r.Key(key)}, placeholder(token), b, max(ttl.Milliseconds(), 1), r.FillChannel(), key).Int()
		return err
	})
	if err == nil && wrote == 0 {
		return ErrLeaseLost
	}
	return err
}

// fillRefreshedScript: KEYS = value key, lease key; ARGV = token, value, ttl in ms.
// Writes only while the token still holds the refresh lease. Returns 1 if it wrote.
var fillRefreshedScript = redis.NewScript(`
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
`)

// FillRefreshed is FillLeased for a refresh's lease (see TryLease).
func (r *Redis) FillRefreshed(ctx context.Context, idx int, key, token string, b []byte, ttl time.Duration) error {
	var wrote int
	err := r.call(ctx, idx, key, "fill", false, func(ctx context.Context, n *node) (err error) {
		wrote, err = fillRefreshedScript.Run(ctx, n.c, []string{r.Key(key), r.LeaseKey(key)}, token, b, max(ttl.Milliseconds(), 1)).Int()
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
