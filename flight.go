package tiered

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tieredcache/tiered/internal/local"
)

// One flight per key.
//
// A key that is being read from the shared tier or loaded in this process has exactly
// one flight, which every caller that misses the key in the near-cache joins: Get,
// each key of GetMany, and refresh-ahead. The caller that starts a flight leads it
// through its phases; the others wait for its outcome, each under its own ctx:
//
//	phaseRead   reading the shared tier (inline in the leader: a shared hit costs no
//	            goroutine hand-off)
//	phaseLease  taking the key's lease in the shared tier, or waiting for its holder
//	            (another process) to fill the key
//	phaseLoad   calling the Loader (or the BatchLoader, for many flights at once)
//	phaseFill   the waiters are woken with the loaded value (announce), then the
//	            flight writes the shared tier and the near-cache
//	phaseDone   the flight has left the table
//
// From phaseLease on, the flight runs in its own goroutine under loadContext, so that
// no caller's cancellation cancels it for the others.
//
// A flight is named by its key and by the generation of the key's fence (stripe and
// node) when it began. A caller that misses after an invalidation of the key therefore
// never joins a flight that began before it:
//
//  1. Get A starts a flight and reads the old value from Redis
//  2. Delete(key) removes it from Redis and bumps the key's generation
//  3. Get B misses locally; were flights named by key alone, B would join A's
//     and return the value deleted in 2
//
// With the generation in the name, B starts its own flight, and A's near-cache store
// is refused because A's fence is older than step 2 (invariant C2, fill fencing).
//
// A flight leaves the table after its value is in the near-cache (served at once from
// its stage: internal/local/stage.go), so a caller arriving at any moment either joins
// it, or hits the near-cache, or (if the store was refused, or ristretto later dropped
// it) starts a new flight that finds the value in the shared tier. A flight that
// loaded wakes its waiters before its fills (announce): the callers do not wait for
// the fill's round trip, and a caller that misses the key meanwhile is served the
// same outcome at once, as the near-cache would serve it a moment later (counted as
// a near hit); one that misses after an invalidation of the key finds no such
// flight (its generation differs), so the value served early is one a caller that
// joined before the fill would have had anyway. Other flights wake their waiters as they leave. The table
// is the only place a
// flight is found: there is no second map of loads in progress, so a caller can never
// arrive "between" a read and the load it ended in.

type phase int32

const (
	phaseRead phase = iota
	phaseLease
	phaseLoad
	phaseFill
	phaseDone
)

// flightID names a flight: its key and the fence generation it began under.
type flightID struct {
	key string
	gen uint64
}

// outcome is what a flight ends with, shared by every caller that joined it.
type outcome[V any] struct {
	v      V
	absent bool
	err    error
	tier   Tier // what answered: set by finish, from the phase the flight ended in
}

// errRetry ends a flight that has no value for its waiters (a refresh that found
// another process refreshing): they start a flight of their own.
var errRetry = errors.New("tiered: flight ended without a value; retry")

type flight[V any] struct {
	id    flightID // its key and generation
	h     uint64   // the key's hash: its shard of the table
	node  int
	fence local.Fence
	// Set by the leader before the flight's load: a per-call loader and TTL
	// (GetOrLoad), or nil and 0 for the Cache's.
	load  Loader[V]
	ttl   time.Duration
	phase atomic.Int32
	// Under the shard's mu: out and ended are set together, by finish or by Close's
	// abortFlights (out is read once ended is seen, or done closed); done is made by
	// the first caller that waits before then (most flights end with nobody waiting:
	// a shared hit, or a GetMany key nobody else asked for) and closed when the
	// flight ends.
	out   outcome[V]
	ended bool
	done  chan struct{}
}

func (fl *flight[V]) setPhase(p phase) { fl.phase.Store(int32(p)) }

// flightShards spreads the table over locks, so that misses of different keys on
// different cores do not contend on one mutex.
const flightShards = 64

// flights is the table of this process's flights.
type flights[V any] struct {
	shards [flightShards]struct {
		mu sync.Mutex // protects m, and the ended and done fields of its flights
		m  map[flightID]*flight[V]
	}
}

