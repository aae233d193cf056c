package tiered

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tieredcache/tiered/internal/redistest"
)

func TestTiersAnswerInOrder(t *testing.T) {
	servers := redistest.Start(t, 3)
	src := newSource()
	src.put("k", "v1")
	o := ringOpts[string](t, servers)
	o.Loader = src
	a := newCache(t, o)
	b := newCache(t, o)
	ctx := context.Background()

	// 1. Cold: both tiers miss, the Loader answers and both tiers are filled.
	if v, err := a.Get(ctx, "k"); err != nil || v != "v1" {
		t.Fatalf("a.Get = %q, %v", v, err)
	}
	if s := a.Stats(); s.Loads != 1 || s.RemoteMisses != 1 || s.LocalHits != 0 {
		t.Fatalf("cold Get stats = %+v, want 1 load, 1 remote miss", s)
	}
	// 2. Warm in process a: the near-cache answers.
	waitLocal(t, a, "k")
	before := a.Stats()
	if v, err := a.Get(ctx, "k"); err != nil || v != "v1" {
		t.Fatalf("warm a.Get = %q, %v", v, err)
	}
	if s := a.Stats(); s.LocalHits != before.LocalHits+1 || s.Loads != before.Loads || s.RemoteHits != before.RemoteHits {
		t.Fatalf("warm Get stats = %+v, before %+v: want one more local hit only", s, before)
	}
	// 3. Process b: the shared tier answers, the Loader is not called.
	if v, err := b.Get(ctx, "k"); err != nil || v != "v1" {
		t.Fatalf("b.Get = %q, %v", v, err)
	}
	if s := b.Stats(); s.RemoteHits != 1 || s.Loads != 0 {
		t.Fatalf("b stats = %+v, want 1 remote hit, 0 loads", s)
	}
	if n := src.calls.Load(); n != 1 {
		t.Fatalf("loader calls = %d, want 1", n)
	}
}

func TestNegativeCaching(t *testing.T) {
	servers := redistest.Start(t, 3)
	src := newSource()
	o := ringOpts[string](t, servers)
	o.Loader = src
	a := newCache(t, o)
	b := newCache(t, o)
	ctx := context.Background()

	if _, err := a.Get(ctx, "absent"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a.Get = %v, want ErrNotFound", err)
	}
	waitLocal(t, a, "absent")
	if _, err := a.Get(ctx, "absent"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second a.Get = %v, want ErrNotFound", err)
	}
	if _, err := b.Get(ctx, "absent"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("b.Get = %v, want ErrNotFound", err)
	}
	if n := src.calls.Load(); n != 1 {
		t.Fatalf("loader calls = %d, want 1: absence cached in both tiers", n)
	}
	if s := b.Stats(); s.RemoteHits != 1 {
		t.Fatalf("b stats = %+v, want the absence served by the shared tier", s)
	}
	if s := a.Stats(); s.NotFound != 1 || s.LocalHits < 1 {
		t.Fatalf("a stats = %+v, want 1 NotFound and a local hit", s)
	}
}

