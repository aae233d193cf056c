package remote

import (
	"runtime"
	"sync"
	"testing"
	"time"
)

// TestWorkers: a worker that has run a task parks and runs the next one (no new
// goroutine), at most maxIdleWorkers park, stop ends them (TestMain's goleak checks
// that none is left), and the pool still runs tasks after stop.
func TestWorkers(t *testing.T) {
	var w workers
	idle := func() int {
		w.mu.Lock()
		defer w.mu.Unlock()
		return len(w.idle)
	}
	done := make(chan struct{})
	w.run(func() { close(done) })
	<-done
	waitFor(t, func() bool { return idle() == 1 })
	ran := make(chan struct{})
	w.run(func() { close(ran) })
	<-ran
	waitFor(t, func() bool { return idle() == 1 }) // the same worker, parked again

	// Many at once: each finds no parked worker until the first ones finish.
	var wg sync.WaitGroup
	release := make(chan struct{})
	for range 3 * maxIdleWorkers {
		wg.Add(1)
		w.run(func() {
			defer wg.Done()
			<-release
		})
	}
	close(release)
	wg.Wait()
	waitFor(t, func() bool { return idle() == maxIdleWorkers })

	w.stop()
	if n := idle(); n != 0 {
		t.Fatalf("%d workers parked after stop", n)
	}
	after := make(chan struct{})
	w.run(func() { close(after) })
	<-after
	w.stop() // waits for that worker, which does not park
	if n := idle(); n != 0 {
		t.Fatalf("%d workers parked after a stopped pool's task", n)
	}
}

// waitFor polls cond until it holds, for at most 10 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10 s")
		}
		runtime.Gosched()
	}
}
