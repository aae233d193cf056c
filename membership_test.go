package tiered

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tieredcache/tiered/internal/redistest"
)

// TestMembershipWhileServing adds a fourth node to a ring of three and then removes
// one, in two instances, while readers run: about 1/4 of the keys move to the new
// node and only there; no read fails or returns an old value; the new node's
// invalidations reach the other instance (subscriptions follow membership); a write
// through an instance with the new membership invalidates the key for an instance
// still on the old one (the handoff); a removed node is let go after the handoff.
func TestMembershipWhileServing(t *testing.T) {
	srv := redistest.Start(t, 4)
	src := newSource()
	const ttl = 3 * time.Second // also the handoff
	mk := func() *Cache[string] {
		o := ringOpts[string](t, srv[:3])
		o.Loader, o.TTL, o.Namespace = src, ttl, "tmembers"
		return newCache(t, o)
	}
	a, b, old := mk(), mk(), mk() // old never learns of the changes
	cl := redis.NewClient(&redis.Options{Addr: srv[3].Addr(), ContextTimeoutEnabled: true, MaxRetries: -1})
	t.Cleanup(func() { cl.Close() })

	const n = 20000
	keys := make([]string, n)
	before := make([]int, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("member:%d", i)
		src.put(keys[i], "v1")
		before[i] = a.shared.Owner(keys[i])
	}
	// Stale data from an earlier membership on the joining node: must never be read.
	ctx := context.Background()
	for _, k := range keys[:200] {
		if _, err := srv[3].Do(ctx, "SET", "tmembers:{"+k+"}", "stale bytes from long ago"); err != nil {
			t.Fatal(err)
		}
	}

	// Readers on both instances, checking every value against the source. They read
	// the second half of the keys; the writes below are to keys of the first half.
	var reads, bad atomic.Int64
	var firstBad atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 4 {
		c := []*Cache[string]{a, b}[g%2]
		wg.Go(func() {
			for i := g; ; i = (i + 7919) % (n / 2) {
				select {
				case <-stop:
					return
				default:
				}
				k := keys[n/2+i]
				v, err := c.Get(ctx, k)
				reads.Add(1)
				src.mu.Lock()
				want := src.m[k]
				src.mu.Unlock()
				if err != nil || v != want {
					bad.Add(1)
					firstBad.CompareAndSwap(nil, fmt.Sprintf("Get(%q) = %q, %v; want %q", k, v, err, want))
				}
			}
		})
	}
	defer func() { close(stop); wg.Wait() }()

	// Add.
	for _, c := range []*Cache[string]{a, b} {
		start := time.Now()
		if err := c.AddNode(ctx, Node{Name: "node-3", Client: cl}); err != nil {
			t.Fatalf("AddNode: %v", err)
		}
		t.Logf("AddNode took %v", time.Since(start).Round(time.Millisecond))
	}
	moved, elsewhere := 0, 0
	var movedKey string
	for i, k := range keys {
		switch now := a.shared.Owner(k); {
		case now == before[i]:
		case now == 3:
			moved++
			if i < n/2 {
				movedKey = k
			}
		default:
			elsewhere++
		}
	}
	frac := float64(moved) / n
	t.Logf("adding a 4th node moved %d of %d keys (%.3f), %d elsewhere", moved, n, frac, elsewhere)
	if elsewhere != 0 || frac < 0.18 || frac > 0.32 {
		t.Errorf("moved %.3f of the keys to the new node and %d between old nodes; want about 1/4 and 0", frac, elsewhere)
	}
	for _, k := range keys[:200] {
		if a.shared.Owner(k) == 3 {
			if v, err := a.Get(ctx, k); err != nil || v != "v1" {
				t.Errorf("Get(%q) after the join = %q, %v: the node's old data was not cleared", k, v, err)
			}
		}
	}

	// Subscriptions follow: B holds movedKey, A writes it on the new node.
	if v, err := b.Get(ctx, movedKey); err != nil || v != "v1" {
		t.Fatalf("B Get(%q) = %q, %v", movedKey, v, err)
	}
	waitLocal(t, b, movedKey)
	src.put(movedKey, "v2")
	if err := a.Set(ctx, movedKey, "v2"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "B to see A's write on the new node", func() bool {
		v, err := b.Get(ctx, movedKey)
		return err == nil && v == "v2"
	})

	// Handoff: old still routes movedKey to its previous owner.
	for _, write := range []string{"set", "delete"} {
		k := ""
		for i, key := range keys {
			if i < n/2 && a.shared.Owner(key) == 3 && key != movedKey && i%2 == map[string]int{"set": 0, "delete": 1}[write] {
				k = key
				break
			}
		}
		if v, err := old.Get(ctx, k); err != nil || v != "v1" {
			t.Fatalf("old Get(%q) = %q, %v", k, v, err)
		}
		waitLocal(t, old, k)
		src.put(k, "v3")
		var err error
		if write == "set" {
			err = a.Set(ctx, k, "v3")
		} else {
			err = a.Delete(ctx, k)
		}
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the instance on the old membership to see the "+write, func() bool {
			v, err := old.Get(ctx, k)
			return err == nil && v == "v3"
		})
	}

	// Remove node-1.
	for _, c := range []*Cache[string]{a, b} {
		if err := c.RemoveNode(ctx, "node-1"); err != nil {
			t.Fatalf("RemoveNode: %v", err)
		}
	}
	for _, k := range keys {
		if a.shared.Owner(k) == 1 {
			t.Fatalf("%q still owned by the removed node", k)
		}
	}
	waitFor(t, "the removed node's handoff to end", func() bool {
		a.retiredMu.Lock()
		defer a.retiredMu.Unlock()
		return len(a.retired) == 0
	})
	for _, k := range keys[:500] {
		if v, err := a.Get(ctx, k); err != nil || v != src.m[k] {
			t.Errorf("Get(%q) after the removal = %q, %v", k, v, err)
		}
	}

	close(stop)
	wg.Wait()
	stop = make(chan struct{})
	t.Logf("%d reads during the changes, %d failed or wrong; A: %+v", reads.Load(), bad.Load(), a.Stats())
	if bad.Load() > 0 {
		t.Errorf("%d reads failed or returned an old value; first: %v", bad.Load(), firstBad.Load())
	}
	s := a.Stats()
	if s.NodesAdded != 1 || s.NodesRemoved != 1 || s.NodesCleared < 1 {
		t.Errorf("stats: added %d removed %d cleared %d; want 1, 1, >= 1", s.NodesAdded, s.NodesRemoved, s.NodesCleared)
	}
}

