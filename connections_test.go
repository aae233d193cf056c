package tiered

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tieredcache/tiered/internal/redistest"
)

func newShared(t *testing.T, o SharedOptions) *Shared {
	t.Helper()
	if o.Timeout == 0 {
		o.Timeout = 2 * time.Second // generous: -race on a loaded 2-core machine
	}
	sh, err := NewShared(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sh.Close() })
	return sh
}

func addrsOf(servers []*redistest.Server) []string {
	var addrs []string
	for _, s := range servers {
		addrs = append(addrs, s.Addr())
	}
	return addrs
}

// pubsubClients returns the pub/sub connections srv has.
func pubsubClients(t *testing.T, srv *redistest.Server) int {
	t.Helper()
	out, err := srv.Do(context.Background(), "CLIENT", "LIST", "TYPE", "pubsub")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(fmt.Sprint(out), "id=")
}

type profile struct {
	Name string
	Age  int
}

// TestSharedConnections: five Caches of three value types and five namespaces on
// one Shared open one pub/sub connection per node and use one client per node; each
// keeps its namespace's values and invalidations to itself; another process's
// write reaches the right Cache; closing them leaves the connections to the Shared,
// whose Close ends them.
func TestSharedConnections(t *testing.T) {
	srv := redistest.Start(t, 3)
	sh := newShared(t, SharedOptions{Addrs: addrsOf(srv)})
	load := func(ns string) LoaderFunc[string] {
		return func(_ context.Context, k string) (string, error) { return ns + ":" + k, nil }
	}
	var strs []*Cache[string]
	for i := range 3 {
		ns := fmt.Sprintf("ns%d", i)
		strs = append(strs, newCache(t, Options[string]{Shared: sh, Namespace: ns, Loader: load(ns)}))
	}
	ints := newCache(t, Options[int]{Shared: sh, Namespace: "ints",
		Loader: LoaderFunc[int](func(context.Context, string) (int, error) { return 7, nil })})
	profiles := newCache(t, Options[profile]{Shared: sh, Namespace: "profiles",
		Loader: LoaderFunc[profile](func(_ context.Context, k string) (profile, error) { return profile{Name: k}, nil })})
	waitFor(t, "every Cache subscribed", func() bool {
		return allUp(strs[0]) && allUp(strs[1]) && allUp(strs[2]) && allUp(ints) && allUp(profiles)
	})
	for _, s := range srv {
		if n := pubsubClients(t, s); n != 1 {
			t.Errorf("node %s: %d pub/sub connections for 5 Caches, want 1", s.Addr(), n)
		}
	}
	for _, c := range []interface{ clientOf(int) any }{strs[0], strs[1], strs[2], ints, profiles} {
		for idx := range 3 {
			if c.clientOf(idx) != sh.nodes[idx].client {
				t.Errorf("a Cache reaches node %d through a client of its own", idx)
			}
		}
	}

	ctx := context.Background()
	for i, c := range strs {
		if v, err := c.Get(ctx, "k"); err != nil || v != fmt.Sprintf("ns%d:k", i) {
			t.Fatalf("ns%d Get = %q, %v", i, v, err)
		}
	}
	if v, err := ints.Get(ctx, "k"); err != nil || v != 7 {
		t.Fatal(v, err)
	}
	if v, err := profiles.Get(ctx, "k"); err != nil || v.Name != "k" {
		t.Fatal(v, err)
	}

	// Another process on its own connections writes ns1's "k": only ns1 evicts it.
	other := newCache(t, Options[string]{Addrs: addrsOf(srv), Namespace: "ns1", Timeout: 2 * time.Second})
	waitFor(t, "the other process subscribed", func() bool { return allUp(other) })
	for _, c := range strs {
		waitLocal(t, c, "k")
	}
	if err := other.Set(ctx, "k", "written"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "ns1's near-cache evicts k", func() bool { _, ok := nearHas(strs[1], "k"); return !ok })
	if v, err := strs[1].Get(ctx, "k"); err != nil || v != "written" {
		t.Fatalf("ns1 Get after the other process's Set = %q, %v", v, err)
	}
	for _, i := range []int{0, 2} {
		if v, ok := nearHas(strs[i], "k"); !ok || v != fmt.Sprintf("ns%d:k", i) {
			t.Errorf("ns%d lost its own k (%q, %v) to ns1's invalidation", i, v, ok)
		}
	}

	// Closing a Cache leaves the connections; closing the Shared closes the rest.
	if err := strs[0].Close(); err != nil {
		t.Fatal(err)
	}
	if v, err := strs[2].Get(ctx, "k2"); err != nil || v != "ns2:k2" {
		t.Fatalf("a Cache after another on its Shared closed: %q, %v", v, err)
	}
	if err := sh.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := strs[2].Get(ctx, "k3"); !errors.Is(err, ErrClosed) {
		t.Errorf("Get on a Cache whose Shared closed = %v, want ErrClosed", err)
	}
	if _, err := New(Options[string]{Shared: sh}); !errors.Is(err, ErrClosed) {
		t.Errorf("New on a closed Shared = %v, want ErrClosed", err)
	}
	waitFor(t, "the Shared's pub/sub connections end", func() bool {
		for _, s := range srv {
			if pubsubClients(t, s) != 1 { // the other process's
				return false
			}
		}
		return true
	})
}

// clientOf returns the client this Cache reaches node idx through (white box).
func (c *Cache[V]) clientOf(idx int) any { return c.followed(idx).sn.client }

