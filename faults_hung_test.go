package tiered

// Fault: a node hangs (SIGSTOP): it accepts connections and never answers. C7
// (faults: a hung node never fails a Get that has a Loader; a Get waits on it at most
// the per-call Timeout, and once its circuit breaker opens not at all). The latencies
// themselves are measured by BenchmarkHungNodeGetLatency (faults_hung_bench_test.go).

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tieredcache/tiered/internal/redistest"
)

// The phases a Get of hungNode is recorded under, by when it started.
const (
	phaseNoFault      = "no fault"
	phaseClosed       = "hung, breaker closed"
	phaseOpen         = "hung, breaker open"
	phaseResumed      = "after SIGCONT"
	phaseHealthy      = "healthy nodes, " // prefix: Gets of the other nodes' keys
	hungGoroutines    = 16                // Gets of the hung node's keys
	healthyGoroutines = 4                 // Gets of the other nodes' keys
)

// hungNode is a Cache on three nodes whose node 0 is hung in rounds (round), under
// Gets of its keys and of the other nodes' keys from many goroutines at once.
type hungNode struct {
	srv           []*redistest.Server
	c             *Cache[string]
	timeout       time.Duration
	hung, healthy []string
	lat           *latencies
	errs          sync.Map // key -> "value, error" of a Get that failed or was wrong
}

func newHungNode(tb testing.TB, timeout time.Duration) *hungNode {
	tb.Helper()
	srv := redistest.Start(tb, 3)
	src := newSource()
	o := ringOpts[string](tb, srv)
	o.Loader, o.Timeout, o.LocalTTL = src, timeout, 10*time.Millisecond // few near hits: exercise the shared tier
	c := newCache(tb, o)
	h := &hungNode{srv: srv, c: c, timeout: timeout, hung: ownedKeys(c, "hung", 50, 0), healthy: ownedKeys(c, "ok", 50, 1, 2), lat: newLatencies()}
	ctx := context.Background()
	for _, k := range append(slices.Clone(h.hung), h.healthy...) {
		src.put(k, "v")
		if _, err := c.Get(ctx, k); err != nil {
			tb.Fatal(err)
		}
	}
	return h
}

// run has hungGoroutines goroutines Get the hung node's keys and healthyGoroutines
// the others' until until holds, recording each Get's latency under phase() (with
// phaseHealthy before it for the other nodes' keys) as it was when the Get started.
func (h *hungNode) run(phase func() string, until func() bool) {
	var wg sync.WaitGroup
	for g := range hungGoroutines + healthyGoroutines {
		keys, prefix := h.hung, ""
		if g >= hungGoroutines {
			keys, prefix = h.healthy, phaseHealthy
		}
		wg.Go(func() {
			for i := g; !until(); i++ {
				k := keys[i%len(keys)]
				ph := prefix + phase()
				start := time.Now()
				v, err := h.c.Get(context.Background(), k)
				h.lat.add(ph, time.Since(start))
				if err != nil || v != "v" {
					h.errs.Store(k, fmt.Sprintf("%q, %v", v, err))
				}
			}
		})
	}
	wg.Wait()
}

// baseline runs the Gets for d with no node hung.
func (h *hungNode) baseline(d time.Duration) {
	end := time.Now().Add(d)
	h.run(func() string { return phaseNoFault }, func() bool { return time.Now().After(end) })
}

// round SIGSTOPs node 0, runs the Gets until hold after its breaker opened, SIGCONTs
// it and runs the Gets until the node is read again. It returns how long after the
// SIGSTOP the breaker opened.
func (h *hungNode) round(tb testing.TB, hold time.Duration) time.Duration {
	tb.Helper()
	c := h.c
	opens := c.Stats().BreakerOpens
	if err := h.srv[0].Pause(); err != nil {
		tb.Fatal(err)
	}
	paused := time.Now()
	var openedAt atomic.Pointer[time.Time]
	phase := func() string {
		if openedAt.Load() == nil && c.Stats().BreakerOpens > opens {
			now := time.Now()
			openedAt.CompareAndSwap(nil, &now)
		}
		if openedAt.Load() == nil {
			return phaseClosed
		}
		return phaseOpen
	}
	h.run(phase, func() bool {
		at := openedAt.Load()
		return time.Since(paused) > waitForWithin || (at != nil && time.Since(*at) > hold)
	})
	if err := h.srv[0].Resume(); err != nil {
		tb.Fatal(err)
	}
	at := openedAt.Load()
	if at == nil {
		tb.Fatalf("the breaker of the hung node never opened in %v", waitForWithin)
	}
	resumed := time.Now()
	before := c.Stats().RemoteHits
	served := func() bool { return c.Stats().RemoteHits > before+100 && c.local.Up(0) }
	h.run(func() string { return phaseResumed }, func() bool { return time.Since(resumed) > waitForWithin || served() })
	if !served() {
		tb.Fatalf("the node was not read again within %v of SIGCONT", waitForWithin)
	}
	return at.Sub(paused)
}

// TestHungNodeGetLatency: one node of three SIGSTOPped under concurrent Gets, three
// rounds. Every Get is served (the Loader answers); each round the node's breaker
// opens, after which its keys' Gets no longer wait on it; no Get waits on it much more
// than once; after SIGCONT the node is read again.
func TestHungNodeGetLatency(t *testing.T) {
	const (
		timeout = 100 * time.Millisecond
		// hold keeps the node hung after its breaker opened, past BreakerOpenFor (so a
		// half-open probe times out too) and past bound (so a Get stuck until SIGCONT
		// shows).
		hold = time.Second
		// A Get of the hung node's keys makes one call to it, bounded by Timeout: it
		// joins a read in flight rather than making another, and the load after a
		// failed read neither reads the node again nor takes its lease. Twice that and
		// a margin for -race on a loaded 2-core machine, where a goroutine can wait
		// hundreds of milliseconds for a core.
		bound = 2*timeout + 500*time.Millisecond
	)
	h := newHungNode(t, timeout)
	var openedAfter []time.Duration
	for range 3 {
		openedAfter = append(openedAfter, h.round(t, hold).Round(time.Millisecond))
	}

	h.errs.Range(func(k, v any) bool {
		t.Errorf("Get(%q) = %v", k, v)
		return true
	})
	for _, ph := range []string{phaseClosed, phaseOpen, phaseHealthy + phaseClosed, phaseHealthy + phaseOpen, phaseResumed} {
		t.Log(h.lat.summary(ph))
	}
	t.Logf("breaker opened %v after SIGSTOP in each round (Timeout %v)", openedAfter, timeout)

	for _, ph := range []string{phaseClosed, phaseOpen} {
		if worst := pct(h.lat.get(ph), 100); worst > bound {
			t.Errorf("a Get of the hung node's keys (%s) took %v, more than two Timeouts and a margin (%v): it waited on the node more than once",
				ph, worst, bound)
		}
	}
	// Had the breaker not failed the calls at once, each of the goroutines could have
	// finished at most one Get per Timeout while it was open.
	if n, most := len(h.lat.get(phaseOpen)), 3*hungGoroutines*int(hold/timeout); n <= most {
		t.Errorf("%d Gets of the hung node's keys in 3 x %v with its breaker open: no more than if each had waited a Timeout (%d)", n, hold, most)
	}
}
