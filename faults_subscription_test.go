package tiered

// Fault: the subscription to a node is lost while the node itself stays up (its
// pub/sub clients killed, or the re-subscription refused). C4 (lost messages: a dropped
// subscription, a sequence gap or a new epoch flushes the node's near-cache entries;
// while a node's subscriber is down its keys are not served from the near-cache) and
// C7 (a Get with a Loader never fails) hold throughout. The harness is in
// faults_harness_test.go.

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tieredcache/tiered/internal/local"
	"github.com/tieredcache/tiered/internal/redistest"
)

// TestC4ClientKillUnderLoad kills every pub/sub client of every node every 200 ms for
// 3 s while A writes and B reads: no read of B is more than Δ stale, during the kills
// or after, and B ends with A's last writes.
func TestC4ClientKillUnderLoad(t *testing.T) {
	const (
		hc      = 100 * time.Millisecond
		timeout = 500 * time.Millisecond
		margin  = 400 * time.Millisecond // -race on a loaded 2-core machine
		delta   = hc + timeout + margin
	)
	servers := redistest.Start(t, 3)
	src := newSource()
	h := newHistory()
	a, b := writerAndReader(t, servers, src, hc, timeout)
	keys := ownedKeys(a, "hot", 7, 0, 1, 2)[:20]
	w := newVersionWriter(a, src, h)
	seedVersions(t, w, b, keys)

	writers := startWriters(t, w, keys, 4, 5*time.Millisecond)
	readers := startReaders(t, b, h, keys, 4, 500*time.Microsecond)
	base := b.Stats()
	waitFor(t, "B serving from its near-cache and receiving invalidations", func() bool {
		s := b.Stats()
		return s.LocalHits-base.LocalHits >= 500 && s.InvalidationsReceived-base.InvalidationsReceived >= 200
	})

	// Kill every pub/sub client of every node every 200 ms for 3 s.
	ctx := context.Background()
	killStart := time.Now()
	var kills atomic.Int64
	killErrs := make(chan error, 45)
	var kwg sync.WaitGroup
	kwg.Go(func() {
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for i := range 15 {
			if i > 0 {
				<-tick.C
			}
			for _, s := range servers {
				if err := s.KillPubSubClients(ctx); err != nil {
					killErrs <- err
				} else {
					kills.Add(1)
				}
			}
		}
	})
	kwg.Wait()
	close(killErrs)
	for err := range killErrs {
		t.Errorf("KillPubSubClients: %v", err)
	}
	killEnd := time.Now()
	upAt := waitFor(t, "B's nodes all up again after the kills", func() bool { return allUp(b) })

	// A last round of writes; then reads until some start more than Δ after it.
	writers.stop()
	lastAck := writeAll(t, w, keys)
	finish(t, w, b, h, readers, keys, lastAck.Add(delta), nil, 400)

	s := b.Stats()
	logStats(t, "B", s)
	t.Logf("%d CLIENT KILL TYPE pubsub over %v; B's nodes all up %v after the last kill; A's write errors %d; Δ = %v",
		kills.Load(), killEnd.Sub(killStart).Round(time.Millisecond), upAt.Sub(killEnd).Round(time.Millisecond), writers.errs.Load(), delta)
	before := h.analyze(time.Time{}, killStart, delta, nil)
	during := h.analyze(killStart, upAt, delta, nil)
	after := h.analyze(upAt, time.Time{}, delta, nil)
	final := h.analyze(lastAck.Add(delta), time.Time{}, delta, nil)
	t.Logf("before the kills: %v", before)
	t.Logf("kill phase (until all up): %v", during)
	t.Logf("after heal: %v", after)
	t.Logf("starting > Δ after the last ack: %v", final)

	if s.SubscriptionsLost-base.SubscriptionsLost == 0 {
		t.Errorf("B lost no subscription: the kills did not reach it")
	}
	if s.FlushesResubscribe-base.FlushesResubscribe == 0 {
		t.Errorf("B never re-subscribed")
	}
	if during.stale > 0 {
		t.Errorf("%d stale reads by more than Δ=%v during the kill phase", during.stale, delta)
	}
	if after.stale > 0 || final.staleAny > 0 {
		t.Errorf("stale reads after heal: %d by more than Δ=%v; %d starting more than Δ after the last ack", after.stale, delta, final.staleAny)
	}
	if w := writers.errs.Load(); w > 0 {
		t.Errorf("A's Set failed %d times", w)
	}
}

