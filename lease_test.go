package tiered

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tieredcache/tiered/internal/redistest"
)

// C3: a Loader result read before a Delete is never written into Redis after it.
// The loader reads the old row and is held until the Delete has returned; then it
// finishes, and its fill must find its lease voided.
func TestC3NoStaleSetAfterDelete(t *testing.T) {
	for _, write := range []string{"Delete", "Set"} {
		t.Run(write, func(t *testing.T) {
			servers := redistest.Start(t, 3)
			src := newSource()
			src.put("k", "old")
			reached, release := make(chan struct{}), make(chan struct{})
			var once atomic.Bool
			o := ringOpts[string](t, servers)
			o.Loader = LoaderFunc[string](func(ctx context.Context, key string) (string, error) {
				v, err := src.Load(ctx, key) // reads "old"
				if once.CompareAndSwap(false, true) {
					close(reached)
					<-release
				}
				return v, err
			})
			a := newCache(t, o)
			b := newCache(t, o)
			ctx := context.Background()

			res := make(chan error, 1)
			go func() { _, err := a.Get(ctx, "k"); res <- err }()
			<-reached // A holds the lease and the old row
			var err error
			if write == "Delete" {
				src.del("k")
				err = b.Delete(ctx, "k")
			} else {
				src.put("k", "new")
				err = b.Set(ctx, "k", "new")
			}
			if err != nil {
				t.Fatal(err)
			}
			close(release)
			if err := <-res; err != nil {
				t.Fatal(err)
			}
			rk := a.shared.(interface{ Key(string) string }).Key("k")
			raw, err := servers[a.shared.Owner("k")].Do(ctx, "GET", rk)
			if write == "Delete" {
				if err == nil {
					t.Fatalf("Redis holds %q after the Delete: a stale fill landed", raw)
				}
			} else if err != nil || !contains(raw, "new") {
				t.Fatalf("Redis holds %v, %v after the Set; want the new value", raw, err)
			}
			if s := a.Stats(); s.LeasesLost != 1 {
				t.Fatalf("A's stats = %+v, want its lease lost", s)
			}
			// And no process reads the old value from now on.
			c := newCache(t, o)
			v, err := c.Get(ctx, "k")
			if write == "Delete" && !errors.Is(err, ErrNotFound) || write == "Set" && v != "new" {
				t.Fatalf("fresh Get = %q, %v", v, err)
			}
			if v, err := a.Get(ctx, "k"); write == "Set" && v != "new" || write == "Delete" && !errors.Is(err, ErrNotFound) {
				t.Fatalf("A.Get after the write = %q, %v", v, err)
			}
		})
	}
}

func contains(raw any, s string) bool {
	str, ok := raw.(string)
	return ok && len(str) >= len(s) && str[len(str)-len(s):] == s
}

// C6 across processes, in one process's terms: several Cache instances (each its own
// connections and singleflight, as separate processes would be) stampede one cold
// key; the lease lets one of them load it.
func TestLeaseOneLoadAcrossInstances(t *testing.T) {
	servers := redistest.Start(t, 3)
	var calls atomic.Int64
	o := ringOpts[string](t, servers)
	o.Loader = LoaderFunc[string](func(ctx context.Context, key string) (string, error) {
		calls.Add(1)
		time.Sleep(20 * time.Millisecond) // a database round trip
		return "v:" + key, nil
	})
	caches := make([]*Cache[string], 4)
	for i := range caches {
		caches[i] = newCache(t, o)
	}
	const rounds, perCache = 10, 100
	for r := range rounds {
		key := fmt.Sprint("cold:", r)
		start := make(chan struct{})
		var wg sync.WaitGroup
		errs := make(chan error, len(caches)*perCache)
		for _, c := range caches {
			for range perCache {
				wg.Go(func() {
					<-start
					if v, err := c.Get(context.Background(), key); err != nil || v != "v:"+key {
						errs <- fmt.Errorf("Get = %q, %v", v, err)
					}
				})
			}
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	if n := calls.Load(); n != rounds {
		t.Fatalf("%d loader calls for %d cold keys stampeded by %d instances x %d goroutines; want %d", n, rounds, len(caches), perCache, rounds)
	}
	var waits uint64
	for _, c := range caches {
		waits += c.Stats().LeaseWaits
	}
	t.Logf("%d rounds: %d loader calls, %d lease waits", rounds, calls.Load(), waits)
}

// A lease holder that dies mid-load (its lease never released) delays the others by
// at most the lease TTL: one of them takes over the lease when it expires and loads.
func TestLeaseHolderDies(t *testing.T) {
	servers := redistest.Start(t, 1)
	src := newSource()
	src.put("k", "v")
	o := ringOpts[string](t, servers)
	o.Loader = src
	o.LeaseTTL = 300 * time.Millisecond
	c := newCache(t, o)
	ctx := context.Background()
	// A holder that died: the lease is taken, nothing will ever fill.
	r := c.shared.(interface {
		LeaseKey(string) string
	})
	if _, err := servers[0].Do(ctx, "SET", r.LeaseKey("k"), "dead-holder", "PX", 300); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	v, err := c.Get(ctx, "k")
	took := time.Since(start)
	if err != nil || v != "v" {
		t.Fatalf("Get = %q, %v", v, err)
	}
	bound := o.LeaseTTL + leasePollMax + 100*time.Millisecond // scheduling margin
	if took > bound {
		t.Fatalf("Get waited %v behind a dead lease holder; bound is %v", took, bound)
	}
	s := c.Stats()
	if s.LeaseWaits != 1 || s.Loads != 1 {
		t.Fatalf("stats = %+v, want one lease wait and one load", s)
	}
	// It took the expired lease over, so it filled Redis.
	if s.LeaseTimeouts != 0 {
		t.Fatalf("stats = %+v: gave up instead of taking the expired lease over", s)
	}
	d := newCache(t, o)
	if v, err := d.Get(ctx, "k"); err != nil || v != "v" || d.Stats().RemoteHits != 1 {
		t.Fatalf("another cache: %q, %v, %+v; want a shared-tier hit", v, err, d.Stats())
	}
	t.Logf("waited %v behind a dead holder (lease TTL %v)", took, o.LeaseTTL)
}
