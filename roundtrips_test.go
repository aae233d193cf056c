package tiered

// A near miss costs two round trips to the key's node: one that reads the value or
// takes the lease (SET NX GET), one that fills (a compare-and-set of the lease).

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tieredcache/tiered/internal/redistest"
	"github.com/tieredcache/tiered/internal/remote"
)

// roundTrips counts the data-path round trips a client makes (pipelines count once),
// by the names of the commands in them.
type roundTrips struct {
	mu    sync.Mutex
	trips []string
}

func (r *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

func (r *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		r.add(cmd.Name())
		return next(ctx, cmd)
	}
}

func (r *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		names := make([]string, len(cmds))
		for i, c := range cmds {
			names[i] = c.Name()
		}
		r.add(strings.Join(names, "+"))
		return next(ctx, cmds)
	}
}

func (r *roundTrips) add(name string) {
	switch name {
	case "ping", "subscribe", "hello", "client", "info", "config":
		return // health checks, the subscriber, the test's own queries
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.trips = append(r.trips, name)
}

func (r *roundTrips) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.trips
	r.trips = nil
	return t
}

// commandCalls returns the calls of cmd since the last CONFIG RESETSTAT, from INFO
// commandstats on the test's own server.
func commandCalls(t *testing.T, srv *redistest.Server, cmd string) int {
	t.Helper()
	info, err := srv.Do(context.Background(), "INFO", "commandstats")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info.(string), "\r\n") {
		if rest, ok := strings.CutPrefix(line, "cmdstat_"+cmd+":calls="); ok {
			n, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
			return n
		}
	}
	return 0
}

func TestNearMissTwoRoundTrips(t *testing.T) {
	srv := redistest.Start(t, 1)[0]
	trips := &roundTrips{}
	cl := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1})
	cl.AddHook(trips)
	t.Cleanup(func() { cl.Close() })
	src := newSource()
	c := newCache(t, Options[string]{Nodes: []Node{{Name: "n", Client: cl}}, Namespace: "rt", Loader: src})
	ctx := context.Background()
	for i := range 3 {
		key := "cold" + strconv.Itoa(i)
		src.put(key, "v")
		// Warm the script cache once, so that the counted miss is not an EVALSHA
		// that falls back to EVAL.
		if i == 0 {
			if _, err := c.Get(ctx, key); err != nil {
				t.Fatal(err)
			}
			waitSettled(t, c)
			continue
		}
		trips.take()
		if _, err := srv.Do(ctx, "CONFIG", "RESETSTAT"); err != nil {
			t.Fatal(err)
		}
		if v, err := c.Get(ctx, key); err != nil || v != "v" {
			t.Fatalf("Get = %q, %v", v, err)
		}
		waitSettled(t, c) // the fill follows the Get's return
		got := trips.take()
		if len(got) != 2 {
			t.Errorf("near miss of %s: %d round trips %v, want 2 (read-or-lease, fill)", key, len(got), got)
		}
		// The node saw one native SET (SET NX GET) from the client and one script.
		if n := commandCalls(t, srv, "evalsha"); n != 1 {
			t.Errorf("node ran EVALSHA %d times, want 1 (the fill)", n)
		}
		if n := commandCalls(t, srv, "get"); n != 1 { // inside the fill's script
			t.Errorf("node ran GET %d times, want 1 (the fill script's compare)", n)
		}
		t.Logf("near miss of %s: round trips %v", key, got)
	}
	// A shared hit is one round trip.
	d := newCache(t, Options[string]{Nodes: []Node{{Name: "n", Client: cl}}, Namespace: "rt", Loader: src})
	trips.take()
	if v, err := d.Get(ctx, "cold1"); err != nil || v != "v" {
		t.Fatalf("shared hit: %q, %v", v, err)
	}
	if got := trips.take(); len(got) != 1 {
		t.Errorf("shared hit: %d round trips %v, want 1", len(got), got)
	}
}

// holdScripts holds every script call (EVALSHA, alone or in a pipeline) a client
// makes while it is armed, until release is closed; reached receives once per call
// held.
type holdScripts struct {
	armed    atomic.Bool
	reached  chan struct{}
	release  chan struct{}
	released sync.Once
}

// open disarms h and lets the held calls go; it may be called more than once.
func (h *holdScripts) open() {
	h.released.Do(func() { h.armed.Store(false); close(h.release) })
}

// heldNode starts one Redis node and a client of it whose script calls h holds
// while armed. The test must open h before its Caches close (defer h.open(): defers
// run before cleanups), since Close waits for a held fill.
func heldNode(t *testing.T) (*redistest.Server, *redis.Client, *holdScripts) {
	srv := redistest.Start(t, 1)[0]
	h := &holdScripts{reached: make(chan struct{}, 1), release: make(chan struct{})}
	cl := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1})
	cl.AddHook(h)
	t.Cleanup(func() { cl.Close() })
	return srv, cl, h
}

func (h *holdScripts) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *holdScripts) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.hold(cmd)
		return next(ctx, cmd)
	}
}

