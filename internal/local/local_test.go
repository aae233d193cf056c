package local

import (
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newCache(t *testing.T) *Cache[string] {
	t.Helper()
	c, err := New[string](Config{MaxCost: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// store stores and waits until ristretto has applied it.
func store(t *testing.T, c *Cache[string], f Fence, key, v string) {
	t.Helper()
	if !c.Store(f, key, v, false, int64(len(v)), time.Minute, Never) {
		t.Fatalf("Store(%q) refused with a valid fence", key)
	}
	c.Wait()
}

func get(c *Cache[string], key string) (string, bool) {
	v, _, ok, _ := c.Lookup(c.Hash(key), key)
	return v, ok
}

func TestStoreThenGet(t *testing.T) {
	c := newCache(t)
	h := c.Hash("k")
	store(t, c, c.Fence(h, 0), "k", "v")
	if v, ok := get(c, "k"); !ok || v != "v" {
		t.Fatalf("Get = %q, %v; want v", v, ok)
	}
	if _, ok := get(c, "other"); ok {
		t.Fatal("Get of a key never stored hit")
	}
}

func TestInvalidateFencesFill(t *testing.T) {
	c := newCache(t)
	h := c.Hash("k")
	f := c.Fence(h, 0) // a fill starts
	c.Invalidate(h)    // a write lands while it is in flight
	if c.Store(f, "k", "old", false, 3, time.Minute, Never) {
		t.Fatal("Store accepted a fence taken before an invalidation")
	}
	c.Wait()
	if _, ok := get(c, "k"); ok {
		t.Fatal("the fenced fill is served")
	}
}

// A ristretto Set that lands after the invalidation (it was buffered) is not served.
func TestLateSetNotServed(t *testing.T) {
	c := newCache(t)
	h := c.Hash("k")
	if !c.Store(c.Fence(h, 0), "k", "old", false, 3, time.Minute, Never) {
		t.Fatal("Store refused")
	}
	c.Invalidate(h) // before ristretto has necessarily applied the Set
	c.Wait()        // now it has
	if v, ok := get(c, "k"); ok {
		t.Fatalf("Get = %q after Invalidate; a late Set leaked through", v)
	}
}

func TestReplace(t *testing.T) {
	c := newCache(t)
	h := c.Hash("k")
	store(t, c, c.Fence(h, 0), "k", "v0")

	// One writer: its value replaces the old one.
	f := c.Fence(h, 0)
	if !c.Replace(f, "k", "v1", 2, time.Minute, Never, true) {
		t.Fatal("Replace refused for a lone writer")
	}
	if v, ok := get(c, "k"); !ok || v != "v1" {
		t.Fatalf("Get = %q, %v; want v1", v, ok)
	}

	// Two writers whose writes overlap: neither value may stay, since the shared
	// tier holds the one that wrote last and the order is unknown here.
	f1, f2 := c.Fence(h, 0), c.Fence(h, 0)
	c.Replace(f1, "k", "a", 1, time.Minute, Never, true)
	if c.Replace(f2, "k", "b", 1, time.Minute, Never, true) {
		t.Fatal("Replace accepted a fence that another write overtook")
	}
	if v, ok := get(c, "k"); ok {
		t.Fatalf("Get = %q after overlapping writes, want a miss", v)
	}
}

// A second Replace of a key whose first Set is still buffered must win.
func TestReplaceTwiceNewKey(t *testing.T) {
	c := newCache(t)
	for i := range 1000 {
		key := "k" + string(rune('a'+i%26)) + time.Duration(i).String()
		h := c.Hash(key)
		c.Replace(c.Fence(h, 0), key, "first", 5, time.Minute, Never, false)
		c.Replace(c.Fence(h, 0), key, "second", 6, time.Minute, Never, true)
		if v, ok := get(c, key); !ok || v != "second" {
			t.Fatalf("%s: Get = %q, %v after two Replaces; want second", key, v, ok)
		}
	}
}

func TestFlushNode(t *testing.T) {
	c := newCache(t)
	store(t, c, c.Fence(c.Hash("a"), 1), "a", "on node 1")
	store(t, c, c.Fence(c.Hash("b"), 2), "b", "on node 2")
	f := c.Fence(c.Hash("c"), 1) // a fill from node 1 in flight
	c.FlushNode(1)
	if _, ok := get(c, "a"); ok {
		t.Error("entry of a flushed node is served")
	}
	if _, ok := get(c, "b"); !ok {
		t.Error("entry of another node was flushed")
	}
	if c.Store(f, "c", "x", false, 1, time.Minute, Never) {
		t.Error("a fill from a flushed node was stored")
	}
}

// Node indexes are never reused, so they outgrow any fixed table: node i+1024 (or
// any other) must not share i's generation. Here node 0 is down (its subscriber
// lost) while later nodes whose index is a multiple of 1024 go down and up: node 0
// must stay down, its keys neither stored nor served, and a flush of another node
// must leave node 0's entries alone.
func TestNodeIndexesNeverShareGenerations(t *testing.T) {
	c := newCache(t)
	store(t, c, c.Fence(c.Hash("kept"), 1), "kept", "on node 1")
	c.MarkDown(0)
	for _, other := range []int{1024, 2048, 1 << 20} {
		c.MarkDown(other)
		c.MarkUp(other)
		if !c.Up(other) {
			t.Fatalf("node %d not Up after MarkUp", other)
		}
		if c.Up(0) {
			t.Fatalf("node 0 Up after node %d's MarkUp; it was marked down", other)
		}
		h := c.Hash("k")
		if c.Store(c.Fence(h, 0), "k", "stale", false, 5, time.Minute, Never) {
			t.Fatalf("after node %d's MarkUp, a fill of node 0 (down) was stored", other)
		}
		c.Wait()
		if v, ok := get(c, "k"); ok {
			t.Fatalf("after node %d's MarkUp, node 0 (down) serves %q", other, v)
		}
		c.FlushNode(other + 1)
		if _, ok := get(c, "kept"); !ok {
			t.Fatalf("FlushNode(%d) flushed an entry of node 1", other+1)
		}
	}
	c.MarkUp(0)
	store(t, c, c.Fence(c.Hash("k"), 0), "k", "fresh")
	if v, ok := get(c, "k"); !ok || v != "fresh" {
		t.Fatalf("after node 0's MarkUp: Lookup = %q, %v; want fresh", v, ok)
	}
}

// A key no node owns (a negative index) has a generation of its own.
func TestNoOwnerIsNotANode(t *testing.T) {
	c := newCache(t)
	store(t, c, c.Fence(c.Hash("k"), -1), "k", "v")
	for _, node := range []int{0, 1023} {
		c.MarkDown(node)
		if !c.Up(-1) {
			t.Fatalf("MarkDown(%d) marked the keys of no node down", node)
		}
		if _, ok := get(c, "k"); !ok {
			t.Fatalf("MarkDown(%d) flushed an entry of no node", node)
		}
	}
}

func TestNegativeEntry(t *testing.T) {
	c := newCache(t)
	h := c.Hash("gone")
	c.Store(c.Fence(h, 0), "gone", "", true, 0, time.Minute, Never)
	c.Wait()
	if _, absent, ok, _ := c.Lookup(h, "gone"); !ok || !absent {
		t.Fatalf("Get = absent %v, ok %v; want a negative hit", absent, ok)
	}
}

func TestExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, err := New[string](Config{MaxCost: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		h := c.Hash("k")
		if c.Store(c.Fence(h, 0), "short", "v", false, 1, Tick, Never) {
			t.Fatal("stored an entry whose TTL is within one clock tick")
		}
		// Stored for 100 ms less one Tick; the clock advances in Ticks.
		c.Store(c.Fence(h, 0), "k", "v", false, 1, 100*time.Millisecond, Never)
		c.Wait()
		time.Sleep(50 * time.Millisecond) // fake time: the bubble's clock
		if _, ok := get(c, "k"); !ok {
			t.Fatal("entry expired before its TTL")
		}
		time.Sleep(60 * time.Millisecond)
		if _, ok := get(c, "k"); ok {
			t.Fatal("entry served after its TTL")
		}
	})
}

func TestLookupAllocatesNothing(t *testing.T) {
	c := newCache(t)
	h := c.Hash("k")
	store(t, c, c.Fence(h, 0), "k", "v")
	if n := testing.AllocsPerRun(1000, func() { c.Lookup(h, "k") }); n != 0 {
		t.Fatalf("Lookup allocates %v times", n)
	}
}

func TestConfigErrors(t *testing.T) {
	if _, err := New[string](Config{}); err == nil {
		t.Fatal("New accepted MaxCost 0")
	}
}

func TestMarkDownUp(t *testing.T) {
	c := newCache(t)
	store(t, c, c.Fence(c.Hash("a"), 3), "a", "before")
	c.MarkDown(3)
	if c.Up(3) {
		t.Fatal("Up after MarkDown")
	}
	if _, ok := get(c, "a"); ok {
		t.Fatal("entry of a node marked down is served")
	}
	f := c.Fence(c.Hash("b"), 3)
	if c.Store(f, "b", "while down", false, 1, time.Minute, Never) {
		t.Fatal("stored an entry of a node marked down")
	}
	if c.Replace(f, "b", "while down", 1, time.Minute, Never, true) {
		t.Fatal("Replace stored an entry of a node marked down")
	}
	c.MarkDown(3) // idempotent
	c.MarkUp(3)
	if !c.Up(3) {
		t.Fatal("not Up after MarkUp")
	}
	if _, ok := get(c, "a"); ok {
		t.Fatal("entry from before MarkDown is served after MarkUp")
	}
	store(t, c, c.Fence(c.Hash("b"), 3), "b", "after")
	if v, ok := get(c, "b"); !ok || v != "after" {
		t.Fatalf("Get = %q, %v after MarkUp", v, ok)
	}
}

func TestRefreshDueOnce(t *testing.T) {
	c := newCache(t)
	h := c.Hash("k")
	c.Store(c.Fence(h, 0), "k", "v", false, 1, time.Minute, 0) // due at once
	c.Wait()
	if _, _, ok, due := c.Lookup(h, "k"); !ok || !due {
		t.Fatalf("Lookup = ok %v, due %v; want a hit with a refresh due", ok, due)
	}
	if _, _, ok, due := c.Lookup(h, "k"); !ok || due {
		t.Fatalf("second Lookup = ok %v, due %v; want the refresh reported once", ok, due)
	}
	c.Store(c.Fence(c.Hash("n"), 0), "n", "v", false, 1, time.Minute, Never)
	c.Wait()
	if _, _, _, due := c.Lookup(c.Hash("n"), "n"); due {
		t.Fatal("refresh reported for an entry stored with Never")
	}
}
