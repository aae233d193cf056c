package tiered

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tieredcache/tiered/internal/redistest"
)

// TestGetOrLoad: a per-call loader and TTL, without a Loader in Options: one load per
// key however many callers (a plain Get joins the flight), the value shared with
// another process through Redis with the call's TTL, served from the near-cache
// after; a Delete during the load keeps the loaded value out of Redis (the lease).
func TestGetOrLoad(t *testing.T) {
	srv := redistest.Start(t, 1)
	a := newCache(t, ringOpts[string](t, srv))
	b := newCache(t, ringOpts[string](t, srv))
	ctx := context.Background()
	waitFor(t, "both subscribed", func() bool { return allUp(a) && allUp(b) })

	var calls atomic.Int64
	release := make(chan struct{})
	slow := LoaderFunc[string](func(_ context.Context, k string) (string, error) {
		calls.Add(1)
		<-release
		return "v:" + k, nil
	})
	const ttl = 30 * time.Second
	var wg sync.WaitGroup
	results := make(chan string, 9)
	for range 8 {
		wg.Go(func() {
			v, err := a.GetOrLoad(ctx, "k", ttl, slow)
			if err != nil {
				t.Error(err)
			}
			results <- v
		})
	}
	waitFor(t, "the load starts", func() bool { return calls.Load() == 1 })
	wg.Go(func() { // a plain Get, with no Loader in Options, joins the running flight
		v, err := a.Get(ctx, "k")
		if err != nil {
			t.Error("Get joining a GetOrLoad flight:", err)
		}
		results <- v
	})
	waitFor(t, "the Get joins", func() bool { return a.Stats().LocalMisses == 9 })
	close(release)
	wg.Wait()
	close(results)
	for v := range results {
		if v != "v:k" {
			t.Errorf("a caller got %q", v)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("%d loads for 9 concurrent callers, want 1", n)
	}
	waitSettled(t, a) // the callers return before the fill
	pttl, err := srv[0].Do(ctx, "PTTL", redisKey(a, "k"))
	if ms, ok := pttl.(int64); err != nil || !ok || ms > ttl.Milliseconds() || ms < (ttl*8/10).Milliseconds() {
		t.Errorf("PTTL = %v, %v; want the call's TTL (%v, less jitter)", pttl, err, ttl)
	}

	// Another process reads it from Redis: its own loader is not called.
	other := LoaderFunc[string](func(context.Context, string) (string, error) {
		t.Error("a value in Redis was loaded again")
		return "", nil
	})
	if v, err := b.GetOrLoad(ctx, "k", ttl, other); err != nil || v != "v:k" {
		t.Fatal(v, err)
	}
	waitLocal(t, a, "k")
	if v, err := a.GetOrLoad(ctx, "k", ttl, other); err != nil || v != "v:k" {
		t.Fatal(v, err)
	}
	if st := a.Stats(); st.LocalHits == 0 {
		t.Errorf("the near-cache did not answer: %+v", st)
	}

	// A Delete during the load: the loaded value is returned, not stored.
	started := make(chan struct{})
	release2 := make(chan struct{})
	old := LoaderFunc[string](func(context.Context, string) (string, error) {
		close(started)
		<-release2
		return "old", nil
	})
	done := make(chan error, 1)
	go func() {
		_, err := a.GetOrLoad(ctx, "d", ttl, old)
		done <- err
	}()
	<-started
	if err := b.Delete(ctx, "d"); err != nil {
		t.Fatal(err)
	}
	close(release2)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	waitSettled(t, a) // the fill, and LeasesLost, follow the call's return
	if n, err := srv[0].Do(ctx, "EXISTS", redisKey(a, "d")); err != nil || n != int64(0) {
		t.Errorf("after a Delete during the load, the key exists in Redis: %v, %v", n, err)
	}
	if st := a.Stats(); st.LeasesLost != 1 {
		t.Errorf("LeasesLost = %d, want 1", st.LeasesLost)
	}

	// Absence and bad input.
	none := LoaderFunc[string](func(context.Context, string) (string, error) { return "", ErrNotFound })
	if _, err := a.GetOrLoad(ctx, "absent", 0, none); !errors.Is(err, ErrNotFound) {
		t.Errorf("absent: %v", err)
	}
	if _, err := a.GetOrLoad(ctx, "x", 0, nil); err == nil {
		t.Error("a nil loader: no error")
	}
	if _, err := a.GetOrLoad(ctx, "", 0, none); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("empty key: %v", err)
	}
}