func (h *holdScripts) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, c := range cmds {
			h.hold(c)
		}
		return next(ctx, cmds)
	}
}

func (h *holdScripts) hold(cmd redis.Cmder) {
	if cmd.Name() == "evalsha" && h.armed.Load() {
		h.reached <- struct{}{}
		<-h.release
	}
}

// TestGetReturnsBeforeFill: a Get (or a GetMany with a BatchLoader) that loads returns
// the value as soon as the Loader has it, without waiting for the fill of the shared
// tier; a Get of the key while the fill is on its way is a near hit, served by the
// flight (no second load, no round trip); once the fill lands, Redis and the
// near-cache hold the value.
func TestGetReturnsBeforeFill(t *testing.T) {
	for _, call := range []string{"Get", "GetMany"} {
		t.Run(call, func(t *testing.T) {
			srv, cl, h := heldNode(t)
			defer h.open()
			src := newSource()
			src.put("k", "v")
			// A per-call bound long enough that the held fill is not failed by it.
			o := Options[string]{Nodes: []Node{{Name: "n", Client: cl}}, Namespace: "early", Loader: src, Timeout: 10 * time.Second}
			if call == "GetMany" {
				o.BatchLoader = src
			}
			c := newCache(t, o)
			ctx := context.Background()
			// Load the fill script into the node first, so that the held call is the fill.
			src.put("warm", "w")
			if _, err := c.GetMany(ctx, []string{"warm"}); err != nil {
				t.Fatal(err)
			}
			waitSettled(t, c)
			warm := c.Stats()

			h.armed.Store(true)
			got := make(chan error, 1)
			go func() {
				var v string
				var err error
				if call == "Get" {
					v, err = c.Get(ctx, "k")
				} else {
					var m map[string]string
					m, err = c.GetMany(ctx, []string{"k"})
					v = m["k"]
				}
				if err == nil && v != "v" {
					err = fmt.Errorf("%s = %q", call, v)
				}
				got <- err
			}()
			select {
			case err := <-got:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(waitForWithin):
				t.Fatalf("%s did not return while its fill was held: it waits for the fill", call)
			}
			select {
			case <-h.reached: // the fill is on its way, held
			case <-time.After(waitForWithin):
				t.Fatal("the fill never started")
			}
			raw, err := srv.Do(ctx, "GET", redisKey(c, "k"))
			if s, ok := raw.(string); err != nil || !ok || !remote.IsPlaceholder([]byte(s)) {
				t.Fatalf("Redis holds %q, %v while the fill is held; want the lease's placeholder", raw, err)
			}
			before := c.Stats()
			if v, err := c.Get(ctx, "k"); err != nil || v != "v" {
				t.Fatalf("Get during the fill = %q, %v", v, err)
			}
			if s := c.Stats(); s.Loads != before.Loads || s.RemoteHits != before.RemoteHits || s.RemoteMisses != before.RemoteMisses ||
				s.LocalHits != before.LocalHits+1 || s.LocalMisses != before.LocalMisses {
				t.Errorf("Get during the fill: stats %+v, before %+v; want a near hit served by the flight (no load, no shared-tier read)", s, before)
			}
			h.open()
			waitSettled(t, c)
			if raw, err := srv.Do(ctx, "GET", redisKey(c, "k")); err != nil || !holdsFrame(raw, "v") {
				t.Errorf("Redis holds %q, %v after the fill; want the value", raw, err)
			}
			waitLocal(t, c, "k")
			if s := c.Stats(); s.Loads != warm.Loads+1 {
				t.Errorf("%d loads of k, want 1", s.Loads-warm.Loads)
			}
		})
	}
}

// TestCloseLetsFillsFinish: Close, called while the fill of a value already returned
// is on its way, waits for that fill rather than cancelling it, so that the key holds
// the value and not the lease's placeholder, which other processes would wait out.
func TestCloseLetsFillsFinish(t *testing.T) {
	srv, cl, h := heldNode(t)
	defer h.open()
	src := newSource()
	src.put("k", "v")
	c, err := New(Options[string]{Nodes: []Node{{Name: "n", Client: cl}}, Namespace: "closefill", Loader: src, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	src.put("warm", "w") // loads the fill script into the node: the held call is the fill
	if _, err := c.Get(ctx, "warm"); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, c)

	h.armed.Store(true)
	if v, err := c.Get(ctx, "k"); err != nil || v != "v" {
		t.Fatalf("Get = %q, %v", v, err)
	}
	select {
	case <-h.reached:
	case <-time.After(waitForWithin):
		t.Fatal("the fill never started")
	}
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while a fill was on its way", err)
	case <-time.After(50 * time.Millisecond): // Close is waiting for the fill
	}
	h.open()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal("Close:", err)
		}
	case <-time.After(waitForWithin):
		t.Fatal("Close did not return after the fill")
	}
	if raw, err := srv.Do(ctx, "GET", redisKey(c, "k")); err != nil || !holdsFrame(raw, "v") {
		t.Errorf("after Close Redis holds %q, %v; want the value (the fill ran to its end)", raw, err)
	}
}
