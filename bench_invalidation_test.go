package tiered

// BenchmarkInvalidationLatency runs beside its baseline BenchmarkRawPublishReceive:
//
//	BenchmarkInvalidationLatency: Set on cache A returns ... B's subscriber has applied
//	  the invalidation (the key is gone from B's near-cache), A and B on one node;
//	BenchmarkRawPublishReceive: a raw go-redis PUBLISH ... a raw go-redis subscriber has
//	  received the message, on the same kind of node.
//
// Both report the latency from the start of the write (or PUBLISH) to delivery as
// p50-ns and p99-ns; ns/op is one write plus its delivery.

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tieredcache/tiered/internal/invalidation"
	"github.com/tieredcache/tiered/internal/redistest"
)

func reportLatency(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
}

func BenchmarkInvalidationLatency(b *testing.B) {
	srv := redistest.Start(b, 1)[0]
	newC := func() *Cache[string] {
		cl := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true})
		b.Cleanup(func() { cl.Close() })
		return newCache(b, Options[string]{Client: cl, Namespace: "bench", Timeout: time.Second})
	}
	a, c := newC(), newC()
	got := make(chan time.Time, 1)
	hook := func(*invalidation.Message) { got <- time.Now() }
	c.afterInvalidate.Store(&hook)
	ctx := context.Background()
	value := strings.Repeat("v", 64)
	lat := make([]time.Duration, 0, 1024)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		if err := a.Set(ctx, "k", value); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, (<-got).Sub(start))
	}
	b.StopTimer()
	reportLatency(b, lat)
}

func BenchmarkRawPublishReceive(b *testing.B) {
	srv := redistest.Start(b, 1)[0]
	pub := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true})
	defer pub.Close()
	sub := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true})
	defer sub.Close()
	ctx, cancel := context.WithCancel(context.Background())
	ps := sub.Subscribe(ctx, "bench:raw")
	if _, err := ps.Receive(ctx); err != nil { // confirmation
		b.Fatal(err)
	}
	got := make(chan time.Time, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if _, err := ps.ReceiveMessage(ctx); err != nil {
				return
			}
			got <- time.Now()
		}
	}()
	defer func() { cancel(); ps.Close(); <-done }()
	// The same bytes our message carries for one 1-byte key, plus epoch and sequence.
	payload := "epoch|1|" + string(invalidation.AppendPayload(nil, "origin", time.Now().UnixMicro(), []string{"k"}))
	lat := make([]time.Duration, 0, 1024)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		if err := pub.Publish(ctx, "bench:raw", payload).Err(); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, (<-got).Sub(start))
	}
	b.StopTimer()
	reportLatency(b, lat)
}
