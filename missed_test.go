package tiered

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tieredcache/tiered/internal/redistest"
	"github.com/tieredcache/tiered/internal/remote"
)

// missedSetup starts three nodes and two instances A and B (Timeout 100 ms,
// HealthCheck 50 ms, MissedDeletes max), seeds keys owned by node 0 at "v1" in the
// source and both tiers of both instances, pauses node 0 and waits until A's circuit
// breaker for it is open, so that A's writes to it fail at once without reaching it
// (a SIGSTOPped node would still apply a timed-out write on SIGCONT, as it sits in
// its socket buffer).
func missedSetup(t *testing.T, n, maxMissed int) (srv []*redistest.Server, src *source, a, b *Cache[string], keys []string) {
	t.Helper()
	srv = redistest.Start(t, 3)
	src = newSource()
	mk := func() *Cache[string] {
		o := ringOpts[string](t, srv)
		o.Loader, o.Timeout, o.HealthCheck, o.MissedDeletes = src, 100*time.Millisecond, 50*time.Millisecond, maxMissed
		return newCache(t, o)
	}
	a, b = mk(), mk()
	keys = ownedKeys(a, "missed", n, 0)
	ctx := context.Background()
	for _, k := range keys {
		src.put(k, "v1")
		for _, c := range []*Cache[string]{a, b} {
			if v, err := c.Get(ctx, k); err != nil || v != "v1" {
				t.Fatalf("seed Get(%q) = %q, %v", k, v, err)
			}
		}
	}
	if err := srv[0].Pause(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv[0].Resume() })
	// Until A notices the node down (HealthCheck + Timeout) its near-cache answers;
	// then each read of the node times out, and the third opens the breaker.
	deadline := time.Now().Add(5 * time.Second)
	for i := 0; a.Stats().BreakerOpens == 0; i++ {
		if time.Now().After(deadline) {
			t.Fatal("A's breaker for the paused node never opened")
		}
		a.Get(ctx, keys[i%len(keys)])
	}
	return srv, src, a, b, keys
}

// TestMissedDeletesReplayed: a Delete or Set that cannot reach its node returns an
// error, and the key is deleted there (with its invalidation) as soon as the node
// answers, before this instance reads that node again. A node paused, keys written,
// the node resumed: this instance never reads the old value; another instance reads
// it at most until the replay's invalidation reaches it, and never after.
func TestMissedDeletesReplayed(t *testing.T) {
	srv, src, a, b, keys := missedSetup(t, 20, 0)
	ctx := context.Background()
	for i, k := range keys {
		var err error
		if i%2 == 0 {
			src.put(k, "v2")
			err = a.Set(ctx, k, "v2")
		} else {
			src.del(k)
			err = a.Delete(ctx, k)
		}
		if !errors.Is(err, remote.ErrNodeUnavailable) {
			t.Fatalf("write of %q to a node behind an open breaker: err = %v, want ErrNodeUnavailable", k, err)
		}
	}
	fresh := func(k, v string, err error) bool {
		want, ok := src.m[k]
		if !ok {
			return errors.Is(err, ErrNotFound)
		}
		return err == nil && v == want
	}

	resumed := time.Now()
	if err := srv[0].Resume(); err != nil {
		t.Fatal(err)
	}
	var staleA, readsA, staleB, readsB int
	var lastStaleB time.Duration
	replayed := time.Time{}
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); {
		if replayed.IsZero() && a.Stats().WritesReplayed >= uint64(len(keys)) {
			replayed = time.Now()
		}
		for _, k := range keys {
			v, err := a.Get(ctx, k)
			readsA++
			src.mu.Lock()
			if !fresh(k, v, err) {
				t.Errorf("A read %q = %q, %v after its write failed", k, v, err)
			}
			src.mu.Unlock()
			v, err = b.Get(ctx, k)
			readsB++
			src.mu.Lock()
			if !fresh(k, v, err) {
				staleB++
				lastStaleB = time.Since(resumed)
			}
			src.mu.Unlock()
		}
	}
	if replayed.IsZero() {
		t.Fatalf("missed writes not replayed 3 s after the node resumed: %+v", a.Stats())
	}
	t.Logf("replayed %d keys %v after resume; A: %d stale of %d reads; B: %d stale of %d reads, the last %v after resume",
		a.Stats().WritesReplayed, replayed.Sub(resumed).Round(time.Millisecond), staleA, readsA, staleB, readsB, lastStaleB.Round(time.Millisecond))
	if staleB > 0 && lastStaleB > replayed.Sub(resumed)+time.Second {
		t.Errorf("B read an old value %v after resume, long after the replay at %v", lastStaleB, replayed.Sub(resumed))
	}
	// After the replay nothing of the old values is left in Redis.
	for _, k := range keys {
		got, err := srv[0].Do(ctx, "GET", redisKey(a, k))
		if err == nil && got != nil && strings.Contains(fmt.Sprint(got), "v1") {
			t.Errorf("node still holds the old value of %q", k)
		}
	}
}

// TestMissedDeletesOverflow: past MissedDeletes keys the node is dirty: it is
// cleared of the namespace's keys (SCAN + UNLINK), other namespaces untouched, and
// every instance flushes its near-cache entries of the node.
func TestMissedDeletesOverflow(t *testing.T) {
	srv, src, a, b, keys := missedSetup(t, 30, 5)
	ctx := context.Background()
	other := "other:{x}" // another namespace's key on the node, written at resume: kept
	for _, k := range keys {
		src.put(k, "v2")
		if err := a.Delete(ctx, k); err == nil {
			t.Fatalf("Delete(%q) on a node behind an open breaker succeeded", k)
		}
	}
	beforeB := b.Stats()
	if err := srv[0].Resume(); err != nil {
		t.Fatal(err)
	}
	if _, err := srv[0].Do(ctx, "SET", other, "kept"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the dirty node cleared", func() bool {
		for _, k := range keys {
			if v, err := a.Get(ctx, k); err != nil || v != "v2" {
				t.Errorf("A read %q = %q, %v after its delete failed", k, v, err)
			}
		}
		return a.Stats().NodesCleared >= 1
	})
	// B flushes the node's entries on the clear's flush message, or, if B re-subscribes
	// only after A published it (B's reconnect backoff reaches 1 s while the node is
	// paused), on its re-subscription: either way before it serves them again.
	waitFor(t, "B's flush of the node", func() bool {
		s := b.Stats()
		return s.FlushesCleared > beforeB.FlushesCleared || s.FlushesResubscribe > beforeB.FlushesResubscribe
	})
	for _, k := range keys {
		if v, err := b.Get(ctx, k); err != nil || v != "v2" {
			t.Errorf("B read %q = %q, %v after the node was cleared", k, v, err)
		}
	}
	if got, err := srv[0].Do(ctx, "GET", other); err != nil || got != "kept" {
		t.Errorf("a key outside the namespace: %v, %v; want it kept", got, err)
	}
	t.Logf("A: %+v", a.Stats())
}
