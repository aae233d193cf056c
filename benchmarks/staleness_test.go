package benchmarks

import (
	"testing"
	"time"
)

func TestCheckerAge(t *testing.T) {
	const ms = time.Millisecond
	c := NewChecker([]uint64{3, 0})
	// Key 0 starts at version 3; versions 4 and 5 are acknowledged at 10 ms and 300 ms.
	c.Acked(0, 4, 10*ms)
	c.Acked(0, 5, 300*ms)

	for _, tc := range []struct {
		name       string
		ver        uint64
		at         time.Duration
		superseded bool
		age        time.Duration
	}{
		{"the starting version before any write", 3, 5 * ms, false, 0},
		{"the starting version as its replacement is acknowledged", 3, 10 * ms, false, 0},
		{"the starting version just after its replacement", 3, 11 * ms, true, 1 * ms},
		{"the latest version", 4, 250 * ms, false, 0},
		{"a version acknowledged after the read started", 5, 20 * ms, false, 0},
		{"two versions behind", 3, 450 * ms, true, 440 * ms},
		{"one version behind", 4, 450 * ms, true, 150 * ms},
		{"older than the starting version", 2, 5 * ms, true, 5 * ms},
	} {
		age, superseded := c.Age(0, tc.ver, tc.at)
		if superseded != tc.superseded || age != tc.age {
			t.Errorf("%s: Age(v%d at %v) = %v, %v; want %v, %v", tc.name, tc.ver, tc.at, age, superseded, tc.age, tc.superseded)
		}
	}
	if _, superseded := c.Age(1, 0, time.Hour); superseded {
		t.Error("a key never written was superseded")
	}
}

// TestStaleWithin checks the rule the coherence benchmark applies: stale with respect
// to Δ when the replacing write was acknowledged more than Δ before the read began.
func TestStaleWithin(t *testing.T) {
	const ms = time.Millisecond
	c := NewChecker([]uint64{0})
	c.Acked(0, 1, 100*ms)
	for _, tc := range []struct {
		at    time.Duration
		delta time.Duration
		stale bool
	}{
		{150 * ms, 100 * ms, false},
		{200 * ms, 100 * ms, false}, // exactly Δ after: not more than Δ
		{201 * ms, 100 * ms, true},
		{102 * ms, 1 * ms, true},
	} {
		age, superseded := c.Age(0, 0, tc.at)
		if got := staleAfter(age, superseded, tc.delta); got != tc.stale {
			t.Errorf("a read of v0 at %v with Δ = %v: stale = %v, want %v", tc.at, tc.delta, got, tc.stale)
		}
	}
}

func TestValueVersion(t *testing.T) {
	for _, ver := range []uint64{0, 1, 12345678901} {
		if got, ok := parseVersion(makeValue(ver)); !ok || got != ver {
			t.Errorf("parseVersion(makeValue(%d)) = %d, %v", ver, got, ok)
		}
	}
	if _, ok := parseVersion("x"); ok {
		t.Error("parseVersion accepted a value without a version")
	}
}
