package benchmarks

import (
	"sort"
	"sync"
	"time"
)

const checkerStripes = 4096

// Checker judges reads against the writes acknowledged before them. A read of a key
// that starts at t is stale when it returns an older version than the newest write of
// the key acknowledged more than Delta before t: the system had Delta to make that
// write visible everywhere and did not. The writes of one key must be serialised, so
// that its versions are acknowledged in order.
type Checker struct {
	Delta time.Duration
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
func NewChecker(delta time.Duration, base []uint64) *Checker {
	return &Checker{Delta: delta, start: time.Now(), base: base, acks: make([][]ack, len(base))}
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

// Check judges a read of key i that started at t and returned version ver. If it is
// stale, age is how long before t the write that replaced ver was acknowledged (for a
// version older than the starting one, the time since the checker started).
func (c *Checker) Check(i int, ver uint64, t time.Duration) (stale bool, age time.Duration) {
	m := &c.mu[i%checkerStripes]
	m.Lock()
	defer m.Unlock()
	a := c.acks[i]
	cutoff := t - c.Delta
	required := c.base[i]
	if j := sort.Search(len(a), func(k int) bool { return a[k].at >= cutoff }) - 1; j >= 0 {
		required = max(required, a[j].ver)
	}
	if ver >= required {
		return false, 0
	}
	if ver < c.base[i] {
		return true, t
	}
	k := sort.Search(len(a), func(k int) bool { return a[k].ver > ver })
	return true, t - a[k].at
}
