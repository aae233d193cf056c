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

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond) // poll interval
	}
}

func nearHas[V any](c *Cache[V], key string) (V, bool) {
	v, _, ok := c.local.Get(c.local.Hash(key), key)
	return v, ok
}

// C1: after a write through A returns, B evicts its copy within the pub/sub delivery
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

// C2: an invalidation that arrives while a fill is in flight keeps the fill out of the
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

// C5: a near-cache copy never outlives the Redis TTL it was read with, whatever the
// reader's own LocalTTL.
func TestC5NearCopyBoundedByRedisTTL(t *testing.T) {
	servers := redistest.Start(t, 3)
	src := newSource()
	src.put("k", "from source")
	oa := ringOpts[string](t, servers)
	oa.TTL = 500 * time.Millisecond
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
	node := servers[b.shared.Owner("k")]
	pttl, err := node.Do(ctx, "PTTL", b.shared.(interface{ Key(string) string }).Key("k"))
	if err != nil {
		t.Fatal(err)
	}
	redisExpiry := time.Now().Add(time.Duration(pttl.(int64)) * time.Millisecond)
	waitFor(t, "the Redis TTL to pass", func() bool { return time.Now().After(redisExpiry) })
	if v, ok := nearHas(b, "k"); ok {
		t.Fatalf("B's near-cache still serves %q after the Redis TTL it was read with", v)
	}
	if v, err := b.Get(ctx, "k"); err != nil || v != "from source" {
		t.Fatalf("B.Get after expiry = %q, %v; want the source's value", v, err)
	}
}

// TestEpochFlush: a node that loses its data while subscriptions to it stay up (a
// restart too quick to notice, a failover to an empty replica behind the same
// address; here FLUSHALL on the test's own server) starts a new epoch with its next
// write, and every other instance flushes its near-cache entries of that node.
func TestEpochFlush(t *testing.T) {
	srv := redistest.Start(t, 1)
	src := newSource()
	mk := func() *Cache[string] {
		o := ringOpts[string](t, srv)
		o.Loader = src
		return newCache(t, o)
	}
	a, b := mk(), mk()
	ctx := context.Background()
	src.put("k1", "v1")
	src.put("k2", "v1")
	if err := a.Set(ctx, "k1", "v1"); err != nil { // the node's first epoch
		t.Fatal(err)
	}
	for _, k := range []string{"k1", "k2"} {
		if _, err := b.Get(ctx, k); err != nil {
			t.Fatal(err)
		}
		waitLocal(t, b, k)
	}
	lost := b.Stats().SubscriptionsLost
	if _, err := srv[0].Do(ctx, "FLUSHALL"); err != nil {
		t.Fatal(err)
	}
	if err := a.Set(ctx, "k1", "v2"); err != nil { // new epoch, sequence 1
		t.Fatal(err)
	}
	waitFor(t, "B's epoch flush", func() bool { return b.Stats().FlushesEpoch == 1 })
	if _, ok := nearHas(b, "k2"); ok {
		t.Error("B still serves k2 from its near-cache after the node's new epoch")
	}
	if s := b.Stats(); s.SubscriptionsLost != lost {
		t.Errorf("B's subscription was lost (%d -> %d): the flush came from it, not from the epoch", lost, s.SubscriptionsLost)
	}
}
