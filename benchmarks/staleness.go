package benchmarks

import (
	"sort"
	"sync"
	"time"
)

const checkerStripes = 4096

// Checker judges reads against the writes acknowledged before them. A read of a key
// that starts at t is stale with respect to a bound Δ when it returns an older version
// than the newest write of the key acknowledged more than Δ before t: the system had
// Δ to make that write visible everywhere and did not. Equivalently, when the write
// that replaced the version it returned was acknowledged more than Δ before t; Age
// returns that time, so one pass judges a read against every Δ.
//
// The writes of one key must be serialised, so that its versions are acknowledged in
// order.
type Checker struct {
	start time.Time
	base  []uint64 // per key: the version every replica must see from the start on

	mu   [checkerStripes]sync.Mutex // protect acks of the keys in the stripe
	acks [][]ack                    // per key, in version and time order
}

type ack struct {
	ver uint64
	at  time.Duration // since start
}

// NewChecker returns a checker for keys 0..len(base)-1 whose versions base[i] were
// acknowledged before it starts.
func NewChecker(base []uint64) *Checker {
	return &Checker{start: time.Now(), base: base, acks: make([][]ack, len(base))}
}

// Now returns the time since the checker started, on the monotonic clock.
func (c *Checker) Now() time.Duration { return time.Since(c.start) }

// Acked records that the write of version ver of key i was acknowledged at at.
func (c *Checker) Acked(i int, ver uint64, at time.Duration) {
	m := &c.mu[i%checkerStripes]
	m.Lock()
	c.acks[i] = append(c.acks[i], ack{ver, at})
	m.Unlock()
}

// Age judges a read of key i that started at t and returned version ver. If a write
// acknowledged before t had replaced ver, superseded is true and age is how long
// before t the first such write was acknowledged (for a version older than the
// starting one, the time since the checker started). The read is stale with respect
// to Δ when superseded && age > Δ.
func (c *Checker) Age(i int, ver uint64, t time.Duration) (age time.Duration, superseded bool) {
	if ver < c.base[i] {
		return t, true
	}
	m := &c.mu[i%checkerStripes]
	m.Lock()
	defer m.Unlock()
	a := c.acks[i]
	k := sort.Search(len(a), func(k int) bool { return a[k].ver > ver })
	if k == len(a) || a[k].at >= t {
		return 0, false
	}
	return t - a[k].at, true
}

// staleAfter reports whether a read that Age judged (age, superseded) is stale with
// respect to delta.
func staleAfter(age time.Duration, superseded bool, delta time.Duration) bool {
	return superseded && age > delta
}
