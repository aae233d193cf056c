package tiered

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/tieredcache/tiered/internal/local"
	"github.com/tieredcache/tiered/internal/remote"
)

// Loader loads the value of a key from the source of truth (a database, a service) on
// a miss in both tiers.
//
// Contract:
//   - Return ErrNotFound (or an error wrapping it) when the source has no value; the
//     absence is cached in both tiers for Options.NegativeTTL.
//   - Any other error is returned to every caller waiting on the load and is never
//     cached; the next Get calls the Loader again.
//   - A panic is recovered and delivered to every waiter as a *PanicError carrying the
//     stack; it is not cached.
//   - One process calls Load at most once at a time per key (singleflight). The ctx
//     carries the values of the first caller's ctx but not its cancellation: a caller
//     that gives up does not cancel the load the others wait on. It is cancelled after
//     Options.LoadTimeout, or by Close.
//   - The returned value is shared by every caller and cached as is: do not mutate it
//     afterwards.
type Loader[V any] interface {
	Load(ctx context.Context, key string) (V, error)
}

// LoaderFunc adapts a function to Loader.
type LoaderFunc[V any] func(ctx context.Context, key string) (V, error)

// Load calls f(ctx, key).
func (f LoaderFunc[V]) Load(ctx context.Context, key string) (V, error) { return f(ctx, key) }

// BatchLoader loads many keys at once for GetMany. Keys absent from the returned map
// are absent at the source (negative-cached like ErrNotFound). A non-nil error fails
// the whole batch: nothing from it is cached, and GetMany returns the error with the
// values it found in the tiers. Panics are recovered as for Loader.
type BatchLoader[V any] interface {
	LoadMany(ctx context.Context, keys []string) (map[string]V, error)
}

// BatchLoaderFunc adapts a function to BatchLoader.
type BatchLoaderFunc[V any] func(ctx context.Context, keys []string) (map[string]V, error)

// LoadMany calls f(ctx, keys).
func (f BatchLoaderFunc[V]) LoadMany(ctx context.Context, keys []string) (map[string]V, error) {
	return f(ctx, keys)
}

// loadOne calls the Loader, turning a panic into a *PanicError.
func (c *Cache[V]) loadOne(ctx context.Context, key string) (v V, err error) {
	defer recoverLoad(&err)
	return c.opts.Loader.Load(ctx, key)
}

// loadBatch calls the BatchLoader, turning a panic into a *PanicError.
func (c *Cache[V]) loadBatch(ctx context.Context, keys []string) (m map[string]V, err error) {
	defer recoverLoad(&err)
	return c.opts.BatchLoader.LoadMany(ctx, keys)
}

func recoverLoad(err *error) {
	if r := recover(); r != nil {
		*err = &PanicError{Value: r, Stack: debug.Stack()}
	}
}

// loadContext returns the context a shared load runs under: the values of the
// caller's ctx, none of its cancellation, bounded by LoadTimeout and cancelled by
// Close.
func (c *Cache[V]) loadContext(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.opts.LoadTimeout)
	stop := context.AfterFunc(c.closing, cancel)
	return ctx, func() { stop(); cancel() }
}

