package benchmarks

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// TestFaultTally checks how the fault workload counts reads: stale past 100 ms and
// past 1 s, the oldest value, reads during the fault, and the time from the fault's
// end to the last read stale past 100 ms, summed over goroutines and episodes.
func TestFaultTally(t *testing.T) {
	const ms = time.Millisecond
	c := NewChecker([]uint64{0, 0})
	c.Acked(0, 1, 1000*ms)
	c.Acked(1, 1, 2000*ms)

	a, b := newFaultTally(), newFaultTally()
	judge := func(tl *faultTally, key int, ver uint64, at time.Duration, inFault bool) {
		age, superseded := c.Age(key, ver, at)
		tl.judge(at, age, superseded, inFault)
	}
	judge(&a, 0, 0, 900*ms, false)  // before the write: fresh
	judge(&a, 0, 0, 1050*ms, false) // 50 ms behind: within 100 ms
	judge(&a, 0, 0, 1500*ms, true)  // 500 ms behind
	judge(&b, 0, 0, 2500*ms, true)  // 1.5 s behind
	judge(&b, 1, 1, 2500*ms, true)  // fresh
	judge(&b, 1, 0, 3600*ms, false) // 1.6 s behind, after the fault
	b.fail(errors.New("boom"))
	a.merge(&b)
	if a.reads != 6 || a.faultReads != 3 || a.errs != 1 || a.firstErr == nil {
		t.Errorf("reads %d, during the fault %d, errors %d (%v); want 6, 3, 1", a.reads, a.faultReads, a.errs, a.firstErr)
	}
	if a.stale != [2]uint64{3, 2} {
		t.Errorf("stale past 100 ms and 1 s: %v, want [3 2]", a.stale)
	}
	if a.maxAge != 1600*ms || a.lastStale != 3600*ms {
		t.Errorf("max age %v, last stale read at %v; want 1.6s, 3.6s", a.maxAge, a.lastStale)
	}

	var s faultSummary
	s.add(episodeResult{faultTally: a, writes: 10, faultEnd: 3000 * ms, end: 6000 * ms})
	quiet := newFaultTally()
	quiet.reads = 5
	s.add(episodeResult{faultTally: quiet, writes: 3, writeErrs: 2, faultEnd: 3100 * ms, end: 5900 * ms})
	if !s.anyStale || s.lastStale != 600*ms || s.after != 2800*ms {
		t.Errorf("summary: any stale %v, last stale %v after the end, recovery observed %v; want true, 600ms, 2.8s", s.anyStale, s.lastStale, s.after)
	}
	if s.reads != 11 || s.writes != 13 || s.writeErrs != 2 || s.stale[0] != 3 {
		t.Errorf("summary: reads %d, writes %d, write errors %d, stale %d; want 11, 13, 2, 3", s.reads, s.writes, s.writeErrs, s.stale[0])
	}

	// An episode whose stale reads all came before the fault's end.
	early := newFaultTally()
	judge(&early, 0, 0, 1500*ms, true)
	var e faultSummary
	e.add(episodeResult{faultTally: early, faultEnd: 3000 * ms, end: 6000 * ms})
	if !e.anyStale || e.lastStale != -1500*ms {
		t.Errorf("stale only during the fault: any %v, last %v; want true, -1.5s", e.anyStale, e.lastStale)
	}
	var none faultSummary
	none.add(episodeResult{faultTally: quiet, faultEnd: 3000 * ms, end: 6000 * ms})
	if none.anyStale {
		t.Error("an episode without stale reads has a last stale read")
	}
}

// TestSchedule checks the fault driver's order and timing on short durations: begin
// after the steady period, a repeat every `every` strictly inside the fault, end after
// hold.
func TestSchedule(t *testing.T) {
	const ms = time.Millisecond
	t0 := time.Now()
	clock := func() time.Duration { return time.Since(t0) }
	var mu sync.Mutex
	var events []string
	var at []time.Duration
	log := func(ev string) func(*faultEnv) error {
		return func(*faultEnv) error {
			mu.Lock()
			defer mu.Unlock()
			events = append(events, ev)
			at = append(at, clock())
			return nil
		}
	}
	f := fault{name: "test", begin: log("begin"), every: 10 * ms, repeat: log("repeat"), end: log("end")}
	var began, ended time.Duration
	s := schedule{steady: 20 * ms, hold: 50 * ms, recovery: 20 * ms}
	if err := s.run(context.Background(), f, nil, clock, func(d time.Duration) { began = d }, func(d time.Duration) { ended = d }); err != nil {
		t.Fatal(err)
	}
	done := clock()
	want := []string{"begin", "repeat", "repeat", "repeat", "repeat", "end"}
	if len(events) != len(want) {
		t.Fatalf("events %v, want %v", events, want)
	}
	for i := range want {
		if events[i] != want[i] {
			t.Fatalf("events %v, want %v", events, want)
		}
	}
	for i := 1; i < len(at)-1; i++ {
		if at[i] < began+time.Duration(i)*10*ms {
			t.Errorf("repeat %d at %v, before %v", i, at[i], began+time.Duration(i)*10*ms)
		}
	}
	if began < 20*ms || at[len(at)-1] < began+50*ms || ended < at[len(at)-1] || done < ended+20*ms {
		t.Errorf("began %v, end called at %v, ended %v, returned at %v; want >= 20ms, began+50ms, end, ended+20ms", began, at[len(at)-1], ended, done)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.run(ctx, f, nil, clock, func(time.Duration) {}, func(time.Duration) {}); !errors.Is(err, context.Canceled) {
		t.Errorf("run on a cancelled context: %v", err)
	}
}
