package ring_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"testing"

	"github.com/stathat/consistent"

	"github.com/tieredcache/tiered/internal/ring"
)

func names(format string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf(format, i)
	}
	return out
}

func mustNew(t testing.TB, nodes []string, replicas int) *ring.Ring {
	t.Helper()
	r, err := ring.New(nodes, replicas)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// keySets yields 10^6 keys per set; shared by the distribution and movement tests.
var keySets = []struct {
	name string
	key  func(i int, rng *rand.Rand) string
}{
	{"key:%d", func(i int, _ *rand.Rand) string { return "key:" + strconv.Itoa(i) }},
	{"ns:user:%d", func(i int, _ *rand.Rand) string { return "ns:user:" + strconv.Itoa(i) }},
	{"random", func(_ int, rng *rand.Rand) string { return strconv.FormatUint(rng.Uint64(), 36) }},
}

const numKeys = 1_000_000

func TestDistribution(t *testing.T) {
	nodeFmts, sets := []string{"redis-%d", "10.0.0.%d:6379"}, keySets
	if raceEnabled {
		nodeFmts, sets = nodeFmts[:1], sets[:1]
	}
	for _, nodeFmt := range nodeFmts {
		for _, n := range []int{3, 5, 10} {
			r := mustNew(t, names(nodeFmt, n), 0)
			for _, ks := range sets {
				rng := rand.New(rand.NewPCG(1, 2))
				load := make([]int, n)
				for i := range numKeys {
					idx, _ := r.Owner(ks.key(i, rng))
					load[idx]++
				}
				ratio := float64(slices.Max(load)) / (float64(numKeys) / float64(n))
				t.Logf("nodes=%-2d names=%-15s keys=%-11s max/mean=%.3f", n, nodeFmt, ks.name, ratio)
				if ratio > 1.10 {
					t.Errorf("nodes=%d names=%s keys=%s: max/mean %.3f > 1.10", n, nodeFmt, ks.name, ratio)
				}
			}
		}
	}
}

// owners returns the owner name of key:0..n-1.
func owners(r *ring.Ring, n int) []string {
	out := make([]string, n)
	for i := range out {
		idx, _ := r.Owner("key:" + strconv.Itoa(i))
		out[i] = r.Name(idx)
	}
	return out
}

func TestMovement(t *testing.T) {
	const n = 200_000
	r := mustNew(t, names("redis-%d", 3), 0)
	before := owners(r, n)

	// Adding a 4th node moves ≈1/4 of keys, all of them to the new node.
	if err := r.Add("redis-3"); err != nil {
		t.Fatal(err)
	}
	added := owners(r, n)
	moved := 0
	for i := range n {
		if added[i] != before[i] {
			moved++
			if added[i] != "redis-3" {
				t.Fatalf("key:%d moved %s → %s, not to the new node", i, before[i], added[i])
			}
		}
	}
	frac := float64(moved) / n
	t.Logf("add 4th node: %.3f of keys moved", frac)
	if frac < 0.20 || frac > 0.30 {
		t.Errorf("add moved %.3f of keys, want in [0.20, 0.30]", frac)
	}

	// Placement depends only on membership, not on how it was reached.
	if fresh := owners(mustNew(t, names("redis-%d", 4), 0), n); !slices.Equal(fresh, added) {
		t.Error("New(4 nodes) and New(3 nodes)+Add disagree on owners")
	}

	// Removing it moves exactly those keys back.
	if err := r.Remove("redis-3"); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(owners(r, n), before) {
		t.Error("removing the added node did not restore the original owners")
	}

	// Removing a middle node moves only its keys and keeps other indexes.
	if err := r.Remove("redis-1"); err != nil {
		t.Fatal(err)
	}
	for i, o := range owners(r, n) {
		if before[i] != "redis-1" && o != before[i] {
			t.Fatalf("key:%d moved %s → %s though its node stayed", i, before[i], o)
		}
		if o == "redis-1" {
			t.Fatalf("key:%d still owned by removed node", i)
		}
	}
	for idx, want := range []string{"redis-0", "", "redis-2", ""} {
		if got := r.Name(idx); got != want {
			t.Errorf("Name(%d) = %q, want %q", idx, got, want)
		}
	}
	if got := r.Nodes(); !slices.Equal(got, []string{"redis-0", "redis-2"}) {
		t.Errorf("Nodes() = %q", got)
	}

	// Indexes are never reused: re-adding gets a new one, same placement.
	if err := r.Add("redis-1"); err != nil {
		t.Fatal(err)
	}
	if idx, ok := r.Index("redis-1"); !ok || idx != 4 {
		t.Errorf("Index(redis-1) after re-add = %d, %v; want 4, true", idx, ok)
	}
	if !slices.Equal(owners(r, n), before) {
		t.Error("re-adding the removed node did not restore the original owners")
	}
}

func TestErrors(t *testing.T) {
	for _, nodes := range [][]string{{"a", "b", "a"}, {"a", ""}} {
		if _, err := ring.New(nodes, 0); err == nil {
			t.Errorf("New(%q) succeeded, want error", nodes)
		}
		if err := ring.Check(nodes); err == nil {
			t.Errorf("Check(%q) = nil, want error", nodes)
		}
	}
	if err := ring.Check([]string{"a", "b"}); err != nil {
		t.Errorf("Check of valid names = %v", err)
	}
	r := mustNew(t, []string{"a", "b"}, 10)
	for _, name := range []string{"a", ""} {
		if err := r.Add(name); err == nil {
			t.Errorf("Add(%q) succeeded, want error", name)
		}
	}
	if err := r.Remove("c"); err == nil {
		t.Error(`Remove("c") succeeded, want error`)
	}
	if err := r.Remove("a"); err != nil {
		t.Fatal(err)
	}
	if err := r.Remove("a"); err == nil {
		t.Error("second Remove succeeded, want error")
	}
	if got := r.Nodes(); !slices.Equal(got, []string{"b"}) {
		t.Errorf("failed calls changed membership: Nodes() = %q", got)
	}
	for _, idx := range []int{-1, 0, 2} {
		if got := r.Name(idx); got != "" {
			t.Errorf("Name(%d) = %q, want empty", idx, got)
		}
	}
}

func TestEmpty(t *testing.T) {
	r := mustNew(t, nil, 0)
	if _, ok := r.Owner("k"); ok {
		t.Error("Owner on empty ring: ok = true")
	}
	if len(r.Nodes()) != 0 {
		t.Errorf("Nodes() = %q, want none", r.Nodes())
	}
	if err := r.Add("a"); err != nil {
		t.Fatal(err)
	}
	if idx, ok := r.Owner("k"); !ok || idx != 0 {
		t.Errorf("Owner on one-node ring = %d, %v; want 0, true", idx, ok)
	}
	if err := r.Remove("a"); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.Owner("k"); ok {
		t.Error("Owner after removing the last node: ok = true")
	}
}

// TestSoleNode: while one node is live, every key is its, whatever the nodes that
// came and went (Owner's shortcut agrees with the ring it skips).
func TestSoleNode(t *testing.T) {
	r := mustNew(t, names("redis-%d", 3), 0)
	for _, n := range []string{"redis-0", "redis-2"} {
		if err := r.Remove(n); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 1000 {
		if idx, ok := r.Owner(strconv.Itoa(i)); !ok || idx != 1 {
			t.Fatalf("Owner(%d) = %d, %v with redis-1 alone; want 1, true", i, idx, ok)
		}
	}
	if err := r.Add("redis-3"); err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for i := range 1000 {
		idx, _ := r.Owner(strconv.Itoa(i))
		seen[idx] = true
	}
	if !seen[1] || !seen[3] || len(seen) != 2 {
		t.Fatalf("owners with redis-1 and redis-3 live: %v", seen)
	}
}

// TestConcurrent is meant for -race: Owner runs while nodes come and go.
func TestConcurrent(t *testing.T) {
	r := mustNew(t, []string{"stable"}, 100)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				idx, ok := r.Owner(fmt.Sprint(g, ":", i))
				if !ok || idx < 0 {
					t.Errorf("Owner = %d, %v", idx, ok)
					return
				}
				_ = r.Name(idx)
			}
		})
	}
	for i := range 200 { // keep up to 4 extra nodes, adding and removing one each round
		if err := r.Add("n" + strconv.Itoa(i)); err != nil {
			t.Error(err)
		}
		if i >= 3 {
			if err := r.Remove("n" + strconv.Itoa(i-3)); err != nil {
				t.Error(err)
			}
		}
		_ = r.Nodes()
	}
	close(stop)
	wg.Wait()
}

