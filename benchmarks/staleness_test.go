package benchmarks

import (
	"testing"
	"time"
)

func TestCheckerStaleness(t *testing.T) {
	ms := time.Millisecond
	c := NewChecker(100*ms, []uint64{3, 0})
	// Key 0 starts at version 3; versions 4 and 5 are acknowledged at 10 ms and 300 ms.
	c.Acked(0, 4, 10*ms)
	c.Acked(0, 5, 300*ms)

	for _, tc := range []struct {
		name  string
		ver   uint64
		at    time.Duration
		stale bool
		age   time.Duration
	}{
		{"the starting version before any write is due", 3, 50 * ms, false, 0},
		{"an old version within delta of its replacement", 3, 110 * ms, false, 0},
		{"an old version past delta of its replacement", 3, 111 * ms, true, 101 * ms},
		{"the version due", 4, 350 * ms, false, 0},
		{"a version acknowledged after the read started", 5, 20 * ms, false, 0},
		{"two versions behind", 3, 450 * ms, true, 440 * ms},
		{"one version behind", 4, 450 * ms, true, 150 * ms},
		{"older than the starting version", 2, 5 * ms, true, 5 * ms},
	} {
		stale, age := c.Check(0, tc.ver, tc.at)
		if stale != tc.stale || age != tc.age {
			t.Errorf("%s: Check(v%d at %v) = %v, %v; want %v, %v", tc.name, tc.ver, tc.at, stale, age, tc.stale, tc.age)
		}
	}
	if stale, _ := c.Check(1, 0, time.Hour); stale {
		t.Error("a key never written is stale")
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
