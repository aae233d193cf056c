package remote_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
	"go.uber.org/goleak"

	"github.com/tieredcache/tiered/internal/redistest"
	"github.com/tieredcache/tiered/internal/remote"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func payload(keys []string) []byte { return []byte(strings.Join(keys, ",")) }

// missed is the Config.MissedDeletes of the tests: remote has no default of its own.
const missed = 100

// client returns a client of addr with one connection already dialled (when the
// node answers), so that the tests' short timeouts bound commands, not the first
// dial and handshake of a loaded machine.
func client(t *testing.T, addr string) *redis.Client {
	cl := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	t.Cleanup(func() { cl.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = cl.Ping(ctx).Err() // a node that is down fails later, where the test expects it
	return cl
}

func TestNewRejectsUnboundedClient(t *testing.T) {
	cl := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer cl.Close()
	_, err := remote.New(remote.Config{Nodes: []remote.Node{{Name: "n", Client: cl}}, Timeout: time.Second, MissedDeletes: missed})
	if err == nil || !strings.Contains(err.Error(), "ContextTimeoutEnabled") {
		t.Fatalf("New = %v, want an error naming ContextTimeoutEnabled", err)
	}
}

func TestNewRequiresMissedDeletes(t *testing.T) {
	cl := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", ContextTimeoutEnabled: true})
	defer cl.Close()
	_, err := remote.New(remote.Config{Nodes: []remote.Node{{Name: "n", Client: cl}}, Timeout: time.Second})
	if err == nil || !strings.Contains(err.Error(), "MissedDeletes") {
		t.Fatalf("New without MissedDeletes = %v, want an error naming MissedDeletes", err)
	}
}

func TestRoundTrip(t *testing.T) {
	srv := redistest.Start(t, 1)[0]
	r, err := remote.New(remote.Config{Nodes: []remote.Node{{Name: "n", Client: client(t, srv.Addr())}}, Namespace: "ns", Timeout: time.Second, MissedDeletes: missed})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Wait) // stops its parked batch workers
	ctx := context.Background()
	if _, err := r.Get(ctx, 0, "k"); !errors.Is(err, remote.ErrMiss) {
		t.Fatalf("Get of a missing key = %v, want ErrMiss", err)
	}
	if err := r.Repair(ctx, 0, "k", []byte("first"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if b, err := r.Get(ctx, 0, "k"); err != nil || string(b) != "first" {
		t.Fatalf("Get after Repair = %q, %v", b, err)
	}
	if err := r.Set(ctx, 0, "k", []byte("set"), time.Minute, payload); err != nil {
		t.Fatal(err)
	}
	// The stored key is namespaced and hash-tagged, and carries the TTL.
	if v, err := srv.Do(ctx, "GET", "ns:{k}"); err != nil || v != "set" {
		t.Fatalf("GET ns:{k} = %v, %v", v, err)
	}
	if ttl, err := srv.Do(ctx, "PTTL", "ns:{k}"); err != nil || ttl.(int64) <= 0 {
		t.Fatalf("PTTL = %v, %v; want a TTL", ttl, err)
	}
	items := []remote.Item{{Key: "k"}, {Key: "absent"}}
	r.GetMany(ctx, items, nil)
	if string(items[0].Val) != "set" || items[0].Err != nil || !errors.Is(items[1].Err, remote.ErrMiss) {
		t.Fatalf("GetMany = %+v", items)
	}
	if err := r.Del(ctx, []remote.Item{{Key: "k"}}, payload); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Get(ctx, 0, "k"); !errors.Is(err, remote.ErrMiss) {
		t.Fatalf("Get after Del = %v, want ErrMiss", err)
	}
}

// GetMany hands each node's items to its callback once they have their results, and
// every item exactly once, the items naming no node included.
func TestGetManyHandsEachNodesItems(t *testing.T) {
	srvs := redistest.Start(t, 3)
	var nodes []remote.Node
	for i, s := range srvs {
		nodes = append(nodes, remote.Node{Name: fmt.Sprint("n", i), Client: client(t, s.Addr())})
	}
	r, err := remote.New(remote.Config{Nodes: nodes, Picker: fixedPicker{}, Namespace: "ns", Timeout: time.Second, MissedDeletes: missed})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Wait) // stops its parked batch workers
	ctx := context.Background()
	var items []remote.Item
	for i := range 30 {
		k := fmt.Sprint("k", i)
		node := i % 3
		if i%2 == 0 {
			if err := r.Set(ctx, node, k, []byte(k), time.Minute, payload); err != nil {
				t.Fatal(err)
			}
		}
		items = append(items, remote.Item{Key: k, Node: node, Ref: len(items)})
	}
	items = append(items, remote.Item{Key: "nowhere", Node: 7, Ref: len(items)})

	var mu sync.Mutex
	seen := make([]int, len(items))
	r.GetMany(ctx, items, func(its []*remote.Item) {
		mu.Lock()
		defer mu.Unlock()
		for _, it := range its {
			seen[it.Ref]++
			if it.Node != its[0].Node {
				t.Errorf("one call holds items of nodes %d and %d", its[0].Node, it.Node)
			}
			if it.Val == nil && it.Err == nil {
				t.Errorf("item %q handed over without its result", it.Key)
			}
		}
	})
	for i, n := range seen {
		if n != 1 {
			t.Errorf("item %q handed over %d times, want 1", items[i].Key, n)
		}
	}
	for i, it := range items[:30] {
		switch {
		case i%2 == 0 && (it.Err != nil || string(it.Val) != it.Key):
			t.Errorf("item %q = %q, %v; want its value", it.Key, it.Val, it.Err)
		case i%2 == 1 && !errors.Is(it.Err, remote.ErrMiss):
			t.Errorf("item %q = %q, %v; want ErrMiss", it.Key, it.Val, it.Err)
		}
	}
	if last := items[30]; last.Err == nil || errors.Is(last.Err, remote.ErrMiss) {
		t.Errorf("item of no node: err = %v, want an error naming its node", last.Err)
	}
}

// A hung node (SIGSTOP: the socket stays open, nothing answers) costs a call its
// per-call timeout, not go-redis's 3 s read timeout times its retries.
func TestHungNodeBoundedByTimeout(t *testing.T) {
	srv := redistest.Start(t, 1)[0]
	const timeout = 200 * time.Millisecond
	r, err := remote.New(remote.Config{Nodes: []remote.Node{{Name: "n", Client: client(t, srv.Addr())}}, Timeout: timeout, MissedDeletes: missed})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Wait) // stops its parked batch workers
	ctx := context.Background()
	if err := r.Set(ctx, 0, "k", []byte("v"), time.Minute, payload); err != nil { // warm a connection
		t.Fatal(err)
	}
	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	defer srv.Resume()
	for _, op := range []struct {
		name string
		call func() error
	}{
		{"Get", func() error { _, err := r.Get(ctx, 0, "k"); return err }},
		{"Set", func() error { return r.Set(ctx, 0, "k", []byte("v"), time.Minute, payload) }},
		{"GetMany", func() error {
			items := []remote.Item{{Key: "k"}}
			r.GetMany(ctx, items, nil)
			return items[0].Err
		}},
		{"Del", func() error { return r.Del(ctx, []remote.Item{{Key: "k"}}, payload) }},
	} {
		start := time.Now()
		err := op.call()
		took := time.Since(start)
		if err == nil || errors.Is(err, remote.ErrMiss) {
			t.Fatalf("%s on a hung node = %v, want a timeout error", op.name, err)
		}
		// go-redis's own bound would be ReadTimeout (3 s) per attempt, 4 attempts.
		if took > 2*time.Second {
			t.Fatalf("%s on a hung node took %v; the %v per-call timeout did not bound it", op.name, took, timeout)
		}
		t.Logf("%s on a hung node: %v after %v", op.name, err, took)
	}
}

// Every write publishes "<epoch>|<seq>|<payload>" on the node's channel, with the
// sequence counting writes; a restart that loses the node's data starts a new epoch.
func TestWritesPublishInOrder(t *testing.T) {
	srv := redistest.Start(t, 1)[0]
	cl := client(t, srv.Addr())
	r, err := remote.New(remote.Config{Nodes: []remote.Node{{Name: "n", Client: cl}}, Namespace: "ns", Timeout: time.Second, MissedDeletes: missed})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Wait) // stops its parked batch workers
	ctx := context.Background()
	ps := cl.Subscribe(ctx, r.Channel())
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil { // the subscription confirmation
		t.Fatal(err)
	}
	if err := r.Set(ctx, 0, "a", []byte("1"), time.Minute, payload); err != nil {
		t.Fatal(err)
	}
	if err := r.Del(ctx, []remote.Item{{Key: "a"}, {Key: "b"}}, payload); err != nil {
		t.Fatal(err)
	}
	var epoch string
	for i, want := range []string{"a", "a,b"} {
		m, err := ps.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		parts := strings.SplitN(m.Payload, "|", 3)
		if len(parts) != 3 || parts[1] != fmt.Sprint(i+1) || parts[2] != want || (epoch != "" && parts[0] != epoch) {
			t.Fatalf("message %d = %q, want <epoch>|%d|%s", i, m.Payload, i+1, want)
		}
		epoch = parts[0]
	}
	if _, err := srv.Do(ctx, "FLUSHALL"); err != nil { // a node that lost its data
		t.Fatal(err)
	}
	if err := r.Set(ctx, 0, "a", []byte("2"), time.Minute, payload); err != nil {
		t.Fatal(err)
	}
	m, err := ps.ReceiveMessage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if parts := strings.SplitN(m.Payload, "|", 3); parts[0] == epoch || parts[1] != "1" {
		t.Fatalf("after data loss: %q, want a new epoch and sequence 1", m.Payload)
	}
}

