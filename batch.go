package tiered

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/tieredcache/tiered/internal/remote"
)

// GetMany returns the values of keys. Each key missing from the near-cache joins its
// flight (flight.go), as a Get of it would: keys whose flights are already running
// (another Get, another GetMany, a refresh) are waited for, not read or loaded again.
// For the flights it starts, GetMany runs the phases of many keys at once:
//
//   - read: one round trip per shared-tier node (MGET; per master on a Cluster), the
//     nodes in parallel;
//   - lease: for the keys still missing, one pipelined round trip per node that
//     returns the value if another process filled it meanwhile, or takes the key's
//     lease, or finds it held; keys held by another process are waited for as Get
//     waits (Options.LeaseTTL), each on its own;
//   - load: one BatchLoader call for the keys whose leases it won (or the Loader per
//     key, at most LoadConcurrency at a time, without a BatchLoader);
//   - fill: the callers are given the values first (as Get's are: see announce);
//     then one pipelined round trip per node, each value written only while its lease
//     holds, so a Delete during the batch's load keeps the batch's value out of Redis
//     (invariant C3, as for Get); then the near-cache, fenced (invariant C2).
//
// Keys absent at the source are left out of the map. If some loads fail, it returns
// the values it has and an error joining the failures; if ctx ends first, the values
// it has and ctx's error (the loads go on for their other callers). An invalid key
// fails the call before any work.
func (c *Cache[V]) GetMany(ctx context.Context, keys []string) (map[string]V, error) {
	for _, k := range keys {
		if err := c.checkKey(k); err != nil {
			return nil, err
		}
	}
	if !c.enter() {
		return nil, ErrClosed
	}
	defer c.wg.Done()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var start time.Time
	if c.recording {
		start = time.Now()
	}
	out := make(map[string]V, len(keys))
	// A key asked for twice is looked up twice: its second miss finds the flight its
	// first began, and waits for it (as a second Get of it would).
	var waits, led []*flight[V]
	var slab []flight[V] // storage for the flights this call starts: one allocation
	for i, k := range keys {
		h := c.local.Hash(k)
		if v, absent, ok, refresh := c.local.Lookup(h, k); ok {
			c.stats.localHit(h)
			if refresh {
				c.scheduleRefresh(k)
			}
			if !absent {
				out[k] = v
			}
			continue
		}
		if len(slab) == 0 {
			slab = make([]flight[V], len(keys)-i)
		}
		if waits == nil {
			waits = make([]*flight[V], 0, len(keys)-i)
			led = make([]*flight[V], 0, len(keys)-i)
		}
		fl, lead, ready := c.begin(k, h, c.shared.Owner(k), &slab[0])
		if ready { // on its way into the near-cache (see announce): a near hit
			c.stats.localHit(h)
			if !fl.out.absent {
				out[k] = fl.out.v
			}
			continue
		}
		c.stats.localMisses.Add(1)
		waits = append(waits, fl)
		if lead {
			led = append(led, fl)
			slab = slab[1:]
		}
	}
	if len(led) > 0 {
		if rest := c.readMany(detached(ctx), led); len(rest) > 0 {
			c.wg.Add(1)
			c.loads.Go(func() { c.loadMany(ctx, rest) })
		}
	}
	var errs []error
	for _, fl := range waits {
		if err := c.wait(ctx, fl); err != nil {
			c.record(start, TierNone, err)
			return out, err
		}
		o := fl.out
		if o.err == errRetry {
			v, err := c.get(ctx, c.local.Hash(fl.id.key), fl.id.key, perCall[V]{}) // recorded there
			o = outcome[V]{v: v, err: err}
			if errors.Is(err, ErrNotFound) {
				o = outcome[V]{absent: true}
			}
		} else if c.recording {
			_, err := result(o)
			c.rec.RecordGet(o.tier, time.Since(start), err)
		}
		switch {
		case o.err != nil:
			errs = append(errs, o.err)
		case !o.absent:
			out[fl.id.key] = o.v
		}
	}
	return out, errors.Join(errs...)
}

