package tiered

// Read-path defects found in review, each pinned by a test.

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tieredcache/tiered/internal/redistest"
	"github.com/tieredcache/tiered/internal/remote"
)

// syncBuffer is a bytes.Buffer safe for the Logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// While a node is down every read of its keys fails; the log gets at most one warning
// per node per second, naming the node, and Stats counts the lines left out.
func TestNodeDownWarningsRateLimited(t *testing.T) {
	servers := redistest.Start(t, 1)
	var logs syncBuffer
	o := ringOpts[string](t, servers)
	o.Timeout = 200 * time.Millisecond
	o.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	src := newSource()
	o.Loader = src
	c := newCache(t, o)
	if err := servers[0].Stop(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	start := time.Now()
	const gets = 100
	for i := range gets {
		key := "k" + strings.Repeat("x", i%7) + string(rune('a'+i%26))
		src.put(key, "v")
		if _, err := c.Get(ctx, key); err != nil {
			t.Fatalf("Get while the node is down: %v", err)
		}
	}
	elapsed := time.Since(start)
	lines := strings.Count(logs.String(), `msg="tiered: shared tier`)
	// At most one line per started second, per node (one node here).
	allowed := int(elapsed/warnEvery) + 1
	st := c.Stats()
	t.Logf("%d Gets in %v: %d warnings logged, %d suppressed, %d remote errors", gets, elapsed.Round(time.Millisecond), lines, st.LogsSuppressed, st.RemoteErrors)
	if lines > allowed {
		t.Errorf("%d warnings in %v, want at most %d:\n%s", lines, elapsed, allowed, logs.String())
	}
	if st.LogsSuppressed == 0 || st.RemoteErrors < gets {
		t.Errorf("stats = %+v; want every failed read counted and the extra warnings suppressed", st)
	}
	if !strings.Contains(logs.String(), "node=node-0") {
		t.Errorf("warnings do not name the node:\n%s", logs.String())
	}
}

// A Cache without a shared tier counts no shared-tier misses.
func TestNoSharedTierCountsNoRemoteMisses(t *testing.T) {
	src := newSource()
	src.put("k", "v")
	c := newCache(t, Options[string]{Loader: src})
	ctx := context.Background()
	if v, err := c.Get(ctx, "k"); err != nil || v != "v" {
		t.Fatalf("Get = %q, %v", v, err)
	}
	if _, err := c.GetMany(ctx, []string{"k", "absent"}); err != nil {
		t.Fatal(err)
	}
	if st := c.Stats(); st.RemoteMisses != 0 || st.RemoteHits != 0 || st.RemoteErrors != 0 {
		t.Errorf("stats = %+v; want no shared-tier counts without a shared tier", st)
	}
}

type withAny struct {
	Name  string
	Extra any
}

// A loaded value the codec cannot encode is an error to every caller, not a value
// served by this replica alone (another replica could never decode it from Redis);
// it is cached nowhere, so the next Get asks the Loader again.
func TestLoadedValueThatDoesNotEncode(t *testing.T) {
	servers := redistest.Start(t, 1)
	o := ringOpts[withAny](t, servers)
	var calls int
	var mu sync.Mutex
	o.Loader = LoaderFunc[withAny](func(context.Context, string) (withAny, error) {
		mu.Lock()
		calls++
		mu.Unlock()
		return withAny{Name: "x", Extra: make(chan int)}, nil // CBOR cannot encode a chan
	})
	c := newCache(t, o)
	ctx := context.Background()
	for range 2 {
		_, err := c.Get(ctx, "k")
		if err == nil || !strings.Contains(err.Error(), "encode") {
			t.Fatalf("Get = %v; want an encode error", err)
		}
	}
	if _, err := c.GetMany(ctx, []string{"k2"}); err == nil {
		t.Error("GetMany of a value that does not encode = nil error")
	}
	mu.Lock()
	defer mu.Unlock()
	if calls != 3 {
		t.Errorf("Loader called %d times, want 3 (nothing cached)", calls)
	}
	if st := c.Stats(); st.LoadErrors != 3 {
		t.Errorf("LoadErrors = %d, want 3", st.LoadErrors)
	}
	// Set refuses such a value too, and writes nothing.
	if err := c.Set(ctx, "k", withAny{Extra: func() {}}); err == nil {
		t.Error("Set of a value that does not encode = nil error")
	}
}

// remote.LeaseState's zero value is no outcome: a Lease that fails is never mistaken
// for a value found.
func TestLeaseStateZeroIsUnknown(t *testing.T) {
	var zero remote.LeaseState
	if zero != remote.LeaseUnknown || zero == remote.LeaseFound || zero == remote.LeaseWon {
		t.Fatalf("zero LeaseState = %v, want LeaseUnknown", zero)
	}
	servers := redistest.Start(t, 1)
	o := ringOpts[string](t, servers)
	o.Timeout = 200 * time.Millisecond
	c := newCache(t, o)
	if err := servers[0].Stop(); err != nil {
		t.Fatal(err)
	}
	_, state, _, err := c.shared.Lease(context.Background(), 0, "k", remote.NewToken(), time.Second)
	if err == nil || state != remote.LeaseUnknown {
		t.Errorf("Lease on a stopped node = %v, %v; want an error and LeaseUnknown", state, err)
	}
	if errors.Is(err, remote.ErrMiss) {
		t.Errorf("Lease error %v reads as a miss", err)
	}
}