// TestSharedOptionsConflict: a Cache on a Shared takes its ring and timeouts.
func TestSharedOptionsConflict(t *testing.T) {
	srv := redistest.Start(t, 1)
	sh := newShared(t, SharedOptions{Addrs: addrsOf(srv)})
	for name, o := range map[string]Options[string]{
		"Addrs too":    {Shared: sh, Addrs: []string{srv[0].Addr()}},
		"RingReplicas": {Shared: sh, RingReplicas: 50},
		"Timeout":      {Shared: sh, Timeout: time.Second},
	} {
		if c, err := New(o); err == nil {
			c.Close()
			t.Errorf("%s: New accepted it", name)
		}
	}
	if _, err := NewShared(SharedOptions{}); err == nil {
		t.Error("NewShared without nodes accepted")
	}
	if _, err := NewShared(SharedOptions{Addrs: []string{"localhost"}}); err == nil {
		t.Error("NewShared with an address without a port accepted")
	}
}

// TestSharedMembership: a node added, moved and removed through the Shared (SetNodes)
// reaches every Cache on it while they serve: the same owners in all, Members
// follows, and a move under the same name keeps every key's owner.
func TestSharedMembership(t *testing.T) {
	srv := redistest.Start(t, 4)
	ctx := context.Background()
	sh := newShared(t, SharedOptions{Nodes: []Node{{Name: "a", Addr: srv[0].Addr()}, {Name: "b", Addr: srv[1].Addr()}}})
	src := newSource()
	for i := range 200 {
		src.put(fmt.Sprintf("k%d", i), "v")
	}
	c1 := newCache(t, Options[string]{Shared: sh, Namespace: "m1", Loader: src})
	c2 := newCache(t, Options[int]{Shared: sh, Namespace: "m2",
		Loader: LoaderFunc[int](func(context.Context, string) (int, error) { return 1, nil })})
	names := func() string {
		var s []string
		for _, n := range sh.Members() {
			s = append(s, n.Name+"="+n.Addr)
		}
		return strings.Join(s, ",")
	}
	owners := func() map[string]string {
		m := map[string]string{}
		for i := range 200 {
			k := fmt.Sprintf("k%d", i)
			o1, o2 := c1.ring.Name(c1.shared.Owner(k)), c2.ring.Name(c2.shared.Owner(k))
			if o1 != o2 {
				t.Fatalf("%s: owner %s in one Cache, %s in the other", k, o1, o2)
			}
			m[k] = o1
		}
		return m
	}

	// Add c at srv[2].
	if err := sh.SetNodes(ctx, []Node{{Name: "a", Addr: srv[0].Addr()}, {Name: "b", Addr: srv[1].Addr()}, {Name: "c", Addr: srv[2].Addr()}}); err != nil {
		t.Fatal(err)
	}
	if got, want := names(), fmt.Sprintf("a=%s,b=%s,c=%s", srv[0].Addr(), srv[1].Addr(), srv[2].Addr()); got != want {
		t.Fatalf("Members after an add: %s, want %s", got, want)
	}
	before := owners()
	if n := countOwned(before, "c"); n == 0 {
		t.Fatal("no key moved to the added node")
	}
	for i := range 200 {
		if _, err := c1.Get(ctx, fmt.Sprintf("k%d", i)); err != nil {
			t.Fatal(err)
		}
	}

	// Move c to srv[3] under the same name: no key changes owner, c1 reads c's keys
	// from the new address, and the old address's connections end.
	if err := sh.SetNodes(ctx, []Node{{Name: "a", Addr: srv[0].Addr()}, {Name: "b", Addr: srv[1].Addr()}, {Name: "c", Addr: srv[3].Addr()}}); err != nil {
		t.Fatal(err)
	}
	after := owners()
	for k, o := range before {
		if after[k] != o {
			t.Errorf("%s moved from %s to %s on an address change", k, o, after[k])
		}
	}
	if n := c1.Nodes(); len(n) != 3 || n[2].Name != "c" || n[2].Addr != srv[3].Addr() {
		t.Fatalf("Nodes after the move: %+v", n)
	}
	waitFor(t, "c1 subscribed to the moved node", func() bool { return allUp(c1) && allUp(c2) })
	waitFor(t, "the moved node's old address has no pub/sub connection", func() bool { return pubsubClients(t, srv[2]) == 0 })
	loads := src.calls.Load()
	for i := range 200 {
		if _, err := c1.Get(ctx, fmt.Sprintf("k%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if got := src.calls.Load() - loads; got < int64(countOwned(after, "c")) {
		t.Errorf("%d loads after the move, want at least the %d keys of the moved node (its new address holds nothing)", got, countOwned(after, "c"))
	}

	// Remove a: its keys move, the others stay.
	if err := sh.SetNodes(ctx, []Node{{Name: "b", Addr: srv[1].Addr()}, {Name: "c", Addr: srv[3].Addr()}}); err != nil {
		t.Fatal(err)
	}
	if got := names(); got != fmt.Sprintf("b=%s,c=%s", srv[1].Addr(), srv[3].Addr()) {
		t.Fatalf("Members after a removal: %s", got)
	}
	last := owners()
	for k, o := range after {
		if o != "a" && last[k] != o {
			t.Errorf("%s moved from %s to %s when a was removed", k, o, last[k])
		}
	}
	if err := sh.SetNodes(ctx, nil); err == nil {
		t.Error("SetNodes(nil) accepted")
	}
	if err := sh.SetNodes(ctx, []Node{{Name: "x", Addr: "nope"}}); err == nil {
		t.Error("SetNodes with a malformed address accepted")
	}
	if got := names(); got != fmt.Sprintf("b=%s,c=%s", srv[1].Addr(), srv[3].Addr()) {
		t.Errorf("a refused SetNodes changed the members: %s", got)
	}
}

func countOwned(owners map[string]string, node string) int {
	n := 0
	for _, o := range owners {
		if o == node {
			n++
		}
	}
	return n
}
