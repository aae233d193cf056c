package remote

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tieredcache/tiered/internal/redistest"
)

// The pipeliner against go-redis's own automatic pipelining, bare: 64 goroutines GET
// distinct keys of one node, each GET one command, nothing else. The difference is
// what the pipeliner itself costs (or saves). Then the same through the pipeliner
// with a shared hit's lease command (SET NX GET) in place of the GET, and through
// Redis.Lease (the breaker, the command built without allocations, the reply parsed):
// the layers under a Get, each on its own.
//
// go test -run '^$' -bench 'ParallelGet' -benchmem -count 6 ./internal/remote

func parallelGetFixture(b *testing.B) (*redis.Client, []string) {
	srv := redistest.Start(b, 1)[0]
	cl := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1,
		ReadTimeout: time.Second, WriteTimeout: time.Second, DialTimeout: time.Second, PoolTimeout: time.Second})
	b.Cleanup(func() { cl.Close() })
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = fmt.Sprintf("bench:{k%d}", i)
		if err := cl.Set(context.Background(), keys[i], "a value of a few dozen bytes, like a small JSON record", 0).Err(); err != nil {
			b.Fatal(err)
		}
	}
	return cl, keys
}

func runParallelGets(b *testing.B, keys []string, get func(ctx context.Context, key string) error) {
	ctx := context.Background()
	var g atomic.Int64
	b.SetParallelism(32) // 64 goroutines on 2 cores
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := int(g.Add(1)) * 16
		for pb.Next() {
			if err := get(ctx, keys[i%len(keys)]); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}

func BenchmarkPipelinerParallelGet(b *testing.B) {
	cl, keys := parallelGetFixture(b)
	p := newPipeliner(cl, time.Second, nil)
	runParallelGets(b, keys, func(ctx context.Context, key string) error {
		return p.do(ctx, redis.NewStringCmd(ctx, "get", key))
	})
	b.StopTimer()
	p.wg.Wait()
}

func BenchmarkAutoPipelineParallelGet(b *testing.B) {
	cl, keys := parallelGetFixture(b)
	ap, err := cl.AutoPipeline()
	if err != nil {
		b.Fatal(err)
	}
	defer ap.Close()
	runParallelGets(b, keys, func(ctx context.Context, key string) error {
		return ap.Process(ctx, redis.NewStringCmd(ctx, "get", key))
	})
}

func BenchmarkPipelinerParallelLeaseCmd(b *testing.B) {
	cl, keys := parallelGetFixture(b)
	p := newPipeliner(cl, time.Second, nil)
	runParallelGets(b, keys, func(ctx context.Context, key string) error {
		cmd := redis.NewStringCmd(ctx, "set", key, "\x00lease:abcdefghijabcdefghij", "nx", "get", "px", 5000)
		if err := p.do(ctx, cmd); err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		return nil
	})
	b.StopTimer()
	p.wg.Wait()
}

func BenchmarkRedisLeaseParallel(b *testing.B) {
	cl, keys := parallelGetFixture(b)
	r, err := New(Config{Nodes: []Node{{Name: "n", Client: cl}}, Timeout: time.Second, MissedDeletes: 10})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(r.Wait)
	runParallelGets(b, keys, func(ctx context.Context, key string) error {
		_, _, _, err := r.Lease(ctx, 0, key[len("bench:{"):len(key)-1], "", 5*time.Second)
		return err
	})
}