func TestMembershipErrors(t *testing.T) {
	srv := redistest.Start(t, 2)
	ctx := context.Background()
	c := newCache(t, Options[string]{Addrs: []string{srv[0].Addr()}, Namespace: "tmerr"})
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"add empty name", c.AddNode(ctx, Node{})},
		{"add a member again", c.AddNode(ctx, Node{Name: srv[0].Addr()})},
		{"remove a stranger", c.RemoveNode(ctx, "nope")},
		{"remove the last node", c.RemoveNode(ctx, srv[0].Addr())},
	} {
		if tc.err == nil {
			t.Errorf("%s: no error", tc.name)
		}
	}
	// By address: the Cache makes the client, and closes it.
	if err := c.AddNode(ctx, Node{Name: srv[1].Addr()}); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveNode(ctx, srv[0].Addr()); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Get(ctx, "k"); err != nil && !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after removal: %q, %v", v, err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.AddNode(ctx, Node{Name: "x:1"}); !errors.Is(err, ErrClosed) {
		t.Errorf("AddNode after Close: %v, want ErrClosed", err)
	}

	cc := redis.NewClient(&redis.Options{Addr: srv[0].Addr(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { cc.Close() })
	single := newCache(t, Options[string]{Client: cc, Namespace: "tmerr2"})
	if err := single.AddNode(ctx, Node{Name: srv[1].Addr()}); err == nil || !strings.Contains(err.Error(), "ring") {
		t.Errorf("AddNode on a Client cache: %v, want an error about the ring", err)
	}
}