// pending is a flight whose shared-tier read did not find its value.
type pending[V any] struct {
	fl *flight[V]
	sr shared[V]
	p  plan
}

// readMany is phase read for many flights: it ends those found in the shared tier and
// returns the others. Each node's values are decoded, stored and handed to their
// waiters in the goroutine that read them, as soon as they arrive, while the other
// nodes' replies are still on their way.
func (c *Cache[V]) readMany(ctx context.Context, fls []*flight[V]) []pending[V] {
	if c.localOnly {
		rest := make([]pending[V], 0, len(fls))
		for _, fl := range fls {
			rest = append(rest, pending[V]{fl: fl})
		}
		return rest
	}
	items := make([]remote.Item, len(fls))
	for i, fl := range fls {
		items[i] = remote.Item{Key: fl.id.key, Node: fl.node, Ref: i}
	}
	var (
		mu   sync.Mutex // protects rest
		rest []pending[V]
	)
	c.shared.GetMany(ctx, items, func(its []*remote.Item) {
		for _, it := range its {
			fl := fls[it.Ref]
			sr, ttl := c.classify(fl.node, fl.id.key, it.Val, it.Err)
			if !sr.hit {
				mu.Lock()
				rest = append(rest, pending[V]{fl: fl, sr: sr})
				mu.Unlock()
				continue
			}
			if c.afterSharedRead != nil {
				c.afterSharedRead(fl.id.key)
			}
			c.storeLocal(fl.fence, fl.id.key, sr.v, sr.absent, int64(len(it.Val)), ttl)
			c.finish(fl, sr.outcome)
		}
	})
	return rest
}

// loadMany runs phases lease, load and fill for the flights GetMany started and did
// not find in the shared tier, in its own goroutine (counted in c.wg), under
// loadContext.
func (c *Cache[V]) loadMany(callerCtx context.Context, pend []pending[V]) {
	defer c.wg.Done()
	ctx, cancel := c.loadContext(callerCtx)
	defer cancel()
	if !c.hasLoader() {
		for _, pd := range pend {
			c.finish(pd.fl, outcome[V]{absent: true})
		}
		return
	}

	// Phase lease, one pipelined round trip per node.
	var leases []remote.Item
	var leasing []int // index in pend of each lease item
	for i := range pend {
		pd := &pend[i]
		pd.p = plan{write: !pd.sr.failed && !c.localOnly, repair: pd.sr.corrupt}
		if pd.p.write && !pd.p.repair {
			pd.fl.setPhase(phaseLease)
			leases = append(leases, remote.Item{Key: pd.fl.id.key, Node: pd.fl.node, Token: remote.NewToken()})
			leasing = append(leasing, i)
		}
	}
	if len(leases) > 0 {
		c.shared.LeaseMany(ctx, leases, c.opts.LeaseTTL)
	}
	var held sync.WaitGroup
	won := make([]bool, len(pend)) // the load of pend[i] is this batch's
	for i := range pend {
		won[i] = true // read failed or corrupt: load without a lease
	}
	for j, it := range leases {
		i := leasing[j]
		pd := &pend[i]
		switch {
		case it.Err != nil:
			c.stats.remoteErrors.Add(1)
			c.warnNode(pd.fl.node, "tiered: shared tier lease failed; loading from source", "key", pd.fl.id.key, "err", it.Err)
			pd.p.write = false
		case it.State == remote.LeaseWon:
			pd.p.token = it.Token
		case it.State == remote.LeaseFound:
			won[i] = false
			if o, ok := c.found(pd.fl, it.Val); ok {
				c.finish(pd.fl, o)
			} else {
				won[i] = true // undecodable, and a writer is active: load, write nothing
				pd.p.write = false
			}
		default: // held by another process: wait for its fill as Get does
			won[i] = false
			held.Go(func() {
				ls := c.pollLease(ctx, pd.fl, it.Token, true)
				if ls.found {
					c.finish(pd.fl, ls.outcome)
					return
				}
				pd.fl.setPhase(phaseLoad)
				v, err := c.loadKey(ctx, pd.fl.id.key)
				c.fillOne(ctx, pd.fl, plan{token: ls.token, write: ls.write}, v, err)
			})
		}
	}
	mine := make([]*pending[V], 0, len(pend))
	for i := range pend {
		if won[i] {
			mine = append(mine, &pend[i])
		}
	}

	// Phase load: one BatchLoader call, or the Loader per key.
	if len(mine) > 0 {
		if c.opts.BatchLoader == nil {
			fls := make([]*flight[V], len(mine))
			plans := make(map[*flight[V]]plan, len(mine))
			for i, pd := range mine {
				fls[i], plans[pd.fl] = pd.fl, pd.p
			}
			c.loadConcurrently(fls, func(fl *flight[V]) {
				fl.setPhase(phaseLoad)
				v, err := c.loadKey(ctx, fl.id.key)
				c.fillOne(ctx, fl, plans[fl], v, err)
			})
		} else {
			c.loadBatchFill(ctx, mine)
		}
	}
	held.Wait()
}

