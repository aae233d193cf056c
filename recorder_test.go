package tiered

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/logging"

	"github.com/tieredcache/tiered/internal/redistest"
)

// events is a Recorder that keeps what it is told, as lines.
type events struct {
	mu    sync.Mutex
	lines []string
	lags  []time.Duration
	waits []time.Duration
}

func (e *events) add(format string, args ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.lines = append(e.lines, fmt.Sprintf(format, args...))
}

// count returns how many lines are line.
func (e *events) count(line string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, l := range e.lines {
		if l == line {
			n++
		}
	}
	return n
}

func (e *events) String() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return strings.Join(e.lines, "\n")
}

func errName(err error) string {
	switch {
	case err == nil:
		return "nil"
	case errors.Is(err, ErrNotFound):
		return "notfound"
	}
	var p *PanicError
	if errors.As(err, &p) {
		return "panic"
	}
	return "error"
}

func (e *events) RecordGet(tier Tier, d time.Duration, err error) {
	e.add("get %s %s", tier, errName(err))
}
func (e *events) RecordLoad(keys int, d time.Duration, err error) {
	e.add("load %d %s", keys, errName(err))
}
func (e *events) RecordLeaseWait(d time.Duration, filled bool) {
	e.mu.Lock()
	e.waits = append(e.waits, d)
	e.mu.Unlock()
	e.add("leasewait %v", filled)
}
func (e *events) RecordInvalidationSent(node string, keys int) { e.add("sent %s %d", node, keys) }
func (e *events) RecordInvalidationReceived(node string, keys int, lag time.Duration) {
	e.mu.Lock()
	e.lags = append(e.lags, lag)
	e.mu.Unlock()
	e.add("received %s %d", node, keys)
}
func (e *events) RecordFlush(node string, cause FlushCause)     { e.add("flush %s %s", node, cause) }
func (e *events) RecordBreaker(node string, state BreakerState) { e.add("breaker %s %s", node, state) }
func (e *events) RecordMissedWrite(node string, pending int)    { e.add("missed %s %d", node, pending) }
func (e *events) RecordReplay(node string, keys int, cleared bool) {
	e.add("replay %s %d %v", node, keys, cleared)
}

// TestRecorderEvents: each tier that answers a Get is reported with its error, each
// load with its outcome, each invalidation on both ends; near hits are not reported.
func TestRecorderEvents(t *testing.T) {
	srv := redistest.Start(t, 1)
	src := newSource()
	src.put("k1", "v1")
	src.put("k3", "v3")
	src.put("k4", "v4")
	loader := LoaderFunc[string](func(ctx context.Context, key string) (string, error) {
		if key == "panic" {
			panic("boom")
		}
		return src.Load(ctx, key)
	})
	recA, recB := &events{}, &events{}
	oa := ringOpts[string](t, srv)
	oa.Loader, oa.Recorder = loader, recA
	a := newCache(t, oa)
	ob := ringOpts[string](t, srv)
	ob.Loader, ob.Recorder = loader, recB
	b := newCache(t, ob)
	ctx := context.Background()
	waitFor(t, "both subscribed", func() bool { return allUp(a) && allUp(b) })
	for _, r := range []*events{recA, recB} {
		if r.count("flush node-0 resubscribe") != 1 {
			t.Fatalf("the first subscription is a flush by resubscribe; got:\n%s", r)
		}
	}

	if _, err := a.Get(ctx, "k1"); err != nil { // miss in both tiers: loaded
		t.Fatal(err)
	}
	// A's fill follows its Get's return (see announce): wait for it, so that B's
	// read is a plain shared hit.
	waitSettled(t, a)
	if _, err := b.Get(ctx, "k1"); err != nil { // shared hit
		t.Fatal(err)
	}
	waitLocal(t, a, "k1")
	for range 10 {
		if _, err := a.Get(ctx, "k1"); err != nil { // near hits
			t.Fatal(err)
		}
	}
	if _, err := a.Get(ctx, "absent"); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	if _, err := a.Get(ctx, "panic"); err == nil {
		t.Fatal("a panicking Loader returned no error")
	}
	if m, err := b.GetMany(ctx, []string{"k1", "k3", "k4"}); err != nil || len(m) != 3 {
		t.Fatal(m, err)
	}
	for r, want := range map[*events]map[string]int{
		recA: {"load 1 nil": 1, "get loader nil": 1, "load 1 notfound": 1, "get loader notfound": 1,
			"load 1 panic": 1, "get loader panic": 1, "get shared nil": 0, "get near nil": 0},
		// k1 is a near hit for GetMany (B read it into its near-cache), k3 and k4 are loaded.
		recB: {"get shared nil": 1, "get loader nil": 2, "load 2 nil": 0, "load 1 nil": 2},
	} {
		for line, n := range want {
			if got := r.count(line); got != n {
				t.Errorf("%q reported %d times, want %d; all:\n%s", line, got, n, r)
			}
		}
	}
	if st := a.Stats(); st.LocalHits < 10 {
		t.Errorf("near hits are counted in Stats: %d", st.LocalHits)
	}

	if err := a.Set(ctx, "k1", "v1b"); err != nil {
		t.Fatal(err)
	}
	if err := a.Delete(ctx, "k3", "k4"); err != nil {
		t.Fatal(err)
	}
	if recA.count("sent node-0 1") != 1 || recA.count("sent node-0 2") != 1 {
		t.Errorf("sent invalidations:\n%s", recA)
	}
	waitFor(t, "B receives both invalidations", func() bool {
		return recB.count("received node-0 1") == 1 && recB.count("received node-0 2") == 1
	})
	recB.mu.Lock()
	for _, lag := range recB.lags {
		if lag < 0 || lag > waitForWithin {
			t.Errorf("delivery lag %v", lag)
		}
	}
	recB.mu.Unlock()

	ns := a.Nodes()
	if len(ns) != 1 {
		t.Fatalf("Nodes: %+v", ns)
	}
	n := ns[0]
	if n.Name != "node-0" || n.Addr != srv[0].Addr() || !n.Member || n.Breaker != BreakerClosed ||
		!n.Subscribed || n.Since.IsZero() || time.Since(n.Since) > time.Minute || n.MissedWrites != 0 || n.Overflowed {
		t.Errorf("Nodes()[0] = %+v", n)
	}
	waitFor(t, "A's subscriber sees its own writes' sequence", func() bool {
		n := a.Nodes()[0]
		return n.Epoch != "" && n.Seq >= 2
	})
}