// A hung node costs the per-call timeout BreakerTrips times; then its breaker opens
// and calls fail at once; after BreakerOpenFor a probe finds it back.
func TestBreakerFailsFastThenRecovers(t *testing.T) {
	srv := redistest.Start(t, 1)[0]
	const timeout = 100 * time.Millisecond
	opened := make(chan string, 1)
	r, err := remote.New(remote.Config{
		Nodes: []remote.Node{{Name: "n", Client: client(t, srv.Addr())}}, Timeout: timeout, MissedDeletes: missed,
		OnBreaker: func(name string, to gobreaker.State) {
			if to == gobreaker.StateOpen {
				opened <- name
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Wait) // stops its parked batch workers
	ctx := context.Background()
	if _, err := r.Get(ctx, 0, "k"); !errors.Is(err, remote.ErrMiss) { // a miss is a success
		t.Fatal(err)
	}
	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	var slow, fast []time.Duration
	for i := range 20 {
		start := time.Now()
		_, err := r.Get(ctx, 0, "k")
		took := time.Since(start)
		if err == nil {
			t.Fatal("Get on a hung node succeeded")
		}
		if i < remote.BreakerTrips {
			slow = append(slow, took)
		} else {
			if !errors.Is(err, remote.ErrNodeUnavailable) {
				t.Fatalf("call %d: %v, want ErrNodeUnavailable once the breaker is open", i, err)
			}
			fast = append(fast, took)
		}
	}
	select {
	case <-opened:
	default:
		t.Fatal("OnBreakerOpen was not called")
	}
	t.Logf("hung node: first %d calls took %v (timeout %v); then %d calls failing fast, slowest %v", len(slow), slow, timeout, len(fast), slices.Max(fast))
	for _, d := range slow {
		if d > timeout+50*time.Millisecond {
			t.Errorf("a call took %v, beyond the %v timeout", d, timeout)
		}
	}
	if m := slices.Max(fast); m > 20*time.Millisecond {
		t.Errorf("an open breaker took %v to fail", m)
	}
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(remote.BreakerOpenFor + 5*time.Second)
	for {
		_, err := r.Get(ctx, 0, "k")
		if errors.Is(err, remote.ErrMiss) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the node never came back: %v", err)
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
}

// Del reports one error per node where the delete failed, not one per key: here
// three keys on a stopped node and three keys of node indexes that name no node,
// beside a key on a live node that is deleted.
func TestDelOneErrorPerNode(t *testing.T) {
	servers := redistest.Start(t, 2)
	r, err := remote.New(remote.Config{
		Nodes: []remote.Node{
			{Name: "live", Client: client(t, servers[0].Addr())},
			{Name: "stopped", Client: client(t, servers[1].Addr())},
		},
		Picker: fixedPicker{}, Namespace: "ns", Timeout: 200 * time.Millisecond, MissedDeletes: missed,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Wait) // stops its parked batch workers
	ctx := context.Background()
	if err := r.Set(ctx, 0, "a", []byte("v"), time.Minute, payload); err != nil {
		t.Fatal(err)
	}
	if err := servers[1].Stop(); err != nil {
		t.Fatal(err)
	}
	items := []remote.Item{
		{Key: "a", Node: 0},
		{Key: "b", Node: 1}, {Key: "c", Node: 1}, {Key: "d", Node: 1},
		{Key: "e", Node: 2}, {Key: "f", Node: 7}, {Key: "g", Node: -1},
	}
	err = r.Del(ctx, items, payload)
	if err == nil {
		t.Fatal("Del on a stopped node and unknown nodes returned nil")
	}
	var stopped, unknown int
	for line := range strings.Lines(err.Error()) {
		switch {
		case strings.Contains(line, "on stopped"):
			stopped++
		case strings.Contains(line, "no node owns"):
			unknown++
		default:
			t.Errorf("unexpected error line %q", line)
		}
	}
	if stopped != 1 || unknown != 1 {
		t.Fatalf("Del = %q: %d errors for the stopped node and %d for unknown nodes, want 1 and 1", err, stopped, unknown)
	}
	if items[0].Err != nil {
		t.Fatalf("key on the live node: %v", items[0].Err)
	}
	for _, it := range items[1:] {
		if it.Err == nil {
			t.Errorf("key %q of node %d has no error", it.Key, it.Node)
		}
	}
	if _, err := r.Get(ctx, 0, "a"); !errors.Is(err, remote.ErrMiss) {
		t.Fatalf("Get of the deleted key = %v, want ErrMiss", err)
	}
}

// fixedPicker is a Picker the tests do not route through: every item names its node.
type fixedPicker struct{}

func (fixedPicker) Owner(string) (int, bool) { return 0, true }
