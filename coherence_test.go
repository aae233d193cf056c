package tiered

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tieredcache/tiered/internal/redistest"
)

// C1 (delivery): after a write through A returns, B evicts its copy within the pub/sub delivery
// time. Reports the eviction latency p50/p99 (A's Set returning → B's copy gone).
func TestC1InvalidationDelivery(t *testing.T) {
	servers := redistest.Start(t, 3)
	src := newSource()
	o := ringOpts[string](t, servers)
	o.Loader = src
	a := newCache(t, o)
	b := newCache(t, o)
	ctx := context.Background()

	const rounds = 200
	var lat []time.Duration
	for i := range rounds {
		k := fmt.Sprint("hot:", i%20)
		src.put(k, fmt.Sprint("v", i))
		if err := a.Set(ctx, k, fmt.Sprint("v", i)); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "B to see the setup write", func() bool {
			v, err := b.Get(ctx, k)
			return err == nil && v == fmt.Sprint("v", i)
		})
		waitLocal(t, b, k) // B holds a copy
		old, _ := nearHas(b, k)

		v := fmt.Sprint("v", i+1)
		src.put(k, v)
		var err error
		if i%4 == 3 {
			src.del(k)
			err = a.Delete(ctx, k)
		} else {
			err = a.Set(ctx, k, v)
		}
		if err != nil {
			t.Fatal(err)
		}
		acked := time.Now()
		for {
			got, ok := nearHas(b, k)
			if !ok || got != old {
				break
			}
			if time.Since(acked) > 5*time.Second {
				t.Fatalf("round %d: B still serves %q from its near-cache 5 s after the write", i, old)
			}
		}
		lat = append(lat, time.Since(acked))
		got, err := b.Get(ctx, k)
		if i%4 == 3 {
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("round %d: B.Get after Delete = %q, %v", i, got, err)
			}
		} else if err != nil || got != v {
			t.Fatalf("round %d: B.Get after Set = %q, %v; want %q", i, got, err, v)
		}
	}
	slices.Sort(lat)
	t.Logf("C1 eviction latency over %d writes (Set/Delete on A returns -> B's copy gone): p50 %v, p99 %v, max %v",
		rounds, lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1])
	sa, sb := a.Stats(), b.Stats()
	if sa.InvalidationsSent != 2*rounds || sb.InvalidationsReceived < 2*rounds {
		t.Fatalf("A sent %d invalidations, B received %d; want %d each", sa.InvalidationsSent, sb.InvalidationsReceived, 2*rounds)
	}
	t.Logf("B delivery lag (writer clock to eviction): mean %v, max %v", sb.DeliveryLagMean, sb.DeliveryLagMax)
}

// C2 (fill fencing): an invalidation that arrives while a fill is in flight keeps the fill out of the
// near-cache. The data reply and the pub/sub message travel on different connections;
// the hooks hold the fill between its read and its store until the message has been
// applied, which is the interleaving that would leave a stale copy for a whole LocalTTL.
func TestC2FillFencing(t *testing.T) {
	for _, phase := range []string{"shared-tier read", "loader call"} {
		t.Run(phase, func(t *testing.T) {
			servers := redistest.Start(t, 3)
			src := newSource()
			o := ringOpts[string](t, servers)
			o.Loader = src
			a := newCache(t, o)
			b := newCache(t, o)
			ctx := context.Background()
			const k = "contended"
			src.put(k, "old")
			if phase == "shared-tier read" {
				if err := a.Set(ctx, k, "old"); err != nil { // Redis holds "old"
					t.Fatal(err)
				}
			}

			reached, release := make(chan struct{}), make(chan struct{})
			var once atomic.Bool
			hook := func(key string) {
				if key == k && once.CompareAndSwap(false, true) {
					close(reached)
					<-release
				}
			}
			if phase == "shared-tier read" {
				b.afterSharedRead = hook
			} else {
				b.afterLoad = hook
			}
			type result struct {
				v   string
				err error
			}
			res := make(chan result, 1)
			go func() {
				v, err := b.Get(ctx, k)
				res <- result{v, err}
			}()
			<-reached // B's fill holds "old", not yet stored

			before := b.Stats().InvalidationsReceived
			src.put(k, "new")
			if err := a.Set(ctx, k, "new"); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "B to apply A's invalidation", func() bool { return b.Stats().InvalidationsReceived > before })
			close(release)

			r := <-res // "old" is a legal answer: that Get began before the write
			if r.err != nil {
				t.Fatal(r.err)
			}
			b.local.Wait()
			if v, ok := nearHas(b, k); ok {
				t.Fatalf("B's near-cache holds %q after the fenced fill (stale for a whole LocalTTL)", v)
			}
			if v, err := b.Get(ctx, k); err != nil || v != "new" {
				t.Fatalf("B.Get after the write = %q, %v; want new", v, err)
			}
			// The fill did not write its old value into Redis either (SET NX).
			c := newCache(t, o)
			if v, err := c.Get(ctx, k); err != nil || v != "new" {
				t.Fatalf("a fresh cache reads %q, %v from the shared tier; want new", v, err)
			}
			t.Logf("fenced fill returned %q to its caller; near-cache stayed clean", r.v)
		})
	}
}

// C5 (bounded staleness): a near-cache copy never outlives the Redis TTL it was read
// with, whatever the reader's own LocalTTL (an hour here).
//
// What the code guarantees, and so all this test asserts: the copy's deadline is the
// expiry written in the value's frame (the writer's clock, before its SET PX, so no
// later than Redis's own expiry) less one Tick of the coarse clock. The test waits for
// Redis itself to report the key gone rather than computing the expiry from PTTL: Redis
// keeps a key through the whole millisecond of its expiry, so a Get just after
// now+PTTL can still read it there (it did once: "B.Get after expiry = written").
// Once Redis has dropped it, the near copy is gone too unless the coarse clock's
// goroutine is late by more than a Tick, which a loaded machine can make it: the test
// polls for the copy to go (within seconds, not the hour of LocalTTL) and logs the
// delay.
func TestC5NearCopyBoundedByRedisTTL(t *testing.T) {
	servers := redistest.Start(t, 3)
	src := newSource()
	src.put("k", "from source")
	oa := ringOpts[string](t, servers)
	oa.TTL = time.Second
	oa.Jitter = -1
	a := newCache(t, oa)
	ob := ringOpts[string](t, servers)
	ob.TTL, ob.LocalTTL = time.Hour, time.Hour
	ob.Loader = src
	b := newCache(t, ob)
	ctx := context.Background()

	if err := a.Set(ctx, "k", "written"); err != nil {
		t.Fatal(err)
	}
	if v, err := b.Get(ctx, "k"); err != nil || v != "written" {
		t.Fatalf("B.Get = %q, %v", v, err)
	}
	waitLocal(t, b, "k")
	node, rk := servers[b.shared.Owner("k")], redisKey(b, "k")
	gone := waitFor(t, "Redis to expire the key", func() bool {
		n, err := node.Do(ctx, "EXISTS", rk)
		if err != nil {
			t.Fatal(err)
		}
		return n.(int64) == 0
	})
	nearGone := waitFor(t, "B's near copy to expire (LocalTTL is an hour)", func() bool {
		_, ok := nearHas(b, "k")
		return !ok
	})
	t.Logf("B's near copy was gone %v after Redis dropped the key", nearGone.Sub(gone).Round(time.Microsecond))
	if v, err := b.Get(ctx, "k"); err != nil || v != "from source" {
		t.Fatalf("B.Get after expiry = %q, %v; want the source's value", v, err)
	}
}