func TestTTLExpiry(t *testing.T) {
	servers := redistest.Start(t, 3)
	src := newSource()
	src.put("k", "v1")
	o := ringOpts[string](t, servers)
	o.Loader = src
	o.TTL = 300 * time.Millisecond
	o.Jitter = -1
	c := newCache(t, o)
	ctx := context.Background()
	if _, err := c.Get(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	src.put("k", "v2")
	// Within the TTL the cached v1 is served; after it, v2 is loaded. Poll: the
	// exact instant depends on Redis's expiry and the coarse clock.
	waitFor(t, "v2 loaded after the 300 ms TTL", func() bool {
		v, err := c.Get(ctx, "k")
		if err != nil {
			t.Fatal(err)
		}
		return v == "v2"
	})
	if n := src.calls.Load(); n != 2 {
		t.Fatalf("loader calls = %d, want 2", n)
	}
	// The remote key expired on its own too: Redis's TTL was set (v2's fill follows
	// the Get's return: see announce).
	waitSettled(t, c)
	rk := redisKey(c, "k")
	for _, s := range servers {
		ttl, err := s.Do(ctx, "PTTL", rk)
		if err != nil {
			t.Fatal(err)
		}
		if n := ttl.(int64); n > 300 {
			t.Fatalf("PTTL %s = %d ms, want <= 300", rk, n)
		}
	}
}

func TestLoaderErrorNotCached(t *testing.T) {
	servers := redistest.Start(t, 3)
	src := newSource()
	src.put("k", "v")
	boom := errors.New("db down")
	src.err = boom
	o := ringOpts[string](t, servers)
	o.Loader = src
	c := newCache(t, o)
	ctx := context.Background()
	if _, err := c.Get(ctx, "k"); !errors.Is(err, boom) {
		t.Fatalf("Get = %v, want the loader's error", err)
	}
	src.mu.Lock()
	src.err = nil
	src.mu.Unlock()
	if v, err := c.Get(ctx, "k"); err != nil || v != "v" {
		t.Fatalf("Get after recovery = %q, %v", v, err)
	}
	if n := src.calls.Load(); n != 2 {
		t.Fatalf("loader calls = %d, want 2: errors are not cached", n)
	}
	if s := c.Stats(); s.LoadErrors != 1 {
		t.Fatalf("stats = %+v, want 1 LoadError", s)
	}
}

func TestLoaderPanic(t *testing.T) {
	c := newCache(t, Options[string]{Loader: LoaderFunc[string](func(context.Context, string) (string, error) {
		panic("kaboom")
	})})
	_, err := c.Get(context.Background(), "k")
	var pe *PanicError
	if !errors.As(err, &pe) || pe.Value != "kaboom" || !strings.Contains(string(pe.Stack), "TestLoaderPanic") {
		t.Fatalf("Get = %v, want a *PanicError with the loader's stack", err)
	}
}

func TestStampedeOneLoad(t *testing.T) {
	servers := redistest.Start(t, 3)
	const n = 1000
	var started atomic.Int64
	release := make(chan struct{})
	var calls atomic.Int64
	o := ringOpts[string](t, servers)
	o.Loader = LoaderFunc[string](func(ctx context.Context, key string) (string, error) {
		calls.Add(1)
		<-release
		return "v", nil
	})
	c := newCache(t, o)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			started.Add(1)
			v, err := c.Get(context.Background(), "hot")
			if err == nil && v != "v" {
				err = fmt.Errorf("got %q", v)
			}
			if err != nil {
				errs <- err
			}
		})
	}
	// Hold the load until every goroutine is about to call Get, so they overlap it.
	waitFor(t, "every goroutine about to call Get", func() bool { return started.Load() == n })
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := calls.Load(); got != 1 {
		t.Fatalf("loader calls = %d for %d concurrent Gets, want 1", got, n)
	}
	if s := c.Stats(); s.RemoteMisses+s.RemoteHits > n || s.RemoteMisses != 1 {
		t.Fatalf("stats = %+v: want one shared-tier miss", s)
	}
}

func TestGetManyAcrossNodes(t *testing.T) {
	servers := redistest.Start(t, 3)
	src := newSource()
	const n = 60
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("user:%d", i)
		src.put(keys[i], "v"+keys[i])
	}
	var batches atomic.Int64
	var batchKeys atomic.Int64
	o := ringOpts[string](t, servers)
	o.Loader = src
	o.BatchLoader = BatchLoaderFunc[string](func(ctx context.Context, ks []string) (map[string]string, error) {
		batches.Add(1)
		batchKeys.Add(int64(len(ks)))
		return src.LoadMany(ctx, ks)
	})
	a := newCache(t, o)
	b := newCache(t, o)
	ctx := context.Background()
	// keys[0:20] near hits in a; keys[20:40] only in the shared tier (written by b);
	// keys[40:60] nowhere; plus one key absent at the source.
	for _, k := range keys[:20] {
		if _, err := a.Get(ctx, k); err != nil {
			t.Fatal(err)
		}
		waitLocal(t, a, k)
	}
	for _, k := range keys[20:40] {
		if err := b.Set(ctx, k, "v"+k); err != nil {
			t.Fatal(err)
		}
	}
	// b's invalidations reach a, and may evict a near copy of keys[:20] that shares a
	// fencing stripe with one of them (a false conflict, which only costs a miss):
	// wait for them, then make sure a holds keys[:20] again.
	waitFor(t, "b's invalidations at a", func() bool { return a.Stats().KeysInvalidated >= 20 })
	for _, k := range keys[:20] {
		waitLocal(t, a, k)
	}
	owners := map[int]bool{}
	for _, k := range keys[20:40] {
		owners[a.shared.Owner(k)] = true
	}
	if len(owners) != 3 {
		t.Fatalf("shared keys span %d nodes, want 3", len(owners))
	}
	before := a.Stats()
	batches.Store(0)
	batchKeys.Store(0)
	got, err := a.GetMany(ctx, append(keys, "nobody"))
	if err != nil {
		t.Fatalf("GetMany: %v", err)
	}
	if len(got) != n {
		t.Fatalf("GetMany returned %d values, want %d", len(got), n)
	}
	for _, k := range keys {
		if got[k] != "v"+k {
			t.Fatalf("GetMany[%q] = %q", k, got[k])
		}
	}
	s := a.Stats()
	if d := s.LocalHits - before.LocalHits; d != 20 {
		t.Errorf("local hits = %d, want 20", d)
	}
	if d := s.RemoteHits - before.RemoteHits; d != 20 {
		t.Errorf("remote hits = %d, want 20", d)
	}
	if batches.Load() != 1 || batchKeys.Load() != 21 {
		t.Errorf("batch loader: %d calls with %d keys, want 1 call with 21", batches.Load(), batchKeys.Load())
	}
	// Everything is now in the shared tier (the batch's fills follow its return: see
	// announce): b sees it without loading.
	waitSettled(t, a)
	loadsBefore := src.calls.Load()
	got, err = b.GetMany(ctx, keys)
	if err != nil || len(got) != n {
		t.Fatalf("b.GetMany = %d values, %v", len(got), err)
	}
	if src.calls.Load() != loadsBefore {
		t.Errorf("b.GetMany loaded %d keys, want 0", src.calls.Load()-loadsBefore)
	}
}

