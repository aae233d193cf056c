package tiered

// A near miss costs two round trips to the key's node: one that reads the value or
// takes the lease (SET NX GET), one that fills (a compare-and-set of the lease).

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/tieredcache/tiered/internal/redistest"
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
			continue
		}
		trips.take()
		if _, err := srv.Do(ctx, "CONFIG", "RESETSTAT"); err != nil {
			t.Fatal(err)
		}
		if v, err := c.Get(ctx, key); err != nil || v != "v" {
			t.Fatalf("Get = %q, %v", v, err)
		}
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
