package warm

import (
	"runtime"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestPool: a goroutine that has run a task parks and runs the next one (no new
// goroutine), at most maxIdle park, Stop ends them (TestMain's goleak checks that
// none is left), and the Pool still runs tasks after Stop.
func TestPool(t *testing.T) {
	var w Pool
	idle := func() int {
		w.mu.Lock()
		defer w.mu.Unlock()
		return len(w.idle)
	}
	done := make(chan struct{})
	w.Go(func() { close(done) })
	<-done
	waitFor(t, func() bool { return idle() == 1 })
	ran := make(chan struct{})
	w.Go(func() { close(ran) })
	<-ran
	waitFor(t, func() bool { return idle() == 1 }) // the same worker, parked again

	// Many at once: each finds no parked worker until the first ones finish.
	var wg sync.WaitGroup
	release := make(chan struct{})
	for range 3 * maxIdle {
		wg.Add(1)
		w.Go(func() {
			defer wg.Done()
			<-release
		})
	}
	close(release)
	wg.Wait()
	waitFor(t, func() bool { return idle() == maxIdle })

	w.Stop()
	if n := idle(); n != 0 {
		t.Fatalf("%d workers parked after stop", n)
	}
	after := make(chan struct{})
	w.Go(func() { close(after) })
	<-after
	w.Stop() // waits for that worker, which does not park
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