// TestC4LostSubscriptionBypass kills B's subscription to one node while the node keeps
// answering reads, and holds the re-subscription unconfirmed deterministically: B's
// ACL user is refused the node's channels (SUBSCRIBE fails with NOPERM) until they
// are granted again. A's invalidations cannot reach B meanwhile, so only the bypass
// keeps B fresh.
func TestC4LostSubscriptionBypass(t *testing.T) {
	const (
		hc      = 100 * time.Millisecond
		timeout = time.Second
		x       = 2
		margin  = 300 * time.Millisecond // -race on a loaded 2-core machine
	)
	servers := redistest.Start(t, 3)
	ctx := context.Background()
	for _, s := range servers {
		if _, err := s.Do(ctx, "ACL", "SETUSER", "reader", "on", ">pw", "~*", "&*", "+@all"); err != nil {
			t.Fatal(err)
		}
	}
	src := newSource()
	h := newHistory()
	a, b := writerAndReader(t, servers, src, hc, timeout, func(_ int, o *redis.Options) {
		o.Username, o.Password = "reader", "pw"
	})
	k := ownedKeys(a, "x", 1, x)[0]
	other := ownedKeys(a, "o", 1, (x+1)%3)[0]
	w := newVersionWriter(a, src, h)
	seedVersions(t, w, b, []string{k, other})
	waitLocal(t, b, k)
	waitLocal(t, b, other)
	noperm := func() int {
		info, err := servers[x].Do(ctx, "INFO", "errorstats")
		if err != nil {
			t.Fatal(err)
		}
		_, rest, _ := strings.Cut(info.(string), "errorstat_NOPERM:count=")
		n, _ := strconv.Atoi(strings.TrimSpace(strings.SplitN(rest, "\r\n", 2)[0]))
		return n
	}

	s0 := b.Stats()
	revokeAt := time.Now()
	if _, err := servers[x].Do(ctx, "ACL", "SETUSER", "reader", "resetchannels"); err != nil {
		t.Fatal(err)
	}
	if err := servers[x].KillPubSubClients(ctx); err != nil {
		t.Fatal(err)
	}
	downAt := waitFor(t, "B marks X down", func() bool { return !b.local.Up(x) })
	// B's subscriber has tried again, and been refused, at least twice.
	waitFor(t, "B's re-subscriptions refused", func() bool { return noperm() >= 2 })
	s1 := b.Stats()
	if s1.SubscriptionsLost != s0.SubscriptionsLost+1 || s1.FlushesResubscribe != s0.FlushesResubscribe {
		t.Fatalf("after the kill: SubscriptionsLost %d -> %d, FlushesResubscribe %d -> %d; want +1 and +0",
			s0.SubscriptionsLost, s1.SubscriptionsLost, s0.FlushesResubscribe, s1.FlushesResubscribe)
	}
	// What B holds of X is served until X's last confirmation is MaxStaleness old
	// (readerStale, see writerAndReader), no longer.
	expired := waitFor(t, "X's last confirmation expires in B", func() bool { return !b.local.Fresh(x) })
	if late := expired.Sub(downAt); late > readerStale(hc)+local.Tick+margin {
		t.Errorf("B served X's entries %v after marking it down, more than MaxStaleness %v + a tick + margin", late, readerStale(hc))
	}
	hk := b.local.Hash(k)
	b.local.Wait()
	if _, _, ok, _ := b.local.Lookup(hk, k); ok {
		t.Fatalf("%q still served from B's near-cache after its node's subscription was lost and MaxStaleness passed", k)
	}

	// Every read of k goes to the node and sees A's last write at once.
	const rounds = 20
	for i := range rounds {
		ver, _, err := w.write(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		for range 2 {
			if v, err := b.Get(ctx, k); err != nil || v != strconv.Itoa(ver) {
				t.Fatalf("round %d: B.Get(%q) = %q, %v; want %d (no invalidation can reach B)", i, k, v, err, ver)
			}
		}
		b.local.Wait()
		if _, _, ok, _ := b.local.Lookup(hk, k); ok {
			t.Fatalf("round %d: B stored %q in its near-cache while X was down", i, k)
		}
		if b.local.Up(x) {
			t.Fatalf("round %d: B marked X up while its SUBSCRIBE is refused", i)
		}
	}
	s2 := b.Stats()
	if s2.LocalHits != s1.LocalHits || s2.RemoteHits-s1.RemoteHits != 2*rounds ||
		s2.InvalidationsReceived != s1.InvalidationsReceived || s2.FlushesResubscribe != s0.FlushesResubscribe {
		t.Fatalf("while X was down: local hits +%d (want 0), remote hits +%d (want %d), invalidations received +%d (want 0), FlushesResubscribe +%d (want 0)",
			s2.LocalHits-s1.LocalHits, s2.RemoteHits-s1.RemoteHits, 2*rounds, s2.InvalidationsReceived-s1.InvalidationsReceived, s2.FlushesResubscribe-s0.FlushesResubscribe)
	}
	// Another node's keys are still served from the near-cache (tried again if that
	// node's confirmation lapsed for a moment under load: see TestC4NodeKillRestart).
	waitFor(t, "B.Get of a healthy node's key to be a near-cache hit", func() bool {
		before := b.Stats().LocalHits
		if v, err := b.Get(ctx, other); err != nil || v != "1" {
			t.Fatalf("B.Get(%q) = %q, %v", other, v, err)
		}
		return b.Stats().LocalHits == before+1
	})
	refused := noperm()

	// Grant the channels again: the next subscription is confirmed, X comes back up,
	// and the near-cache and the invalidations work for k again.
	grantAt := time.Now()
	if _, err := servers[x].Do(ctx, "ACL", "SETUSER", "reader", "allchannels"); err != nil {
		t.Fatal(err)
	}
	upAt := waitFor(t, "B re-subscribed to X", func() bool { return b.local.Up(x) })
	s3 := b.Stats()
	if s3.FlushesResubscribe != s0.FlushesResubscribe+1 || s3.SubscriptionsLost != s1.SubscriptionsLost {
		t.Fatalf("after the grant: FlushesResubscribe +%d, SubscriptionsLost +%d; want +1 and +0",
			s3.FlushesResubscribe-s0.FlushesResubscribe, s3.SubscriptionsLost-s1.SubscriptionsLost)
	}
	waitLocal(t, b, k)
	ver, _, err := w.write(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "B sees A's write after re-subscribing", func() bool {
		v, err := b.Get(ctx, k)
		return err == nil && v == strconv.Itoa(ver)
	})
	s4 := b.Stats()
	if s4.InvalidationsReceived == s3.InvalidationsReceived {
		t.Fatalf("B received no invalidation on the new subscription")
	}
	logStats(t, "B", s4)
	t.Logf("B marked X down %v after the kill; %d SUBSCRIBEs refused while %d writes of A were each read fresh twice from X "+
		"(local hits +0, remote hits +%d, invalidations +0); X up %v after the grant",
		downAt.Sub(revokeAt).Round(time.Microsecond), refused, rounds, s2.RemoteHits-s1.RemoteHits, upAt.Sub(grantAt).Round(time.Millisecond))
}
