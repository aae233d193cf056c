package tiered

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tieredcache/tiered/internal/redistest"
)

// latencies collects per-call durations by phase.
type latencies struct {
	mu sync.Mutex
	d  map[string][]time.Duration
}

func (l *latencies) add(phase string, d time.Duration) {
	l.mu.Lock()
	l.d[phase] = append(l.d[phase], d)
	l.mu.Unlock()
}

// pct returns the p-th percentile (nearest rank) of ds.
func pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(ds))
	i := int(p/100*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func (l *latencies) summary(phase string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	ds := l.d[phase]
	return fmt.Sprintf("%s: n=%d p50=%v p99=%v max=%v", phase, len(ds),
		pct(ds, 50).Round(10*time.Microsecond), pct(ds, 99).Round(10*time.Microsecond), pct(ds, 100).Round(10*time.Microsecond))
}

// TestHungNodeGetLatency: one node of three SIGSTOPped under concurrent Gets. Every
// Get is served (the Loader answers); a Get of the hung node's keys costs at most
// the per-call Timeout until the node's circuit breaker opens, then fails fast to
// the Loader; keys of the other nodes are not slowed; after SIGCONT the node is
// read again. Three rounds, 16 goroutines on the hung node's keys, 4 on the others'.
func TestHungNodeGetLatency(t *testing.T) {
	const timeout = 100 * time.Millisecond
	margin := 10 * time.Millisecond // the goal: p99 <= Timeout + 10 ms
	if raceEnabled {
		margin = 60 * time.Millisecond
	}
	srv := redistest.Start(t, 3)
	src := newSource()
	o := ringOpts[string](t, srv)
	o.Loader, o.Timeout, o.LocalTTL = src, timeout, 10*time.Millisecond // few near hits: measure the shared tier
	c := newCache(t, o)
	hung := c4Keys(c, "hung", 50, 0)
	healthy := c4Keys(c, "ok", 50, 1, 2)
	ctx := context.Background()
	for _, k := range append(slices.Clone(hung), healthy...) {
		src.put(k, "v")
		if _, err := c.Get(ctx, k); err != nil {
			t.Fatal(err)
		}
	}

	lat := &latencies{d: make(map[string][]time.Duration)}
	var errs sync.Map
	run := func(phase func() string, until func() bool) {
		var wg sync.WaitGroup
		for g := range 20 {
			keys, prefix := hung, ""
			if g%5 == 4 {
				keys, prefix = healthy, "healthy nodes, "
			}
			wg.Go(func() {
				for i := g; !until(); i++ {
					k := keys[i%len(keys)]
					ph := prefix + phase()
					start := time.Now()
					v, err := c.Get(ctx, k)
					d := time.Since(start)
					lat.add(ph, d)
					if d >= timeout/2 {
						lat.add("waited on the node ("+prefix+"any phase)", d)
					}
					if err != nil || v != "v" {
						errs.Store(k, fmt.Sprintf("%q, %v", v, err))
					}
				}
			})
		}
		wg.Wait()
	}

	// Rounds of: SIGSTOP, Gets until a while after the breaker opened, SIGCONT, Gets
	// until the node serves again; each round's first wave of Gets (before the
	// breaker opens) is the sample the Timeout bound is about.
	var openedAfter []time.Duration
	for round := range 3 {
		opens := c.Stats().BreakerOpens
		if err := srv[0].Pause(); err != nil {
			t.Fatal(err)
		}
		paused := time.Now()
		var openedAt time.Time
		var mu sync.Mutex
		phase := func() string {
			mu.Lock()
			defer mu.Unlock()
			if openedAt.IsZero() && c.Stats().BreakerOpens > opens {
				openedAt = time.Now()
			}
			if openedAt.IsZero() {
				return "hung, breaker closed"
			}
			return "hung, breaker open"
		}
		run(phase, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return time.Since(paused) > 5*time.Second || (!openedAt.IsZero() && time.Since(openedAt) > 500*time.Millisecond)
		})
		if err := srv[0].Resume(); err != nil {
			t.Fatal(err)
		}
		if openedAt.IsZero() {
			t.Fatalf("round %d: the breaker never opened", round)
		}
		openedAfter = append(openedAfter, openedAt.Sub(paused).Round(time.Millisecond))
		resumed := time.Now()
		before := c.Stats().RemoteHits
		run(func() string { return "after SIGCONT" }, func() bool {
			return time.Since(resumed) > 5*time.Second || (c.Stats().RemoteHits > before+100 && c.local.Up(0))
		})
		if c.Stats().RemoteHits <= before+100 || !c.local.Up(0) {
			t.Fatalf("round %d: the node was not read again within 5 s of SIGCONT", round)
		}
	}

	errs.Range(func(k, v any) bool {
		t.Errorf("Get(%q) = %v", k, v)
		return true
	})
	for _, ph := range []string{"hung, breaker closed", "hung, breaker open", "healthy nodes, hung, breaker closed",
		"healthy nodes, hung, breaker open", "after SIGCONT", "waited on the node (any phase)", "waited on the node (healthy nodes, any phase)"} {
		t.Log(lat.summary(ph))
	}
	t.Logf("breaker opened %v after SIGSTOP in each round (Timeout %v)", openedAfter, timeout)
	lat.mu.Lock()
	closed, open, waited := lat.d["hung, breaker closed"], lat.d["hung, breaker open"], lat.d["waited on the node (any phase)"]
	lat.mu.Unlock()
	// Near-cache hits dilute the phases' percentiles; the calls that waited on the
	// node (at least Timeout/2) are the ones the bound is about.
	for name, ds := range map[string][]time.Duration{"before the breaker opened": closed, "that waited on the node": waited} {
		if p := pct(ds, 99); p > timeout+margin {
			t.Errorf("p99 of Gets of the hung node %s = %v, want <= Timeout + %v", name, p, margin)
		}
	}
	if p := pct(open, 50); p > timeout/2 {
		t.Errorf("p50 of Gets of the hung node with the breaker open = %v: not failing fast", p)
	}
}
