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
	"github.com/tieredcache/tiered/internal/remote"
)

// C3 (no stale set in Redis): a Loader result read before a Delete is never written into Redis after it.
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
			waitSettled(t, a) // A's fill runs after its Get returned
			rk := redisKey(a, "k")
			raw, err := servers[a.shared.Owner("k")].Do(ctx, "GET", rk)
			if write == "Delete" {
				if err == nil {
					t.Fatalf("Redis holds %q after the Delete: a stale fill landed", raw)
				}
			} else if err != nil || !holdsFrame(raw, "new") {
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

// C6 (stampede: one Loader call across processes, by the lease) in one process's
// terms: several Cache instances (each its own connections and singleflight, as
// separate processes would be) stampede one cold key; the lease lets one of them load
// it.
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
		Key(string) string
	})
	if _, err := servers[0].Do(ctx, "SET", r.Key("k"), remote.Placeholder("dead-holder"), "PX", 300); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	v, err := c.Get(ctx, "k")
	took := time.Since(start)
	if err != nil || v != "v" {
		t.Fatalf("Get = %q, %v", v, err)
	}
	bound := o.LeaseTTL + leasePollMax + 500*time.Millisecond // scheduling margin: -race on a loaded 2-core machine
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

// BenchmarkStampede: per iteration, 1000 goroutines spread over 4 Cache instances
// (as 4 replicas would be) Get one cold key at once. loads/op is the number of
// Loader calls per cold key across all instances: the goal is 1.
func BenchmarkStampede(b *testing.B) {
	servers := redistest.Start(b, 3)
	var calls atomic.Int64
	o := ringOpts[string](b, servers)
	o.Loader = LoaderFunc[string](func(ctx context.Context, key string) (string, error) {
		calls.Add(1)
		time.Sleep(time.Millisecond) // a fast database query
		return key, nil
	})
	caches := make([]*Cache[string], 4)
	for i := range caches {
		caches[i] = newCache(b, o)
	}
	const goroutines = 1000
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		key := fmt.Sprint("stampede:", i)
		i++
		start := make(chan struct{})
		var wg sync.WaitGroup
		var failed atomic.Int64
		for g := range goroutines {
			c := caches[g%len(caches)]
			wg.Go(func() {
				<-start
				if v, err := c.Get(context.Background(), key); err != nil || v != key {
					failed.Add(1)
				}
			})
		}
		close(start)
		wg.Wait()
		if failed.Load() > 0 {
			b.Fatalf("%d Gets failed", failed.Load())
		}
	}
	b.ReportMetric(float64(calls.Load())/float64(b.N), "loads/op")
}

// A caller whose ctx ends returns at once; the load it started goes on for the
// others and fills the cache.
func TestWaiterCancelDoesNotCancelLoad(t *testing.T) {
	servers := redistest.Start(t, 3)
	release := make(chan struct{})
	var loaderCtxErr atomic.Value
	o := ringOpts[string](t, servers)
	o.Loader = LoaderFunc[string](func(ctx context.Context, key string) (string, error) {
		<-release
		if err := ctx.Err(); err != nil {
			loaderCtxErr.Store(err)
		}
		return "v", nil
	})
	c := newCache(t, o)
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() { _, err := c.Get(ctx, "k"); first <- err }()
	waitFor(t, "the load to start", func() bool { return c.Stats().Loads == 1 })
	second := make(chan string, 1)
	go func() { v, _ := c.Get(context.Background(), "k"); second <- v }()
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled caller got %v, want context.Canceled at once", err)
	}
	close(release)
	if v := <-second; v != "v" {
		t.Fatalf("the other caller got %q", v)
	}
	if err := loaderCtxErr.Load(); err != nil {
		t.Fatalf("the shared load's ctx was cancelled: %v", err)
	}
	if n := c.Stats().Loads; n != 1 {
		t.Fatalf("%d loads, want 1", n)
	}
}

// The shared load runs under LoadTimeout, whatever its callers' ctx.
func TestLoadTimeout(t *testing.T) {
	c := newCache(t, Options[string]{
		LoadTimeout: 50 * time.Millisecond,
		Loader: LoaderFunc[string](func(ctx context.Context, key string) (string, error) {
			<-ctx.Done()
			return "", ctx.Err()
		}),
	})
	_, err := c.Get(context.Background(), "k")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Get = %v, want the load's deadline", err)
	}
}

// Every caller waiting on a load that panics gets the *PanicError; nothing is cached.
func TestLoaderPanicReachesEveryWaiter(t *testing.T) {
	release := make(chan struct{})
	var calls atomic.Int64
	var panicking atomic.Bool
	panicking.Store(true)
	c := newCache(t, Options[string]{Loader: LoaderFunc[string](func(context.Context, string) (string, error) {
		calls.Add(1)
		if panicking.Load() {
			<-release // callers arriving meanwhile join this load
			panic("boom")
		}
		return "v", nil
	})})
	const n = 10
	errs := make(chan error, n)
	for range n {
		go func() { _, err := c.Get(context.Background(), "k"); errs <- err }()
	}
	waitFor(t, "the load to start", func() bool { return calls.Load() == 1 })
	close(release)
	for range n {
		var pe *PanicError
		if err := <-errs; !errors.As(err, &pe) {
			t.Fatalf("waiter got %v, want *PanicError", err)
		}
	}
	panicking.Store(false)
	if v, err := c.Get(context.Background(), "k"); err != nil || v != "v" {
		t.Fatalf("Get after the panic = %q, %v; the panic must not be cached", v, err)
	}
}