// begin returns key's flight for its current fence on node (its owner), starting one if there is none
// (in spare, if not nil: GetMany allocates its flights together); lead reports that
// the caller started it and must lead it to finish, ready that it has been announced:
// its outcome (fl.out) is a value on its way into the near-cache, which the caller
// serves as a near hit, as it would a moment later.
func (c *Cache[V]) begin(key string, h uint64, node int, spare *flight[V]) (fl *flight[V], lead, ready bool) {
	f := c.local.Fence(h, node)
	id := flightID{key: key, gen: f.Generation()}
	sh := &c.flights.shards[h%flightShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if fl, ok := sh.m[id]; ok {
		return fl, false, fl.ended
	}
	if c.closed.Load() {
		// A call that entered before Close began, beginning its flight after
		// abortFlights passed this shard (or while it runs): the flight is born
		// ended, and its caller waits for nothing.
		fl = &flight[V]{id: id, h: h, node: node, fence: f, ended: true, out: outcome[V]{err: ErrClosed}}
		return fl, false, false
	}
	if sh.m == nil {
		sh.m = make(map[flightID]*flight[V])
	}
	if fl = spare; fl == nil {
		fl = new(flight[V])
	}
	fl.id, fl.h, fl.node, fl.fence = id, h, node, f
	sh.m[id] = fl
	return fl, true, false
}

// finish ends fl with o: it leaves the table, then its waiters are woken (unless
// announce has woken them already, with the same outcome).
func (c *Cache[V]) finish(fl *flight[V], o outcome[V]) {
	c.end(fl, o, true)
}

// announce wakes fl's waiters with o before the flight's last steps (its fills):
// fl stays in the table until finish, so that a caller that misses the key meanwhile
// joins it and returns o at once, as it would have had it joined a moment earlier.
func (c *Cache[V]) announce(fl *flight[V], o outcome[V]) {
	c.end(fl, o, false)
}

func (c *Cache[V]) end(fl *flight[V], o outcome[V], leave bool) {
	switch {
	case phase(fl.phase.Load()) >= phaseLoad:
		o.tier = TierLoader
	case !c.localOnly:
		o.tier = TierShared // read, or filled by another process during phaseLease
	}
	if leave {
		fl.setPhase(phaseDone)
	}
	sh := &c.flights.shards[fl.h%flightShards]
	sh.mu.Lock()
	if leave && sh.m[fl.id] == fl {
		delete(sh.m, fl.id)
	}
	if fl.ended { // announced, or by Close (abortFlights): its waiters have had their outcome
		sh.mu.Unlock()
		return
	}
	fl.out = o
	fl.ended = true
	done := fl.done
	sh.mu.Unlock()
	if done != nil {
		close(done)
	}
}

// abortFlights ends every flight in the table with ErrClosed (Close, once no call
// can begin another: see begin): their waiters return at once, while their leaders
// and loads run on to their end, which Close waits for, and find them ended.
//
// So a waiter waits on its flight and its own ctx only: a select on the Cache's
// closing channel too would make every waiting call of the Cache lock that one
// channel, twice.
func (c *Cache[V]) abortFlights() {
	for i := range c.flights.shards {
		sh := &c.flights.shards[i]
		sh.mu.Lock()
		for id, fl := range sh.m {
			delete(sh.m, id)
			if fl.ended {
				continue // announced: its waiters have their outcome
			}
			fl.out = outcome[V]{err: ErrClosed}
			fl.ended = true
			if fl.done != nil {
				close(fl.done)
			}
		}
		sh.mu.Unlock()
	}
}

// wait returns when fl has ended (nil: its outcome is fl.out, ErrClosed if Close
// ended it), or ctx's error, whichever comes first.
func (c *Cache[V]) wait(ctx context.Context, fl *flight[V]) error {
	if done := c.doneOf(fl); done != nil {
		return park(ctx, done)
	}
	return nil
}

// doneOf returns the channel that fl's end closes, or nil if fl has ended.
func (c *Cache[V]) doneOf(fl *flight[V]) chan struct{} {
	sh := &c.flights.shards[fl.h%flightShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if fl.ended {
		return nil
	}
	if fl.done == nil {
		fl.done = make(chan struct{})
	}
	return fl.done
}

// park waits until done is closed (nil) or ctx ends (its error). It is apart from
// wait, and not generic, to keep the frames of a waiting caller small (see get).
func park(ctx context.Context, done chan struct{}) error {
	cancel := ctx.Done()
	if cancel == nil {
		<-done
		return nil
	}
	select {
	case <-done:
		return nil
	case <-cancel:
		return ctx.Err()
	}
}

func result[V any](o outcome[V]) (V, error) {
	if o.err != nil {
		var zero V
		return zero, o.err
	}
	if o.absent {
		var zero V
		return zero, ErrNotFound
	}
	return o.v, nil
}
