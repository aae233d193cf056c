package local

import (
	"testing"
	"time"
)

// A stored entry is served at once, from the stage, before ristretto has it; the
// fences apply to it there; a flush moves it into ristretto without a gap.
func TestStagedEntryServedAndFenced(t *testing.T) {
	c := newCache(t)
	h := c.Hash("k")
	if !c.Store(c.Fence(h, 0), "k", "v", false, 1, time.Minute, Never) {
		t.Fatal("Store refused a valid fence")
	}
	if v, _, ok, _ := c.Lookup(h, "k"); !ok || v != "v" {
		t.Fatalf("Lookup right after Store = %q, %v; want the staged entry", v, ok)
	}
	if n := testing.AllocsPerRun(100, func() { c.Lookup(h, "k") }); n != 0 {
		t.Errorf("Lookup of a staged entry allocates %v times", n)
	}
	if _, _, ok, _ := c.Lookup(h, "other"); ok {
		t.Error("a staged entry served for another key of the same hash")
	}
	c.Invalidate(h)
	if _, _, ok, _ := c.Lookup(h, "k"); ok {
		t.Error("a staged entry served after its key was invalidated")
	}
	h2 := c.Hash("k2")
	c.Store(c.Fence(h2, 0), "k2", "v2", false, 1, time.Minute, Never)
	c.Wait() // flushes the stage into ristretto
	if c.staged.Load() != 0 {
		t.Errorf("%d entries left on the stage after Wait", c.staged.Load())
	}
	if v, _, ok, _ := c.Lookup(h2, "k2"); !ok || v != "v2" {
		t.Fatalf("Lookup after the flush = %q, %v", v, ok)
	}
	c.FlushNode(0)
	if _, _, ok, _ := c.Lookup(h2, "k2"); ok {
		t.Error("an entry served after its node was flushed")
	}
}

// A shard that fills up is flushed by the caller that filled it: the stage stays
// bounded without the clock.
func TestStageBounded(t *testing.T) {
	c := newCache(t)
	for i := range stageShards * stageFlushAt * 2 {
		k := string(rune('a'+i%26)) + time.Duration(i).String()
		h := c.Hash(k)
		c.Store(c.Fence(h, 0), k, "v", false, 1, time.Minute, Never)
	}
	if n := c.staged.Load(); n > stageShards*stageFlushAt {
		t.Errorf("%d entries staged, want at most %d", n, stageShards*stageFlushAt)
	}
}

// A closed near-cache serves nothing, staged entries included.
func TestClosedServesNothing(t *testing.T) {
	c := newCache(t)
	h := c.Hash("k")
	c.Store(c.Fence(h, 0), "k", "v", false, 1, time.Minute, Never)
	c.Close()
	if _, _, ok, _ := c.Lookup(h, "k"); ok {
		t.Error("Lookup after Close served a staged entry")
	}
}
