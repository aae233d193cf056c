// Package warm runs short tasks on goroutines that are kept between tasks.
//
// A new goroutine starts with a small stack, which a task that goes through go-redis's
// read path grows (runtime.newstack, copying it) every time: 6% of
// BenchmarkGetMany100's CPU, where each batch ran its node round trips in new
// goroutines, and where each pipeline that a burst of callers queued ran in a new
// goroutine. A Pool keeps them instead: a goroutine that has run a task parks, its
// stack grown, and runs the next one, up to maxIdle parked per Pool; Stop ends them.
// The garbage collector may still shrink a parked one's stack, so a task grows it
// again now and then, not every time.
package warm

import "sync"

// maxIdle bounds the goroutines parked per Pool. Beyond it a goroutine that
// finishes its task exits, as a plain one would.
const maxIdle = 16

// Pool is a set of parked goroutines. The zero value is ready to use.
type Pool struct {
	mu      sync.Mutex // protects idle and stopped
	idle    []chan func()
	stopped bool
	wg      sync.WaitGroup // every worker goroutine
}

// Go runs f in a parked goroutine, or in a new one if none is parked. A nil Pool
// runs f in a new goroutine, always.
func (w *Pool) Go(f func()) {
	if w == nil {
		go f()
		return
	}
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
func (w *Pool) loop(f func()) {
	defer w.wg.Done()
	ch := make(chan func(), 1)
	for f != nil {
		f()
		w.mu.Lock()
		if w.stopped || len(w.idle) >= maxIdle {
			w.mu.Unlock()
			return
		}
		w.idle = append(w.idle, ch)
		w.mu.Unlock()
		f = <-ch // nil: stop
	}
}

// Stop ends the parked goroutines and waits for every goroutine of the Pool to end;
// one busy with a task ends once it is done. The Pool stays usable: a later Go starts
// a goroutine that ends after its task.
func (w *Pool) Stop() {
	w.mu.Lock()
	w.stopped = true
	for _, ch := range w.idle {
		ch <- nil
	}
	w.idle = nil
	w.mu.Unlock()
	w.wg.Wait()
}
