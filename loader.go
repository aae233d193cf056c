package tiered

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

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
//   - One process loads a key at most once at a time, whichever call asked for it (Get,
//     GetMany, a refresh-ahead): they all join the key's flight. The exception is a
//     write or invalidation of the key during a load: the load's value may predate it,
//     so later callers start a new flight rather than wait for that value. Across
//     processes, the key's lease in the shared tier makes one process load it while
//     the others wait for its fill (see Options.LeaseTTL).
//   - The ctx carries the values of the first caller's ctx but not its cancellation: a
//     caller that gives up does not cancel the load the others wait on. It is
//     cancelled after Options.LoadTimeout, or by Close.
//   - The value every caller receives, and the near-cache keeps, is the codec's round
//     trip of the returned value (see Codec), so that it is the value another process
//     decodes from the shared tier. A value the codec cannot encode is an error.
type Loader[V any] interface {
	Load(ctx context.Context, key string) (V, error)
}

// LoaderFunc adapts a function to Loader.
type LoaderFunc[V any] func(ctx context.Context, key string) (V, error)

// Load calls f(ctx, key).
func (f LoaderFunc[V]) Load(ctx context.Context, key string) (V, error) { return f(ctx, key) }

// BatchLoader loads many keys at once. GetMany calls it once for the keys whose flights
// it started and whose leases it won (keys other callers or processes are loading are
// waited for, not loaded again); Get calls it with one key when no Loader is set, as
// does GetMany for a key whose lease it won only after waiting. Keys absent from the
// returned map are absent at the source (negative-cached like ErrNotFound). A non-nil
// error fails the whole batch: nothing from it is cached, and every caller waiting on
// one of its keys receives the error. Panics are recovered as for Loader; the rest of
// Loader's contract holds per key.
type BatchLoader[V any] interface {
	LoadMany(ctx context.Context, keys []string) (map[string]V, error)
}

// BatchLoaderFunc adapts a function to BatchLoader.
type BatchLoaderFunc[V any] func(ctx context.Context, keys []string) (map[string]V, error)

// LoadMany calls f(ctx, keys).
func (f BatchLoaderFunc[V]) LoadMany(ctx context.Context, keys []string) (map[string]V, error) {
	return f(ctx, keys)
}

// hasLoader reports whether misses can be loaded at all.
func (c *Cache[V]) hasLoader() bool { return c.opts.Loader != nil || c.opts.BatchLoader != nil }

// loadKey loads one key with the Loader, or with the BatchLoader if there is no
// Loader, turning a panic into a *PanicError and absence into ErrNotFound.
func (c *Cache[V]) loadKey(ctx context.Context, key string) (v V, err error) {
	c.stats.loads.Add(1)
	if c.opts.Loader == nil { // recorded by loadBatch
		m, err := c.loadBatch(ctx, []string{key})
		if err != nil {
			return v, err
		}
		v, ok := m[key]
		if !ok {
			return v, ErrNotFound
		}
		return v, nil
	}
	if c.recording {
		defer c.recordLoad(1, time.Now(), &err) // after recoverLoad: sees a panic's error
	}
	defer recoverLoad(&err)
	return c.opts.Loader.Load(ctx, key)
}

// loadBatch calls the BatchLoader, turning a panic into a *PanicError.
func (c *Cache[V]) loadBatch(ctx context.Context, keys []string) (m map[string]V, err error) {
	if c.recording {
		defer c.recordLoad(len(keys), time.Now(), &err)
	}
	defer recoverLoad(&err)
	return c.opts.BatchLoader.LoadMany(ctx, keys)
}

