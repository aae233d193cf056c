package tieredprom_test

// The cost of observation: the cache's two hit paths with the Prometheus Recorder
// attached (and its Collector registered) beside the same paths without one
// (NopRecorder, the default), in one run:
//
//	go test -run '^$' -bench 'GetLocalHit|GetRemoteHit' -benchmem -count 6 . | benchstat -col /recorder -

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tieredcache/tiered"
	"github.com/tieredcache/tiered/internal/redistest"
	"github.com/tieredcache/tiered/tieredprom"
)

// withRecorder runs bench once without a Recorder and once with tieredprom's.
func withRecorder(b *testing.B, bench func(b *testing.B, rec tiered.Recorder, observe func(tieredprom.Source))) {
	b.Run("recorder=none", func(b *testing.B) { bench(b, nil, func(tieredprom.Source) {}) })
	b.Run("recorder=prom", func(b *testing.B) {
		m := tieredprom.New(tieredprom.Options{Cache: "bench"})
		bench(b, m, func(src tieredprom.Source) {
			reg := prometheus.NewRegistry()
			reg.MustRegister(m.Collector(src))
			if _, err := reg.Gather(); err != nil {
				b.Fatal(err)
			}
		})
	})
}

// BenchmarkGetLocalHit: near-cache hits over 1024 keys.
func BenchmarkGetLocalHit(b *testing.B) {
	withRecorder(b, func(b *testing.B, rec tiered.Recorder, observe func(tieredprom.Source)) {
		c, err := tiered.New(tiered.Options[string]{Recorder: rec,
			Loader: tiered.LoaderFunc[string](func(_ context.Context, k string) (string, error) { return "v:" + k, nil })})
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		observe(c)
		ctx := context.Background()
		keys := make([]string, 1024)
		for i := range keys {
			keys[i] = fmt.Sprintf("key-%d", i)
		}
		deadline := time.Now().Add(10 * time.Second)
		for _, k := range keys { // until every key is a near hit
			for before := c.Stats().LocalHits; ; {
				if _, err := c.Get(ctx, k); err != nil {
					b.Fatal(err)
				}
				if c.Stats().LocalHits > before {
					break
				}
				if time.Now().After(deadline) {
					b.Fatalf("%s never reached the near-cache", k)
				}
			}
		}
		misses := c.Stats().LocalMisses
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, err := c.Get(ctx, keys[i%len(keys)]); err != nil {
				b.Fatal(err)
			}
			i++
		}
		b.StopTimer()
		if n := c.Stats().LocalMisses - misses; n != 0 {
			b.Fatalf("%d near-cache misses in a hit benchmark", n)
		}
	})
}

// BenchmarkGetRemoteHit: shared-tier hits on one Redis node. LocalTTL is below the
// near-cache's clock tick, so no value is kept there and every Get reads Redis.
func BenchmarkGetRemoteHit(b *testing.B) {
	srv := redistest.Start(b, 1)[0]
	withRecorder(b, func(b *testing.B, rec tiered.Recorder, observe func(tieredprom.Source)) {
		c, err := tiered.New(tiered.Options[[]byte]{Recorder: rec, Addrs: []string{srv.Addr()}, Namespace: "bench",
			Timeout: time.Second, LocalTTL: time.Nanosecond,
			Loader: tiered.LoaderFunc[[]byte](func(context.Context, string) ([]byte, error) {
				b.Error("the Loader was called in a shared-hit benchmark")
				return nil, nil
			})})
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		observe(c)
		ctx := context.Background()
		if err := c.Set(ctx, "k", make([]byte, 64)); err != nil {
			b.Fatal(err)
		}
		before := c.Stats()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.Get(ctx, "k"); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		if s := c.Stats(); s.RemoteHits-before.RemoteHits < uint64(b.N) {
			b.Fatalf("%d shared hits for %d Gets", s.RemoteHits-before.RemoteHits, b.N)
		}
	})
}