func TestOwnerAllocatesAtMostOnce(t *testing.T) {
	r := mustNew(t, names("redis-%d", 3), 0)
	key := "ns:user:123456789012345678901234567890" // longer than any small-string buffer
	// stathat hashes the key through a scratch buffer that escapes to the heap:
	// one allocation, and no more.
	if n := testing.AllocsPerRun(1000, func() { r.Owner(key) }); n > 1 {
		t.Errorf("Owner allocates %v times per call, want at most 1", n)
	}
}

const benchKeyMask = 1<<12 - 1

func benchKeys() []string {
	keys := make([]string, benchKeyMask+1)
	for i := range keys {
		keys[i] = "ns:user:" + strconv.Itoa(i*7919)
	}
	return keys
}

func BenchmarkOwner(b *testing.B) {
	for _, n := range []int{1, 3, 10} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			r := mustNew(b, names("redis-%d", n), 0)
			keys := benchKeys()
			for i := 0; b.Loop(); i++ {
				r.Owner(keys[i&benchKeyMask])
			}
		})
	}
}

// BenchmarkStathatGet is the baseline: stathat/consistent with its defaults
// (20 replicas, crc32), which returns a name rather than an index.
func BenchmarkStathatGet(b *testing.B) {
	for _, n := range []int{3, 10} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			c := consistent.New()
			for _, name := range names("redis-%d", n) {
				c.Add(name)
			}
			keys := benchKeys()
			for i := 0; b.Loop(); i++ {
				c.Get(keys[i&benchKeyMask])
			}
		})
	}
}

