package tiered

// Fault: a node loses its data: killed with SIGKILL and restarted empty on its port, or
// flushed while the subscriptions to it stay up. C4 (lost messages: a dropped
// subscription, a sequence gap or a new node epoch flushes that node's near-cache
// entries before they are served again) and C7 (a dead node never fails a Get that has
// a Loader) hold throughout. The harness is in faults_harness_test.go.

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tieredcache/tiered/internal/local"
	"github.com/tieredcache/tiered/internal/redistest"
)

// TestC4NodeKillRestart kills node X with SIGKILL while B reads, has A write X's keys
// (failing until X is back), and restarts X empty on its port: B serves none of X's
// keys older than an acknowledged write while X is down, and none more than Δ stale
// after; X comes back in a new epoch.
func TestC4NodeKillRestart(t *testing.T) {
	const (
		hc      = 100 * time.Millisecond
		timeout = 500 * time.Millisecond
		margin  = 400 * time.Millisecond
		delta   = hc + timeout + margin
		x       = 1 // the node killed
	)
	servers := redistest.Start(t, 3)
	src := newSource()
	h := newHistory()
	a, b := writerAndReader(t, servers, src, hc, timeout)
	xkeys := ownedKeys(a, "x", 8, x)
	isX := keySet(xkeys)
	keys := append(ownedKeys(a, "o", 4, 0, 2), xkeys...)
	w := newVersionWriter(a, src, h)
	seedVersions(t, w, b, keys)
	ctx := context.Background()

	// B holds near-cache copies of X's keys, and X is confirmed (see MaxStaleness).
	for _, k := range xkeys {
		waitLocal(t, b, k)
	}
	// While X is confirmed, every read of its keys is a near hit. A confirmation can
	// lapse for a moment when the machine stalls the subscriber (its pongs late by more
	// than MaxStaleness): the reads then go to X, correctly, and are tried again.
	waitFor(t, "B to read X's keys from its near-cache", func() bool {
		s0 := b.Stats()
		for _, k := range xkeys {
			if v, err := b.Get(ctx, k); err != nil || v != "1" {
				t.Fatalf("B.Get(%q) = %q, %v", k, v, err)
			}
		}
		s := b.Stats()
		if s.Loads != s0.Loads {
			t.Fatalf("B loaded X's keys (%d loads); want near or shared hits", s.Loads-s0.Loads)
		}
		return s.LocalHits-s0.LocalHits == uint64(len(xkeys)) && s.RemoteHits == s0.RemoteHits
	})
	epochKey := "t" + t.Name() + ":invalidate:epoch"
	epochBefore, err := servers[x].Do(ctx, "GET", epochKey)
	if err != nil {
		t.Fatal(err)
	}

	readers := startReaders(t, b, h, keys, 3, time.Millisecond)
	base := b.Stats()

	killAt := time.Now()
	if err := servers[x].Kill(); err != nil {
		t.Fatal(err)
	}
	downAt := waitFor(t, "B marks X down", func() bool { return !b.local.Up(x) })

	// A writes version 2 of X's keys, retrying until its Sets succeed (its clients
	// reconnect once X is back), while X is restarted empty on its port.
	var failedSets atomic.Int64
	var lastAck atomic.Int64
	writeErr := make(chan error, 1)
	var wwg sync.WaitGroup
	wwg.Go(func() {
		deadline := time.Now().Add(20 * time.Second)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for _, k := range xkeys {
			ver := w.next(k)
			for {
				at, err := w.set(ctx, k, ver)
				if err == nil {
					lastAck.Store(at.UnixNano())
					break
				}
				failedSets.Add(1)
				if time.Now().After(deadline) {
					writeErr <- fmt.Errorf("A.Set(%q) still failing: %w", k, err)
					return
				}
				<-tick.C
			}
		}
	})
	// Keep X dead until A's Set has failed and B has read X's keys meanwhile.
	waitFor(t, "A's Set failing and B reading X's keys while X is dead", func() bool {
		return failedSets.Load() > 0 && h.readsSince(downAt, isX) >= 5
	})
	deadStats := b.Stats()
	restartAt := time.Now()
	if err := servers[x].Restart(); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	upAt := waitFor(t, "B re-subscribed to X", func() bool { return b.local.Up(x) })
	wwg.Wait()
	close(writeErr)
	if err := <-writeErr; err != nil {
		t.Fatal(err)
	}
	acked := time.Unix(0, lastAck.Load())

	// Two more rounds through the healed node, then reads more than Δ after the last.
	writeAll(t, w, xkeys)
	last := writeAll(t, w, xkeys)
	finish(t, w, b, h, readers, keys, last.Add(delta), isX, 200)

	epochAfter, err := servers[x].Do(ctx, "GET", epochKey)
	if err != nil {
		t.Fatal(err)
	}
	s := b.Stats()
	logStats(t, "B", s)
	t.Logf("X killed: B marked it down after %v; restart took %v; A's Sets failed %d times, the last of version 2 acknowledged %v after the restart; "+
		"B up again %v after the restart; X's epoch %v -> %v; Δ = %v",
		downAt.Sub(killAt).Round(time.Microsecond), restarted.Sub(restartAt).Round(time.Millisecond), failedSets.Load(),
		acked.Sub(restarted).Round(time.Millisecond), upAt.Sub(restarted).Round(time.Millisecond), epochBefore, epochAfter, delta)
	t.Logf("while X was dead: B's loads +%d, remote errors +%d",
		deadStats.Loads-base.Loads, deadStats.RemoteErrors-base.RemoteErrors)
	all := h.analyze(time.Time{}, time.Time{}, delta, nil)
	dead := h.analyze(downAt, restarted, delta, isX)
	healing := h.analyze(restarted, upAt, delta, isX)
	after := h.analyze(upAt, time.Time{}, delta, isX)
	t.Logf("all reads: %v", all)
	t.Logf("X's keys from detection until the restart: %v", dead)
	t.Logf("X's keys from the restart until B re-subscribed: %v", healing)
	t.Logf("X's keys after heal: %v", after)

	if all.stale > 0 {
		t.Errorf("%d stale reads by more than Δ=%v", all.stale, delta)
	}
	if dead.staleAny+healing.staleAny > 0 {
		t.Errorf("%d reads of X's keys older than an acknowledged write while B had X down", dead.staleAny+healing.staleAny)
	}
	// While X was dead B served what it held of X until X's last confirmation was
	// MaxStaleness (readerStale) old, then loaded X's keys: it had to load them if X
	// stayed dead longer than that.
	if deadStats.Loads == base.Loads && restartAt.Sub(downAt) > readerStale(hc)+local.Tick+margin {
		t.Errorf("B did not load X's keys while X was dead for %v", restartAt.Sub(downAt))
	}
	if s.SubscriptionsLost == base.SubscriptionsLost || s.FlushesResubscribe == base.FlushesResubscribe {
		t.Errorf("B's stats show no lost subscription and resubscription flush: before %+v, after %+v", base, s)
	}
	if epochBefore == epochAfter {
		t.Errorf("X's epoch did not change across the restart (%v)", epochAfter)
	}
	// A's and B's pools dialled the dead node: go-redis's dial circuit breaker
	// (ConnPool.tryDial) probes once a second and ends on a successful dial, which
	// X now allows. It does not watch Close, so let it finish before the clients
	// are closed and goleak looks.
	waited := waitGoroutinesGone(t, "(*ConnPool).tryDial", 5*time.Second)
	t.Logf("waited %v for go-redis's dial probes (ConnPool.tryDial) to end", waited.Round(time.Millisecond))
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
