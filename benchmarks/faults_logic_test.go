package benchmarks

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
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

// TestLinkProxy checks the proxies the fault workload puts between the reader and the
// nodes, in front of an echo server: latency delays both ways and switching it off
// keeps the connection; a black hole keeps the connection open and silent; cut closes
// it (resets it, with a reset_peer toxic) and serves new connections on the same
// address.
func TestLinkProxy(t *testing.T) {
	echo := startEcho(t)
	const lat = 40 * time.Millisecond
	for _, rst := range []bool{false, true} {
		toxics := []toxic{{"timeout", `{"timeout":0}`}, {"latency", `{"latency":40}`}}
		if rst {
			toxics = append(toxics, toxic{"reset_peer", `{"timeout":0}`})
		}
		l, err := newLinkProxy(toxiproxyServer(), "test", echo, toxics...)
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr()
		c := dialEcho(t, addr)
		if d, err := roundTrip(c, time.Second); err != nil || d >= lat {
			t.Fatalf("through the proxy: round trip %v, %v", d, err)
		}

		if err := l.activate("latency"); err != nil {
			t.Fatal(err)
		}
		if d, err := roundTrip(c, time.Second); err != nil || d < 2*lat {
			t.Errorf("with %v of latency each way: round trip %v, %v", lat, d, err)
		}
		if err := l.deactivate("latency"); err != nil {
			t.Fatal(err)
		}
		if d, err := roundTrip(c, time.Second); err != nil || d >= lat {
			t.Errorf("after the latency was switched off: round trip %v, %v", d, err)
		}

		if err := l.activate("timeout"); err != nil {
			t.Fatal(err)
		}
		var ne net.Error
		if _, err := roundTrip(c, 100*time.Millisecond); !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("in the black hole: %v, want a timeout", err)
		}
		if err := l.cut(); err != nil {
			t.Fatal(err)
		}
		if l.Addr() != addr {
			t.Errorf("the proxy moved from %s to %s", addr, l.Addr())
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
		switch {
		case rst && !errors.Is(err, syscall.ECONNRESET):
			t.Errorf("a cut connection read %v, want a reset", err)
		case !rst && !errors.Is(err, io.EOF):
			t.Errorf("a cut connection read %v, want EOF", err)
		}
		c.Close()
		c = dialEcho(t, addr)
		if _, err := roundTrip(c, time.Second); err != nil {
			t.Errorf("a new connection after the cut: %v", err)
		}
		c.Close()
		l.stop()
	}
	if err := waitGoroutinesGone("github.com/Shopify/toxiproxy", 10*time.Second); err != nil {
		t.Error(err)
	}
}

// TestLinkProxyWriterGone checks that a link whose writer has gone while data kept
// coming (a client that closed its connection in the middle of a stream) does not
// keep toxiproxy's goroutines running after the proxy stops: the guard's job.
func TestLinkProxyWriterGone(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() { // a server that streams to every client until told to stop
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				chunk := make([]byte, 4096)
				for {
					select {
					case <-stop:
						return
					default:
					}
					_ = c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
					if _, err := c.Write(chunk); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
						return
					}
				}
			})
		}
	})
	defer func() { close(stop); ln.Close(); wg.Wait() }()

	l, err := newLinkProxy(toxiproxyServer(), "gone", ln.Addr().String(), toxic{"reset_peer", `{"timeout":0}`})
	if err != nil {
		t.Fatal(err)
	}
	l.guard = 100 * time.Millisecond
	if err := l.cut(); err != nil { // the live proxy's guards get the short patience
		t.Fatal(err)
	}
	for range 5 {
		c := dialEcho(t, l.Addr())
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, make([]byte, 64<<10)); err != nil {
			t.Fatal(err)
		}
		c.Close() // with the stream still coming
		if err := l.cut(); err != nil {
			t.Fatal(err)
		}
	}
	l.stop()
	if err := waitGoroutinesGone("github.com/Shopify/toxiproxy", 10*time.Second); err != nil {
		t.Error(err)
	}
}

// startEcho starts a TCP echo server on a loopback port, stopped when t ends.
func startEcho(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { _, _ = io.Copy(c, c) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

func dialEcho(t *testing.T, addr string) net.Conn {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip writes a byte and waits up to within for its echo.
func roundTrip(c net.Conn, within time.Duration) (time.Duration, error) {
	start := time.Now()
	if err := c.SetDeadline(start.Add(within)); err != nil {
		return 0, err
	}
	if _, err := c.Write([]byte{'x'}); err != nil {
		return 0, err
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}