// load runs once per load flight, in its own goroutine, under loadContext (the
// values of the first caller's ctx, not its cancellation): a lease on the key in the
// shared tier, the Loader, then both tiers. With reread it first reads the shared
// tier again (see get).
//
// The lease makes one process in the fleet load a missing key while the others wait
// for its fill (C6), and keeps a load that began before a write or delete from
// filling Redis after it (C3):
//
//  1. A misses in Redis and takes the lease (token tA)
//  2. A's Loader reads the old row
//  3. B deletes the row and the key: B's script also deletes the lease
//  4. A's fill runs only if tA is still the lease: it is not, nothing is written
//
// Without the lease, step 4 would store the old row until the TTL ends.
func (c *Cache[V]) load(callerCtx context.Context, key string, node int, f local.Fence, sr shared[V], reread bool) (flight[V], error) {
	if !c.enter() {
		return flight[V]{}, ErrClosed
	}
	defer c.wg.Done()
	// Callers arriving from now on read the shared tier again: the value is there,
	// or a new load starts. (Callers that receive this load's result delete the mark
	// too, in case it was set just as this load ended.)
	defer c.loading.Delete(flightKey(key, f))
	ctx, cancel := c.loadContext(callerCtx)
	defer cancel()
	if reread {
		if sr = c.readShared(ctx, key, node, f); sr.hit {
			return sr.flight, nil
		}
	}
	if c.opts.Loader == nil {
		return flight[V]{}, ErrNotFound
	}
	token, write := "", !sr.failed
	if !sr.failed && !sr.corrupt {
		var fl flight[V]
		var done bool
		token, write, fl, done = c.lease(ctx, key, node, f)
		if done {
			return fl, nil
		}
	}

	c.stats.loads.Add(1)
	v, err := c.loadOne(ctx, key)
	absent := false
	switch {
	case err == nil:
	case errors.Is(err, ErrNotFound):
		c.stats.notFound.Add(1)
		absent = true
	default:
		c.stats.loadErrors.Add(1)
		c.releaseLease(ctx, node, key, token)
		return flight[V]{}, fmt.Errorf("tiered: load %q: %w", key, err)
	}
	if c.afterLoad != nil {
		c.afterLoad(key)
	}
	frame, ttl, ok := c.frame(key, v, absent)
	if !ok {
		c.releaseLease(ctx, node, key, token)
		return flight[V]{v: v}, nil
	}
	if write {
		var err error
		switch {
		case token != "":
			err = c.shared.FillLeased(ctx, node, key, token, frame, ttl)
		case sr.corrupt:
			err = c.shared.Repair(ctx, node, key, frame, ttl)
		}
		switch {
		case errors.Is(err, remote.ErrLeaseLost):
			// A write or delete voided the lease while we loaded: our value may
			// predate it. Return it to the callers that asked before the write,
			// but store it nowhere.
			c.stats.leasesLost.Add(1)
			return flight[V]{v: v, absent: absent}, nil
		case err != nil:
			c.stats.remoteErrors.Add(1)
			c.opts.Logger.Warn("tiered: shared tier fill failed", "key", key, "err", err)
		}
	}
	c.storeLocal(f, key, v, absent, int64(len(frame)), ttl)
	// Wait for ristretto to apply the store, so that the next Get hits rather than
	// calling the Loader again: microseconds, against the Loader's milliseconds.
	c.local.Wait()
	return flight[V]{v: v, absent: absent}, nil
}

// releaseLease gives up a lease whose load fills nothing (best effort: it expires
// anyway), so that the next miss of key does not wait for it.
func (c *Cache[V]) releaseLease(ctx context.Context, node int, key, token string) {
	if token == "" {
		return
	}
	if err := c.shared.ReleaseLease(context.WithoutCancel(ctx), node, key, token); err != nil {
		c.opts.Logger.Debug("tiered: lease not released; it will expire", "key", key, "err", err)
	}
}

// Lease polling backs off from leasePollMin to leasePollMax between attempts.
const (
	leasePollMin = 2 * time.Millisecond
	leasePollMax = 50 * time.Millisecond
)

// lease takes key's lease on its node, or waits for the holder's fill. It returns
// either done with the value found (another process filled it), or the token to fill
// with ("" if there is none) and whether the load may write the shared tier at all.
//
// A waiter polls (one round trip that returns the value if it is there, and takes the
// lease if it is free: a holder that died or was voided is replaced at once) until
// Options.LeaseTTL plus one poll has passed; then it loads without writing Redis.
// Liveness beats efficiency: no caller waits on another process longer than that.
func (c *Cache[V]) lease(ctx context.Context, key string, node int, f local.Fence) (token string, write bool, fl flight[V], done bool) {
	token = remote.NewToken()
	deadline := time.Now().Add(c.opts.LeaseTTL + leasePollMax)
	backoff := leasePollMin
	waited := false
	for {
		b, state, err := c.shared.Lease(ctx, node, key, token, c.opts.LeaseTTL)
		switch {
		case err != nil:
			c.stats.remoteErrors.Add(1)
			c.opts.Logger.Warn("tiered: shared tier lease failed; loading from source", "key", key, "err", err)
			return "", false, fl, false
		case state == remote.LeaseWon:
			return token, true, fl, false
		case state == remote.LeaseFound:
			v, absent, ttl, derr := c.decode(b)
			if derr != nil {
				c.stats.decodeErrors.Add(1)
				return "", false, fl, false // load, write nothing: a writer is active
			}
			c.stats.remoteHits.Add(1)
			c.storeLocal(f, key, v, absent, int64(len(b)), ttl)
			return "", false, flight[V]{v: v, absent: absent}, true
		}
		// Held by another process: wait for its fill.
		if !waited {
			waited = true
			c.stats.leaseWaits.Add(1)
		}
		left := time.Until(deadline)
		if left <= 0 {
			c.stats.leaseTimeouts.Add(1)
			return "", false, fl, false
		}
		t := time.NewTimer(min(backoff, left))
		select {
		case <-ctx.Done():
			t.Stop()
			return "", false, fl, false
		case <-t.C:
		}
		backoff = min(2*backoff, leasePollMax)
	}
}
