package tiered

// Each benchmark here runs beside its baseline in the same process, so a ratio can be
// read from one run:
//
//	BenchmarkGetLocalHit   vs BenchmarkRistrettoGet      (raw ristretto v2, same config and value type)
//	BenchmarkGetRemoteHit  vs BenchmarkRedisGet          (raw go-redis GET of the same bytes, same node)
//	BenchmarkGetRemoteHitParallel vs BenchmarkRedisGetParallel (64 goroutines, distinct keys, one node)
//	BenchmarkGetMany100    vs BenchmarkGetSequential100  (100 shared-tier hits over 3 nodes)
//
// BenchmarkRedisMGet100 and BenchmarkRedisGetSequential100 do the same 100 reads with
// raw go-redis (three MGETs in parallel; 100 GETs): the ratio the machine allows.
//
// go test -run '^$' -bench . -benchmem -count 6 | benchstat -

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/ristretto/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tieredcache/tiered/internal/redistest"
	"github.com/tieredcache/tiered/internal/remote"
)

const benchKeys = 1024

// cpuPerOp, deferred as "defer cpuPerOp(b)()" before a timed loop, reports the CPU
// time this process spends per operation in it (cpu-ns/op, Linux only): every
// goroutine of it, the cache's background ones and go-redis's included, the Redis
// servers not. On a shared 2-core machine a pair's time per op moves with the other
// load more than the CPU each op costs does, so a change is judged by both.
func cpuPerOp(b *testing.B) func() {
	start, ok := processCPU()
	return func() {
		if end, ok2 := processCPU(); ok && ok2 && b.N > 0 {
			b.ReportMetric(float64(end-start)/float64(b.N), "cpu-ns/op")
		}
	}
}

func benchKeyNames() []string {
	keys := make([]string, benchKeys)
	for i := range keys {
		keys[i] = fmt.Sprintf("bench:user:%d", i)
	}
	return keys
}

var benchValue = "a value of a few dozen bytes, like a small JSON record"

