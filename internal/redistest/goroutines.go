package redistest

import (
	"bytes"
	"fmt"
	"runtime"
	"time"
)

// WaitGoroutinesGone polls until no goroutine's stack mentions fn, and returns how long
// that took, or an error with the stacks if some still do after within. Some
// libraries' goroutines outlive the Close that ends their work (go-redis's dial
// probes, toxiproxy's links, which end a moment after their proxy stops): goleak must
// not see them.
func WaitGoroutinesGone(fn string, within time.Duration) (time.Duration, error) {
	start := time.Now()
	deadline := start.Add(within)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		for n == len(buf) {
			buf = make([]byte, 2*len(buf))
			n = runtime.Stack(buf, true)
		}
		if !bytes.Contains(buf[:n], []byte(fn)) {
			return time.Since(start), nil
		}
		if time.Now().After(deadline) {
			return time.Since(start), fmt.Errorf("goroutines in %s still running after %v:\n%s", fn, within, buf[:n])
		}
		<-tick.C
	}
}