func TestGetManyPerKeyLoader(t *testing.T) {
	src := newSource()
	for i := range 50 {
		src.put(fmt.Sprint(i), fmt.Sprint("v", i))
	}
	boom := errors.New("boom")
	c := newCache(t, Options[string]{Loader: LoaderFunc[string](func(ctx context.Context, k string) (string, error) {
		if k == "bad" {
			return "", boom
		}
		return src.Load(ctx, k)
	})})
	keys := []string{"bad", "missing"}
	for i := range 50 {
		keys = append(keys, fmt.Sprint(i))
	}
	got, err := c.GetMany(context.Background(), keys)
	if !errors.Is(err, boom) {
		t.Fatalf("GetMany error = %v, want the failing key's error", err)
	}
	if len(got) != 50 {
		t.Fatalf("GetMany returned %d values, want 50", len(got))
	}
}

// TestGetManyDuplicateKeys: a key asked for more than once is loaded once and
// returned once, whichever tier answers it (loaded, shared hit, near hit).
func TestGetManyDuplicateKeys(t *testing.T) {
	servers := redistest.Start(t, 2)
	src := newSource()
	for _, k := range []string{"a", "b", "c"} {
		src.put(k, "v"+k)
	}
	o := ringOpts[string](t, servers)
	o.Loader = src
	c := newCache(t, o)
	other := newCache(t, o)
	ctx := context.Background()
	want := map[string]string{"a": "va", "b": "vb", "c": "vc"}
	check := func(step string, got map[string]string, err error) {
		t.Helper()
		if err != nil || !maps.Equal(got, want) {
			t.Fatalf("%s: GetMany = %v, %v; want %v", step, got, err, want)
		}
	}
	keys := []string{"a", "b", "a", "c", "b", "a", "missing", "missing"}
	got, err := c.GetMany(ctx, keys) // loaded
	check("loaded", got, err)
	if n := src.calls.Load(); n != 4 { // a, b, c and missing, once each
		t.Fatalf("%d loads for 4 distinct keys", n)
	}
	waitSettled(t, c)
	got, err = other.GetMany(ctx, keys) // shared hits in another instance
	check("shared", got, err)
	got, err = c.GetMany(ctx, keys) // near hits
	check("near", got, err)
	if n := src.calls.Load(); n != 4 { // missing's absence is cached too
		t.Fatalf("%d loads after three calls, want the first call's 4", n)
	}
}

func TestInstancesShareThroughRedis(t *testing.T) {
	servers := redistest.Start(t, 3)
	src := newSource()
	o := ringOpts[string](t, servers)
	o.Loader = src
	a := newCache(t, o)
	b := newCache(t, o)
	ctx := context.Background()
	for i := range 30 {
		k := fmt.Sprint("k", i)
		if err := a.Set(ctx, k, "from-a"); err != nil {
			t.Fatal(err)
		}
		if v, err := b.Get(ctx, k); err != nil || v != "from-a" {
			t.Fatalf("b.Get(%q) after a.Set = %q, %v", k, v, err)
		}
		if err := b.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
		// a's own near-cache may still hold "from-a" (cross-process eviction is the
		// invalidation bus's job); the shared tier must not.
		if _, err := servers[0].Do(ctx, "PING"); err != nil {
			t.Fatal(err)
		}
		c := newCache(t, o)
		if _, err := c.Get(ctx, k); !errors.Is(err, ErrNotFound) {
			t.Fatalf("fresh Get(%q) after b.Delete = %v, want ErrNotFound from the source", k, err)
		}
		c.Close()
	}
	if s := b.Stats(); s.RemoteHits != 30 || s.Loads != 0 {
		t.Fatalf("b stats = %+v, want 30 remote hits and no loads", s)
	}
}