func BenchmarkGetLocalHit(b *testing.B) {
	keys := benchKeyNames()
	c, err := New(Options[string]{Loader: LoaderFunc[string](func(_ context.Context, k string) (string, error) {
		return benchValue, nil
	})})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	for _, k := range keys {
		waitLocal(b, c, k)
	}
	before := c.Stats()
	b.ReportAllocs()
	b.ResetTimer()
	defer cpuPerOp(b)()
	i := 0
	for b.Loop() {
		if _, err := c.Get(ctx, keys[i%benchKeys]); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.StopTimer()
	if s := c.Stats(); s.LocalMisses != before.LocalMisses {
		b.Fatalf("%d near-cache misses during a hit benchmark", s.LocalMisses-before.LocalMisses)
	}
}

// BenchmarkRistrettoGet is BenchmarkGetLocalHit's baseline: raw ristretto with the
// configuration the near-cache uses by default and the same keys and values.
func BenchmarkRistrettoGet(b *testing.B) {
	keys := benchKeyNames()
	rc, err := ristretto.NewCache(&ristretto.Config[string, string]{
		NumCounters:        (64 << 20) / 100,
		MaxCost:            64 << 20,
		BufferItems:        64,
		IgnoreInternalCost: true,
	})
	if err != nil {
		b.Fatal(err)
	}
	defer rc.Close()
	for _, k := range keys {
		for {
			rc.Set(k, benchValue, int64(len(benchValue)))
			rc.Wait()
			if _, ok := rc.Get(k); ok {
				break
			}
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	defer cpuPerOp(b)()
	i := 0
	for b.Loop() {
		if _, ok := rc.Get(keys[i%benchKeys]); !ok {
			b.Fatal("miss")
		}
		i++
	}
}

// benchClient is a node client as Options.Addrs creates one: its own timeouts bound
// every call (at most Timeout each), so calls need no per-call context deadline.
func benchClient(b *testing.B, addr string) *redis.Client {
	cl := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true, MaxRetries: -1,
		ReadTimeout: time.Second, WriteTimeout: time.Second, DialTimeout: time.Second, PoolTimeout: time.Second})
	b.Cleanup(func() { cl.Close() })
	return cl
}

func BenchmarkGetRemoteHit(b *testing.B) {
	srv := redistest.Start(b, 1)[0]
	cl := benchClient(b, srv.Addr())
	defer cl.Close()
	// With a Loader, as a service has one: a shared hit is then the read that would
	// take the lease on a miss (SET NX GET). The Loader is never called.
	c, err := New(Options[[]byte]{Client: cl, Namespace: "bench", Timeout: time.Second, Loader: neverLoad(b)})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	val := []byte(benchValue)
	if err := c.Set(ctx, "k", val); err != nil {
		b.Fatal(err)
	}
	h := c.local.Hash("k")
	b.ReportAllocs()
	b.ResetTimer()
	defer cpuPerOp(b)()
	for b.Loop() {
		c.local.Invalidate(h) // make this Get a near-cache miss
		if _, err := c.Get(ctx, "k"); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if s := c.Stats(); s.RemoteHits < uint64(b.N) || s.Loads != 0 {
		b.Fatalf("stats = %+v: not every Get was a shared-tier hit", s)
	}
}

// BenchmarkRedisGet is BenchmarkGetRemoteHit's baseline: a raw go-redis GET of the
// same stored bytes (envelope included) from the same kind of node.
func BenchmarkRedisGet(b *testing.B) {
	srv := redistest.Start(b, 1)[0]
	cl := benchClient(b, srv.Addr())
	defer cl.Close()
	c, err := New(Options[[]byte]{Client: cl, Namespace: "bench", Timeout: time.Second})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	if err := c.Set(ctx, "k", []byte(benchValue)); err != nil {
		b.Fatal(err)
	}
	rk := "bench:{k}"
	b.ReportAllocs()
	b.ResetTimer()
	defer cpuPerOp(b)()
	for b.Loop() {
		if _, err := cl.Get(ctx, rk).Bytes(); err != nil {
			b.Fatal(err)
		}
	}
}

// manyFixture is a Cache on a 3-node ring holding 100 keys in the shared tier.
func manyFixture(b *testing.B) (*Cache[[]byte], []string) {
	servers := redistest.Start(b, 3)
	o := ringOpts[[]byte](b, servers)
	o.Timeout = time.Second
	c := newCache(b, o)
	keys := benchKeyNames()[:100]
	for _, k := range keys {
		if err := c.Set(context.Background(), k, []byte(benchValue)); err != nil {
			b.Fatal(err)
		}
	}
	return c, keys
}

func invalidateAll(c *Cache[[]byte], keys []string) {
	for _, k := range keys {
		c.local.Invalidate(c.local.Hash(k))
	}
}

func BenchmarkGetMany100(b *testing.B) {
	c, keys := manyFixture(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	defer cpuPerOp(b)()
	for b.Loop() {
		invalidateAll(c, keys) // shared-tier hits, not near hits
		m, err := c.GetMany(ctx, keys)
		if err != nil || len(m) != len(keys) {
			b.Fatalf("GetMany = %d values, %v", len(m), err)
		}
	}
}

// BenchmarkGetSequential100 is BenchmarkGetMany100's baseline: the same 100
// shared-tier hits, one Get after another.
func BenchmarkGetSequential100(b *testing.B) {
	c, keys := manyFixture(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	defer cpuPerOp(b)()
	for b.Loop() {
		invalidateAll(c, keys)
		for _, k := range keys {
			if _, err := c.Get(ctx, k); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// rawManyFixture is three raw go-redis clients holding the same 100 keys.
func rawManyFixture(b *testing.B) ([]*redis.Client, []string) {
	var cls []*redis.Client
	for _, s := range redistest.Start(b, 3) {
		cl := redis.NewClient(&redis.Options{Addr: s.Addr(), ContextTimeoutEnabled: true})
		b.Cleanup(func() { cl.Close() })
		cls = append(cls, cl)
	}
	keys := benchKeyNames()[:100]
	for i, k := range keys {
		if err := cls[i%3].Set(context.Background(), k, benchValue, 0).Err(); err != nil {
			b.Fatal(err)
		}
	}
	return cls, keys
}

// BenchmarkRedisMGet100 is BenchmarkGetMany100's baseline: the same 100 keys, as
// stored, on the same nodes (where the ring places them), read with one raw go-redis
// MGET per node through the same clients, the nodes in parallel.
func BenchmarkRedisMGet100(b *testing.B) {
	c, keys := manyFixture(b)
	r := c.shared.(*remote.Redis)
	perNode := make(map[int][]string)
	for _, k := range keys {
		idx := r.Owner(k)
		perNode[idx] = append(perNode[idx], r.Key(k))
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	defer cpuPerOp(b)()
	for b.Loop() {
		var wg sync.WaitGroup
		for idx, ks := range perNode {
			wg.Go(func() {
				vals, err := r.Client(idx).MGet(ctx, ks...).Result()
				if err != nil || slices.Contains(vals, nil) {
					b.Errorf("MGET on node %d: %v, %v", idx, vals, err)
				}
			})
		}
		wg.Wait()
	}
}

func BenchmarkRedisGetSequential100(b *testing.B) {
	cls, keys := rawManyFixture(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	defer cpuPerOp(b)()
	for b.Loop() {
		for i, k := range keys {
			if err := cls[i%len(cls)].Get(ctx, k).Err(); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// neverLoad is a Loader for benchmarks whose every Get must hit a tier.
func neverLoad(b *testing.B) Loader[[]byte] {
	return LoaderFunc[[]byte](func(_ context.Context, key string) ([]byte, error) {
		b.Errorf("Loader called for %s: a benchmark's Get missed both tiers", key)
		return nil, ErrNotFound
	})
}

// parallelGoroutines is the number of goroutines of the parallel pair: 64 callers
// reading distinct keys, as a busy service's handlers do.
const parallelGoroutines = 64

// parallelFixture is one node holding benchKeys keys written by a Cache with a Loader.
func parallelFixture(b *testing.B) (*redistest.Server, *redis.Client, *Cache[[]byte], []string) {
	srv := redistest.Start(b, 1)[0]
	cl := benchClient(b, srv.Addr())
	c := newCache(b, Options[[]byte]{Client: cl, Namespace: "bench", Timeout: time.Second, Loader: neverLoad(b)})
	keys := benchKeyNames()
	for _, k := range keys {
		if err := c.Set(context.Background(), k, []byte(benchValue)); err != nil {
			b.Fatal(err)
		}
	}
	return srv, cl, c, keys
}

// BenchmarkGetRemoteHitParallel: 64 goroutines Get distinct keys, every Get a shared
// hit (the near-cache entry is invalidated first). Concurrent commands to the node
// can share its connection's round trips.
func BenchmarkGetRemoteHitParallel(b *testing.B) {
	_, _, c, keys := parallelFixture(b)
	ctx := context.Background()
	runParallelKeys(b, keys, func(k string) error {
		c.local.Invalidate(c.local.Hash(k))
		_, err := c.Get(ctx, k)
		return err
	})
}

// BenchmarkRedisGetParallel is BenchmarkGetRemoteHitParallel's baseline: raw go-redis
// GETs of the same keys from 64 goroutines, on go-redis's default pool.
func BenchmarkRedisGetParallel(b *testing.B) {
	_, cl, _, keys := parallelFixture(b)
	ctx := context.Background()
	runParallelKeys(b, keys, func(k string) error {
		return cl.Get(ctx, "bench:{"+k+"}").Err()
	})
}

// BenchmarkRedisAutoPipelineGetParallel is the same GETs through go-redis's own
// automatic pipelining (Client.AutoPipeline, experimental in v9.23: concurrent
// commands batched per connection, one batch in flight): what go-redis itself makes of
// pipelining these reads, the floor for a client built on it. Read
// BenchmarkGetRemoteHitParallel's throughput against both baselines.
func BenchmarkRedisAutoPipelineGetParallel(b *testing.B) {
	_, cl, _, keys := parallelFixture(b)
	ap, err := cl.AutoPipeline()
	if err != nil {
		b.Fatal(err)
	}
	defer ap.Close()
	ctx := context.Background()
	runParallelKeys(b, keys, func(k string) error {
		return ap.Get(ctx, "bench:{"+k+"}").Err()
	})
}

// BenchmarkSetParallel: 64 goroutines Set distinct keys: each Set writes Redis and
// publishes its invalidation, atomically (a script); Sets that queue behind a busy
// node share one script call and one message.
func BenchmarkSetParallel(b *testing.B) {
	_, _, c, keys := parallelFixture(b)
	ctx := context.Background()
	val := []byte(benchValue)
	runParallelKeys(b, keys, func(k string) error { return c.Set(ctx, k, val) })
}

// BenchmarkRedisSetParallel is BenchmarkSetParallel's baseline: raw go-redis SETs of
// the same keys from 64 goroutines, on go-redis's default pool, publishing nothing.
func BenchmarkRedisSetParallel(b *testing.B) {
	_, cl, _, keys := parallelFixture(b)
	ctx := context.Background()
	val := []byte(benchValue)
	runParallelKeys(b, keys, func(k string) error {
		return cl.Set(ctx, "bench:{"+k+"}", val, time.Hour).Err()
	})
}

// BenchmarkDeleteParallel: 64 goroutines Delete distinct keys: each Delete removes
// the key and its lease and publishes its invalidation (a script); Deletes and Sets
// that queue behind a busy node share one script call and one message.
func BenchmarkDeleteParallel(b *testing.B) {
	_, _, c, keys := parallelFixture(b)
	ctx := context.Background()
	runParallelKeys(b, keys, func(k string) error { return c.Delete(ctx, k) })
}

// BenchmarkRedisDelParallel is BenchmarkDeleteParallel's baseline: raw go-redis DELs
// of the same keys and their lease keys from 64 goroutines, publishing nothing.
func BenchmarkRedisDelParallel(b *testing.B) {
	_, cl, _, keys := parallelFixture(b)
	ctx := context.Background()
	runParallelKeys(b, keys, func(k string) error {
		return cl.Del(ctx, "bench:{"+k+"}", "bench:{"+k+"}:lease").Err()
	})
}

// runParallelKeys runs op from parallelGoroutines goroutines, each starting at its own
// offset in keys, so that they read distinct keys.
func runParallelKeys(b *testing.B, keys []string, op func(key string) error) {
	var next sync.Mutex
	g := 0
	b.SetParallelism(max(1, parallelGoroutines/runtimeProcs()))
	b.ReportAllocs()
	b.ResetTimer()
	defer cpuPerOp(b)()
	b.RunParallel(func(pb *testing.PB) {
		next.Lock()
		i := g * (len(keys) / parallelGoroutines)
		g++
		next.Unlock()
		for pb.Next() {
			if err := op(keys[i%len(keys)]); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}

func runtimeProcs() int { return runtime.GOMAXPROCS(0) }
