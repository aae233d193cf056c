package remote

import "sync"

// Warm goroutines for a batch's node round trips.
//
// A batch (GetMany's read, lease and fill phases) runs one node's round trip in its
// caller's goroutine and each other node's in a goroutine of its own. A new goroutine
// starts with a small stack, which go-redis's read path grows (runtime.newstack,
// copying it) on every batch: 6% of BenchmarkGetMany100's CPU. So those goroutines
// are kept: one that has run a round trip parks, its stack grown, and runs the next
// batch's, up to maxIdleWorkers parked per Redis; Wait stops them. The garbage
// collector may still shrink a parked one's stack, so a round trip grows it again
// now and then, not every time.

// maxIdleWorkers bounds the goroutines parked per Redis: a few batches' worth of
// nodes. Beyond it a worker that finishes exits, as a plain goroutine would.
const maxIdleWorkers = 16

type workers struct {
	mu      sync.Mutex // protects idle and stopped
	idle    []chan func()
	stopped bool
	wg      sync.WaitGroup // every worker goroutine
}

// run runs f in a parked worker, or in a new one if none is parked.
func (w *workers) run(f func()) {
	w.mu.Lock()
	if n := len(w.idle); n > 0 {
		ch := w.idle[n-1]
		w.idle = w.idle[:n-1]
		w.mu.Unlock()
		ch <- f // buffered: never blocks
		return
	}
	w.wg.Add(1)
	w.mu.Unlock()
	go w.loop(f)
}

// loop runs f, then parks for the next task, until the pool is full or stopped.
func (w *workers) loop(f func()) {
	defer w.wg.Done()
	ch := make(chan func(), 1)
	for f != nil {
		f()
		w.mu.Lock()
		if w.stopped || len(w.idle) >= maxIdleWorkers {
			w.mu.Unlock()
			return
		}
		w.idle = append(w.idle, ch)
		w.mu.Unlock()
		f = <-ch // nil: stop
	}
}

// stop ends the parked workers and waits for every worker to end; a worker busy
// with a task ends once it is done. The pool stays usable: a later run starts a
// worker that ends after its task.
func (w *workers) stop() {
	w.mu.Lock()
	w.stopped = true
	for _, ch := range w.idle {
		ch <- nil
	}
	w.idle = nil
	w.mu.Unlock()
	w.wg.Wait()
}