func (c *Cache[V]) recordLoad(keys int, start time.Time, err *error) {
	c.rec.RecordLoad(keys, time.Since(start), *err)
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

// load runs the rest of a flight whose shared-tier read (sr) did not find the value,
// in its own goroutine (counted in c.wg), under loadContext: the lease, the Loader,
// the fill of both tiers. Get and a refresh's fallback start it; GetMany runs the same
// phases for many keys at once (batch.go) and comes here only for keys whose lease it
// had to wait for.
//
// The lease makes one process in the fleet load a missing key while the others wait
// for its fill (invariant C6, stampede), and keeps a load that began before a write or
// delete from filling Redis after it (invariant C3, no stale set in Redis):
//
//  1. A misses in Redis and takes the lease (token tA)
//  2. A's Loader reads the old row
//  3. B deletes the row and the key: B's script also deletes the lease
//  4. A's fill runs only if tA is still the lease: it is not, nothing is written
//
// Without the lease, step 4 would store the old row until the TTL ends.
func (c *Cache[V]) load(callerCtx context.Context, fl *flight[V], sr shared[V]) {
	defer c.wg.Done()
	ctx, cancel := c.loadContext(callerCtx)
	defer cancel()
	if fl.load == nil && !c.hasLoader() {
		c.finish(fl, outcome[V]{absent: true}) // nothing to load: absent
		return
	}
	// The read took the lease (sr.token), or found it held, or failed (write
	// nothing), or found undecodable bytes (overwrite them): see readShared.
	p := plan{write: !sr.failed && !c.localOnly, repair: sr.corrupt, token: sr.token}
	if sr.held {
		// Another process holds the lease: wait for its fill, or take the lease.
		fl.setPhase(phaseLease)
		ls := c.pollLease(ctx, fl, sr.token, true)
		if ls.found {
			c.finish(fl, ls.outcome)
			return
		}
		p.token, p.write = ls.token, ls.write
	}
	fl.setPhase(phaseLoad)
	v, err := c.loadFlight(ctx, fl)
	c.fillOne(ctx, fl, p, v, err)
}

// loadFlight loads fl's key with its per-call loader (GetOrLoad), or as loadKey does.
func (c *Cache[V]) loadFlight(ctx context.Context, fl *flight[V]) (v V, err error) {
	if fl.load == nil {
		return c.loadKey(ctx, fl.id.key)
	}
	c.stats.loads.Add(1)
	if c.recording {
		defer c.recordLoad(1, time.Now(), &err)
	}
	defer recoverLoad(&err)
	return fl.load.Load(ctx, fl.id.key)
}

// plan is what a load may write to the shared tier once its value is known.
type plan struct {
	token   string // the lease to fill with ("" if none)
	refresh bool   // token is a refresh's lease (TryLease), not a placeholder
	write   bool   // the shared tier may be written at all (false: the node failed, or a lease wait timed out)
	repair  bool   // undecodable bytes are stored: overwrite them
}

// fillOne ends fl with the outcome of its load (v, err): it fills the shared tier as p
// allows, then the near-cache, then wakes the callers.
func (c *Cache[V]) fillOne(ctx context.Context, fl *flight[V], p plan, v V, err error) {
	f, ok := c.settle(ctx, fl, p, v, err)
	if !ok {
		return
	}
	if !f.cacheable {
		// Over MaxValueSize: settle released the lease, and nothing is filled or
		// stored. The flight ends now, so a caller that misses the key after this one
		// returned loads it again, as it would find it in no tier.
		c.finish(fl, f.outcome)
		return
	}
	if p.write && (p.refresh || p.token != "" || p.repair) {
		// The callers have the value now; the shared tier's fill follows. Close
		// cancels loads but waits for fills (each bounded by Options.Timeout): a
		// fill it cancelled would leave the lease's placeholder for other processes
		// to wait out. Without a fill to wait for (no shared tier, or a node that
		// failed), the near-cache store comes first, as for a shared hit: the next
		// Get in program order is a near hit.
		c.announce(fl, f.outcome)
		ctx = context.WithoutCancel(ctx)
	}
	var ferr error
	switch {
	case !p.write:
	case p.refresh:
		ferr = c.shared.FillRefreshed(ctx, fl.node, fl.id.key, p.token, f.frame, f.ttl)
	case p.token != "":
		ferr = c.shared.FillLeased(ctx, fl.node, fl.id.key, p.token, f.frame, f.ttl)
	case p.repair:
		ferr = c.shared.Repair(ctx, fl.node, fl.id.key, f.frame, f.ttl)
	}
	c.store(fl, f, ferr)
	// No wait for ristretto: a stored entry is served from the near-cache's stage at
	// once (internal/local/stage.go), so the next Get hits without one.
	c.finish(fl, f.outcome)
}

// filled is a loaded value ready for both tiers: its round trip through the codec and
// its frame for the shared tier.
type filled[V any] struct {
	outcome[V]
	frame     []byte
	ttl       time.Duration
	cacheable bool // false: over MaxValueSize, returned but cached nowhere
}

// settle turns a load's result into what the tiers store. On a load error, or a value
// the codec cannot encode, it releases the lease, ends the flight with the error and
// reports false.
func (c *Cache[V]) settle(ctx context.Context, fl *flight[V], p plan, v V, err error) (filled[V], bool) {
	fl.setPhase(phaseFill)
	absent := false
	switch {
	case err == nil:
	case errors.Is(err, ErrNotFound):
		c.stats.notFound.Add(1)
		absent = true
	default:
		c.stats.loadErrors.Add(1)
		c.releaseLease(ctx, fl, p)
		c.finish(fl, outcome[V]{err: fmt.Errorf("tiered: load %q: %w", fl.id.key, err)})
		return filled[V]{}, false
	}
	if c.afterLoad != nil {
		c.afterLoad(fl.id.key)
	}
	f, err := c.frame(fl.id.key, v, absent, fl.ttl)
	if err != nil {
		c.stats.loadErrors.Add(1)
		c.releaseLease(ctx, fl, p)
		c.finish(fl, outcome[V]{err: fmt.Errorf("tiered: load %q: %w", fl.id.key, err)})
		return filled[V]{}, false
	}
	if !f.cacheable {
		c.releaseLease(ctx, fl, p)
	}
	return f, true
}

// store puts a settled, cacheable value in the near-cache, unless its shared-tier
// fill lost the lease: a write or delete voided it while we loaded, so the value may
// predate it. It is still returned to the callers that asked before the write, but
// stored nowhere. (A value over MaxValueSize never gets here: its flight ends first.)
func (c *Cache[V]) store(fl *flight[V], f filled[V], fillErr error) {
	switch {
	case errors.Is(fillErr, remote.ErrLeaseLost):
		c.stats.leasesLost.Add(1)
		return
	case fillErr != nil:
		c.stats.remoteErrors.Add(1)
		c.warnNode(fl.node, "tiered: shared tier fill failed", "key", fl.id.key, "err", fillErr)
	}
	c.storeLocal(fl.fence, fl.id.key, f.v, f.absent, int64(len(f.frame)), f.ttl)
}

// releaseLease gives up a lease whose load fills nothing (best effort: it expires
// anyway), so that the next miss of key does not wait for it.
func (c *Cache[V]) releaseLease(ctx context.Context, fl *flight[V], p plan) {
	if p.token == "" {
		return
	}
	release := c.shared.ReleaseLease
	if p.refresh {
		release = c.shared.ReleaseRefreshLease
	}
	if err := release(context.WithoutCancel(ctx), fl.node, fl.id.key, p.token); err != nil {
		c.opts.Logger.Debug("tiered: lease not released; it will expire", "key", fl.id.key, "err", err)
	}
}

// A waiter for another process's fill is woken by the fill's notice (or a write of
// the key); in case a notice is lost it also reads the key again after leasePollMin,
// backing off to leasePollMax.
const (
	leasePollMin = 10 * time.Millisecond
	leasePollMax = 50 * time.Millisecond
)

// leased is the outcome of pollLease: the value (found), or the token to fill with
// ("" if none) and whether the load may write the shared tier at all.
type leased[V any] struct {
	outcome[V]
	found  bool
	token  string
	write  bool
	waited bool // for another process's fill
}

// pollLease takes fl's key's lease on its node, or waits for the holder's fill
// (held: a first attempt, made with token, found it held).
//
// A waiter marks the holder's placeholder as waited for (remote.AwaitFill), so that
// the holder's fill, or its giving up, publishes the key on the fill channel, and
// waits for that notice, or for a write of the key (its invalidation), or for the
// fallback poll; then it reads again (one round trip that returns the value if it is
// there, and takes the lease if it is free: a holder that died or was voided is
// replaced at once). After Options.LeaseTTL plus one poll it loads without writing
// Redis. Liveness beats efficiency: no caller waits on another process longer than
// that.
func (c *Cache[V]) pollLease(ctx context.Context, fl *flight[V], token string, held bool) leased[V] {
	start := time.Now()
	ls := c.awaitLease(ctx, fl, token, held, start)
	if ls.waited && c.recording {
		c.rec.RecordLeaseWait(time.Since(start), ls.found)
	}
	return ls
}

// awaitLease is pollLease without its recording.
func (c *Cache[V]) awaitLease(ctx context.Context, fl *flight[V], token string, held bool, start time.Time) (ls leased[V]) {
	defer func() { ls.waited = held }()
	deadline := start.Add(c.opts.LeaseTTL + leasePollMax)
	backoff := c.leasePoll
	if held {
		c.stats.leaseWaits.Add(1)
	}
	for {
		if held {
			left := time.Until(deadline)
			if left <= 0 {
				c.stats.leaseTimeouts.Add(1)
				return leased[V]{}
			}
			w, done := c.fillWaiter(fl.id.key)
			b, marked, err := c.shared.AwaitFill(ctx, fl.node, fl.id.key)
			switch {
			case err != nil:
				done()
				c.stats.remoteErrors.Add(1)
				c.warnNode(fl.node, "tiered: shared tier lease failed; loading from source", "key", fl.id.key, "err", err)
				return leased[V]{}
			case b != nil:
				done()
				if o, ok := c.found(fl, b); ok {
					return leased[V]{outcome: o, found: true}
				}
				return leased[V]{}
			case marked:
				t := time.NewTimer(min(backoff, left))
				select {
				case <-ctx.Done():
					t.Stop()
					done()
					return leased[V]{}
				case <-w.ch:
					c.stats.fillNotices.Add(1)
					if w.value != nil { // the notice carried the value: no read
						t.Stop()
						done()
						if o, ok := c.found(fl, w.value); ok {
							return leased[V]{outcome: o, found: true}
						}
						return leased[V]{} // undecodable: load, write nothing
					}
				case <-t.C:
				}
				t.Stop()
				backoff = min(2*backoff, leasePollMax)
			}
			done() // the lease is gone, or its end was noticed: read again
		}
		b, state, _, err := c.shared.Lease(ctx, fl.node, fl.id.key, token, c.opts.LeaseTTL)
		if err != nil {
			c.stats.remoteErrors.Add(1)
			c.warnNode(fl.node, "tiered: shared tier lease failed; loading from source", "key", fl.id.key, "err", err)
			return leased[V]{}
		}
		switch state {
		case remote.LeaseWon:
			return leased[V]{token: token, write: true}
		case remote.LeaseFound:
			if o, ok := c.found(fl, b); ok {
				return leased[V]{outcome: o, found: true}
			}
			return leased[V]{} // undecodable, and a writer is active: load, write nothing
		}
		// Held by another process: wait for its fill.
		if !held {
			held = true
			c.stats.leaseWaits.Add(1)
		}
	}
}

// found decodes a value another process filled while fl waited for its lease, and
// stores it in the near-cache.
func (c *Cache[V]) found(fl *flight[V], b []byte) (outcome[V], bool) {
	v, absent, ttl, err := c.decode(b)
	if err != nil {
		c.stats.decodeErrors.Add(1)
		return outcome[V]{}, false
	}
	c.stats.remoteHits.Add(1)
	c.storeLocal(fl.fence, fl.id.key, v, absent, int64(len(b)), ttl)
	return outcome[V]{v: v, absent: absent}, true
}

// loadConcurrently runs fn for each flight, at most LoadConcurrency at a time, and
// waits for them.
func (c *Cache[V]) loadConcurrently(fls []*flight[V], fn func(*flight[V])) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, c.opts.LoadConcurrency)
	for _, fl := range fls {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			fn(fl)
		})
	}
	wg.Wait()
}