// loadBatchFill loads the keys of pend with one BatchLoader call, then fills both
// tiers: the leased values in one pipelined round trip per node, undecodable bytes
// overwritten likewise.
func (c *Cache[V]) loadBatchFill(ctx context.Context, pend []*pending[V]) {
	keys := make([]string, len(pend))
	for i, pd := range pend {
		pd.fl.setPhase(phaseLoad)
		keys[i] = pd.fl.id.key
	}
	c.stats.loads.Add(uint64(len(keys)))
	m, berr := c.loadBatch(ctx, keys)

	type ready struct {
		fl *flight[V]
		f  filled[V]
		in *[]remote.Item // leased, repairs, or nil: written nowhere
		at int            // index in *in
	}
	var rs []ready
	var leased, repairs []remote.Item
	var leasedTTL, repairTTL []time.Duration
	for _, pd := range pend {
		var v V
		err := berr
		if err == nil {
			var ok bool
			if v, ok = m[pd.fl.id.key]; !ok {
				err = ErrNotFound
			}
		}
		f, ok := c.settle(ctx, pd.fl, pd.p, v, err)
		if !ok {
			continue // ended with the error
		}
		if !f.cacheable {
			// Over MaxValueSize: its lease released, nothing to fill or store; it
			// ends now, as fillOne's does, not announced behind the others' fills.
			c.finish(pd.fl, f.outcome)
			continue
		}
		r := ready{fl: pd.fl, f: f}
		if pd.p.write {
			switch {
			case pd.p.token != "":
				r.in, r.at = &leased, len(leased)
				leased = append(leased, remote.Item{Key: pd.fl.id.key, Node: pd.fl.node, Token: pd.p.token, Val: f.frame})
				leasedTTL = append(leasedTTL, f.ttl)
			case pd.p.repair:
				r.in, r.at = &repairs, len(repairs)
				repairs = append(repairs, remote.Item{Key: pd.fl.id.key, Node: pd.fl.node, Val: f.frame, Overwrite: true})
				repairTTL = append(repairTTL, f.ttl)
			}
		}
		rs = append(rs, r)
	}
	if len(leased)+len(repairs) > 0 {
		// The callers have their values now; the fills follow, as fillOne's do (and
		// as there, Close waits for them rather than cancelling them).
		for _, r := range rs {
			c.announce(r.fl, r.f.outcome)
		}
		ctx = context.WithoutCancel(ctx)
	}
	if len(leased) > 0 {
		c.shared.FillLeasedMany(ctx, leased, func(i int) time.Duration { return leasedTTL[i] })
	}
	if len(repairs) > 0 {
		c.shared.FillMany(ctx, repairs, func(i int) time.Duration { return repairTTL[i] })
	}
	for _, r := range rs {
		var ferr error
		if r.in != nil {
			ferr = (*r.in)[r.at].Err
		}
		c.store(r.fl, r.f, ferr)
	}
	for _, r := range rs {
		c.finish(r.fl, r.f.outcome)
	}
}
