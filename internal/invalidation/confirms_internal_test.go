package invalidation

import (
	"fmt"
	"testing"
	"time"
)

// A Cluster's node is confirmed at the oldest of its masters' latest confirmations and
// the subscription's pong, and not at all until each of them has confirmed once.
func TestMasterConfirmsOldest(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	msg := func(addr string, ms int) string { return fmt.Sprintf("%s %d", addr, at(ms).UnixNano()) }
	mc := &masterConfirms{at: map[string]time.Time{}}
	check := func(what string, got, want time.Time) {
		t.Helper()
		if !got.Equal(want) {
			t.Errorf("%s: confirmed at %v, want %v", what, got, want)
		}
	}
	check("a confirmation before any round", mc.message(msg("a", 1)), time.Time{})
	mc.round([]string{"a", "b"})
	check("a pong while b never confirmed", mc.pong(at(3)), time.Time{})
	check("b confirms", mc.message(msg("b", 2)), at(1))
	check("a confirms later", mc.message(msg("a", 4)), at(2))
	check("a late, older confirmation of a", mc.message(msg("a", 0)), at(2))
	check("b confirms later", mc.message(msg("b", 5)), at(3)) // the pong is the oldest now
	check("the next pong", mc.pong(at(6)), at(4))
	check("not a confirmation", mc.message("a"), time.Time{})
	check("a bad time", mc.message("a x"), time.Time{})
	mc.round([]string{"a", "b", "c"}) // a new master: nothing is confirmed until it is
	check("c never confirmed", mc.message(msg("a", 7)), time.Time{})
	check("c confirms", mc.message(msg("c", 8)), at(5))
	mc.round([]string{"a", "c"}) // b is gone
	check("without b", mc.pong(at(9)), at(7))
	if _, ok := mc.at["b"]; ok {
		t.Error("a master gone from the round is still remembered")
	}
}
