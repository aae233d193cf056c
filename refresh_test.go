package tiered

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tieredcache/tiered/internal/redistest"
)

func refreshOpts(t *testing.T, servers []*redistest.Server, loader Loader[string]) Options[string] {
	o := ringOpts[string](t, servers)
	o.Loader = loader
	o.TTL, o.LocalTTL = 2*time.Second, 2*time.Second
	o.RefreshAhead = 0.5 // due when 1 s is left
	o.Jitter = -1
	return o
}

// A hot key is reloaded before it expires: its callers never wait for a load after
// the first, and at most one process in the fleet refreshes it.
func TestRefreshAhead(t *testing.T) {
	servers := redistest.Start(t, 3)
	src := newSource()
	src.put("k", "v1")
	o := refreshOpts(t, servers, src)
	a := newCache(t, o)
	b := newCache(t, o)
	ctx := context.Background()
	first := time.Now()
	for _, c := range []*Cache[string]{a, b} {
		if v, err := c.Get(ctx, "k"); err != nil || v != "v1" {
			t.Fatalf("Get = %q, %v", v, err)
		}
		waitLocal(t, c, "k")
	}
	src.put("k", "v2") // behind the cache's back: only a reload can see it

	// Keep reading from both, as hot-key traffic would, until the refreshed value
	// shows up.
	waitFor(t, "the refreshed value", func() bool {
		va, errA := a.Get(ctx, "k")
		vb, errB := b.Get(ctx, "k")
		if errA != nil || errB != nil {
			t.Fatalf("Get errors: %v, %v", errA, errB)
		}
		return va == "v2" || vb == "v2"
	})
	if since := time.Since(first); since >= o.TTL {
		t.Fatalf("the new value arrived after %v, not before the %v TTL ended", since, o.TTL)
	}
	sa, sb := a.Stats(), b.Stats()
	if sa.Refreshes+sb.Refreshes != 1 {
		t.Fatalf("refreshes: a %d, b %d; want exactly one in the fleet", sa.Refreshes, sb.Refreshes)
	}
	if n := src.calls.Load(); n != 2 {
		t.Fatalf("loader calls = %d, want 2 (the first load and one refresh)", n)
	}
	// The refreshed value has a whole new TTL in Redis.
	rk := redisKey(a, "k")
	pttl, err := servers[a.shared.Owner("k")].Do(ctx, "PTTL", rk)
	if err != nil || pttl.(int64) <= int64(o.TTL/2/time.Millisecond) {
		t.Fatalf("PTTL after refresh = %v, %v", pttl, err)
	}
}

// A refresh that began before a Delete re-populates neither tier.
func TestRefreshFencedByDelete(t *testing.T) {
	servers := redistest.Start(t, 3)
	src := newSource()
	src.put("k", "v1")
	held, release := make(chan struct{}), make(chan struct{})
	var calls atomic.Int64
	o := refreshOpts(t, servers, LoaderFunc[string](func(ctx context.Context, key string) (string, error) {
		if calls.Add(1) == 2 { // the refresh
			close(held)
			select { // bounded, so that a failing test cannot hang
			case <-release:
			case <-time.After(20 * time.Second):
			}
		}
		return src.Load(ctx, key)
	}))
	a := newCache(t, o)
	b := newCache(t, o)
	ctx := context.Background()
	if _, err := a.Get(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	waitLocal(t, a, "k")
	waitFor(t, "the refresh to start", func() bool {
		select {
		case <-held:
			return true
		default:
			a.Get(ctx, "k") // hits; one of them queues the refresh
			if s := a.Stats(); s.Loads > 1 && s.Refreshes == 0 {
				t.Fatalf("the key was reloaded on a miss instead of refreshed ahead: %+v", s)
			}
			return false
		}
	})
	src.del("k")
	if err := b.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	close(release)
	waitFor(t, "the refresh to end", func() bool { return a.Stats().LeasesLost == 1 })
	if _, err := a.Get(ctx, "k"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("A.Get after the Delete = %v, want ErrNotFound", err)
	}
	rk := redisKey(a, "k")
	if v, err := servers[a.shared.Owner("k")].Do(ctx, "GET", rk); err == nil && holdsFrame(v, "v1") {
		t.Fatal("the refresh re-populated Redis after the Delete")
	}
}

// A refresh that fails leaves the old value served until its TTL ends.
func TestRefreshFailureKeepsOldValue(t *testing.T) {
	servers := redistest.Start(t, 3)
	var calls atomic.Int64
	o := refreshOpts(t, servers, LoaderFunc[string](func(ctx context.Context, key string) (string, error) {
		if calls.Add(1) > 1 {
			return "", errors.New("database down")
		}
		return "v1", nil
	}))
	c := newCache(t, o)
	ctx := context.Background()
	if _, err := c.Get(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	waitLocal(t, c, "k")
	waitFor(t, "a refresh attempt", func() bool {
		v, err := c.Get(ctx, "k")
		if err != nil || v != "v1" {
			t.Fatalf("Get during a failing refresh = %q, %v; want the old value", v, err)
		}
		return c.Stats().Refreshes == 1 && c.Stats().LoadErrors == 1
	})
	if v, err := c.Get(ctx, "k"); err != nil || v != "v1" {
		t.Fatalf("Get after the failed refresh = %q, %v; want the old value", v, err)
	}
}