// Callers keep per-node state in a slice indexed by the node index.
func ExampleRing() {
	r, err := ring.New([]string{"redis-a:6379", "redis-b:6379", "redis-c:6379"}, 0)
	if err != nil {
		panic(err)
	}
	clients := make([]string, len(r.Nodes())) // e.g. one *redis.Client per node
	for i, name := range r.Nodes() {
		clients[i] = "client for " + name
	}

	idx, _ := r.Owner("ns:user:123")
	fmt.Println(clients[idx] == "client for "+r.Name(idx))

	// A new node takes the next index; removed indexes are never reused.
	_ = r.Add("redis-d:6379")
	idx, _ = r.Index("redis-d:6379")
	fmt.Println(idx)
	// Output:
	// true
	// 3
}

// Rings over the same nodes share one stathat ring, whatever the order of their
// names (their indexes differ), and place every key on the same node.
func TestSameMembershipSharesItsRing(t *testing.T) {
	nodes := names("node-%d", 3)
	a := mustNew(t, nodes, 0)
	reversed := slices.Clone(nodes)
	slices.Reverse(reversed)
	b := mustNew(t, reversed, 0)
	if !ring.SharesStathat(a, b) {
		t.Error("two rings over the same nodes built their stathat rings twice")
	}
	for i := range 10000 {
		k := strconv.Itoa(i)
		ia, _ := a.Owner(k)
		ib, _ := b.Owner(k)
		if a.Name(ia) != b.Name(ib) {
			t.Fatalf("key %q: node %q in one ring, %q in the other", k, a.Name(ia), b.Name(ib))
		}
	}
	// A changed membership has a ring of its own; coming back, it shares again.
	if err := b.Remove("node-1"); err != nil {
		t.Fatal(err)
	}
	if ring.SharesStathat(a, b) {
		t.Error("rings over different nodes share a stathat ring")
	}
	if err := b.Add("node-1"); err != nil {
		t.Fatal(err)
	}
	if !ring.SharesStathat(a, b) {
		t.Error("a membership that came back built its stathat ring again")
	}
}