// TestRecorderLeaseWait: a process that waits for another's lease reports the wait,
// answered by the holder's fill, and its Get as answered by the shared tier.
func TestRecorderLeaseWait(t *testing.T) {
	srv := redistest.Start(t, 1)
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	oa := ringOpts[string](t, srv)
	oa.Loader = LoaderFunc[string](func(ctx context.Context, key string) (string, error) {
		started <- struct{}{}
		<-release
		return "v", nil
	})
	a := newCache(t, oa)
	rec := &events{}
	ob := ringOpts[string](t, srv)
	ob.Loader = LoaderFunc[string](func(context.Context, string) (string, error) { return "", errors.New("B must not load") })
	ob.Recorder = rec
	b := newCache(t, ob)
	ctx := context.Background()
	waitFor(t, "both subscribed", func() bool { return allUp(a) && allUp(b) })

	go a.Get(ctx, "k")
	<-started // A holds the lease
	done := make(chan error, 1)
	go func() {
		_, err := b.Get(ctx, "k")
		done <- err
	}()
	waitFor(t, "B waits for A's lease", func() bool { return b.Stats().LeaseWaits == 1 })
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if rec.count("leasewait true") != 1 || rec.count("get shared nil") != 1 || rec.count("load 1 nil") != 0 {
		t.Errorf("B's events:\n%s", rec)
	}
}

// TestRecorderBreakerAndMissedWrites: a node that stops answering opens its breaker
// (reported, and shown by Nodes), a write it misses is reported pending, and its
// replay once the node answers again.
func TestRecorderBreakerAndMissedWrites(t *testing.T) {
	srv := redistest.Start(t, 1)
	rec := &events{}
	o := ringOpts[string](t, srv)
	o.Timeout = 200 * time.Millisecond
	o.Loader = LoaderFunc[string](func(context.Context, string) (string, error) { return "v", nil })
	o.Recorder = rec
	c := newCache(t, o)
	ctx := context.Background()
	waitFor(t, "subscribed", func() bool { return allUp(c) })

	if err := srv[0].Pause(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv[0].Resume() })
	waitFor(t, "the breaker opens", func() bool {
		c.Get(ctx, fmt.Sprintf("k%d", time.Now().UnixNano()))
		return rec.count("breaker node-0 open") > 0
	})
	if n := c.Nodes()[0]; n.Breaker != BreakerOpen {
		t.Errorf("Nodes()[0].Breaker = %v, want open", n.Breaker)
	}
	if err := c.Set(ctx, "w", "x"); err == nil {
		t.Fatal("Set on a paused node returned nil")
	}
	if rec.count("missed node-0 1") != 1 {
		t.Errorf("missed write not reported:\n%s", rec)
	}
	if n := c.Nodes()[0]; n.MissedWrites != 1 || n.Overflowed {
		t.Errorf("Nodes()[0] = %+v, want 1 missed write", n)
	}
	if err := srv[0].Resume(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the missed write is replayed", func() bool { return rec.count("replay node-0 1 false") == 1 })
	waitFor(t, "the node is clean and subscribed", func() bool {
		n := c.Nodes()[0]
		return n.MissedWrites == 0 && n.Subscribed
	})
	waitFor(t, "the breaker closes", func() bool {
		c.Get(ctx, fmt.Sprintf("k%d", time.Now().UnixNano()))
		return c.Nodes()[0].Breaker == BreakerClosed && rec.count("breaker node-0 closed") > 0
	})
	if rec.count("breaker node-0 half-open") == 0 {
		t.Errorf("no half-open probe reported:\n%s", rec)
	}
}

// lockedBuffer is a bytes.Buffer safe for the concurrent writes of a slog handler
// and the test's reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestRedisLoggerRoutesGoRedisLines: go-redis's own log lines (a failed dial while a
// node is down) reach the application's slog.Logger through RedisLogger, and the
// cache's own warnings name the node.
func TestRedisLoggerRoutesGoRedisLines(t *testing.T) {
	srv := redistest.Start(t, 1)
	addr := srv[0].Addr()
	if err := srv[0].Stop(); err != nil {
		t.Fatal(err)
	}
	var buf lockedBuffer
	logger := slog.New(slog.NewTextHandler(&buf, nil))
	redis.SetLogger(RedisLogger(logger))
	t.Cleanup(logging.Enable) // go-redis's default: stderr
	c := newCache(t, Options[string]{
		Addrs: []string{addr}, Namespace: "tlog", Timeout: 200 * time.Millisecond, Logger: logger,
		Loader: LoaderFunc[string](func(context.Context, string) (string, error) { return "v", nil }),
	})
	if v, err := c.Get(context.Background(), "k"); err != nil || v != "v" {
		t.Fatal(v, err)
	}
	waitFor(t, "a go-redis line in the application's log", func() bool {
		return strings.Contains(buf.String(), "source=go-redis")
	})
	out := buf.String()
	for _, want := range []string{"failed to dial", "node=" + addr} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}