// TestReadYourWrites runs 10^4 random Set/Get/Delete/Get sequences on a small key
// set through one Cache and compares every Get with a model. Ristretto's asynchronous
// Sets (dropped, reordered after a Del, a second Set of a new key rejected) must never
// show through.
func TestReadYourWrites(t *testing.T) {
	for _, mode := range []string{"ring", "local-only"} {
		t.Run(mode, func(t *testing.T) {
			src := newSource()
			var o Options[string]
			if mode == "ring" {
				o = ringOpts[string](t, redistest.Start(t, 3))
			}
			o.Loader = src
			c := newCache(t, o)
			ctx := context.Background()
			rng := rand.New(rand.NewPCG(1, 2))
			keys := make([]string, 16)
			for i := range keys {
				keys[i] = fmt.Sprint("ryw:", i)
			}
			model := map[string]string{}
			check := func(k string) {
				v, err := c.Get(ctx, k)
				want, ok := model[k]
				switch {
				case !ok && !errors.Is(err, ErrNotFound):
					t.Fatalf("Get(%q) = %q, %v; want ErrNotFound", k, v, err)
				case ok && (err != nil || v != want):
					t.Fatalf("Get(%q) = %q, %v; want %q", k, v, err, want)
				}
			}
			const sequences = 10_000
			for i := range sequences {
				k := keys[rng.IntN(len(keys))]
				switch rng.IntN(3) {
				case 0: // Set; Get; Delete; Get
					v := fmt.Sprint("v", i)
					src.put(k, v)
					if err := c.Set(ctx, k, v); err != nil {
						t.Fatal(err)
					}
					model[k] = v
					check(k)
					src.del(k)
					if err := c.Delete(ctx, k); err != nil {
						t.Fatal(err)
					}
					delete(model, k)
					check(k)
				case 1: // Set; Set; Get (the second Set of a new key)
					for j := range 2 {
						v := fmt.Sprint("v", i, ".", j)
						src.put(k, v)
						if err := c.Set(ctx, k, v); err != nil {
							t.Fatal(err)
						}
						model[k] = v
					}
					check(k)
				case 2: // Get; Delete; Get
					check(k)
					src.del(k)
					if err := c.Delete(ctx, k); err != nil {
						t.Fatal(err)
					}
					delete(model, k)
					check(k)
				}
			}
		})
	}
}

func TestFailOpen(t *testing.T) {
	servers := redistest.Start(t, 3)
	src := newSource()
	o := ringOpts[string](t, servers)
	o.Loader = src
	o.Timeout = 200 * time.Millisecond
	c := newCache(t, o)
	if err := servers[1].Kill(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := range 50 {
		k := fmt.Sprint("k", i)
		src.put(k, "v"+k)
		if v, err := c.Get(ctx, k); err != nil || v != "v"+k {
			t.Fatalf("Get(%q) with a dead node = %q, %v", k, v, err)
		}
	}
	if s := c.Stats(); s.RemoteErrors == 0 || s.Loads != 50 {
		t.Fatalf("stats = %+v, want RemoteErrors > 0 and 50 loads", s)
	}
}

func TestOptionsErrors(t *testing.T) {
	noTimeout := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer noTimeout.Close()
	for _, tc := range []struct {
		name string
		o    Options[string]
		want string
	}{
		{"two shared tiers", Options[string]{Addrs: []string{"a:1"}, Client: noTimeout}, "at most one"},
		{"client without ContextTimeoutEnabled", Options[string]{Client: noTimeout}, "ContextTimeoutEnabled"},
		{"braces in namespace", Options[string]{Namespace: "a{b"}, "Namespace"},
		{"jitter 1", Options[string]{Jitter: 1}, "Jitter"},
		{"duplicate node names", Options[string]{Addrs: []string{"127.0.0.1:1", "127.0.0.1:1"}}, "duplicate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(tc.o)
			if err == nil {
				c.Close()
				t.Fatal("New succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New error = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}
