package tiered

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tieredcache/tiered/internal/redistest"
	"github.com/tieredcache/tiered/internal/remote"
)

// addrOpts returns Options over servers by address (Options.Addrs), so that the
// Cache creates its own clients (newClient).
func addrOpts[V any](t testing.TB, servers []*redistest.Server) Options[V] {
	var addrs []string
	for _, s := range servers {
		addrs = append(addrs, s.Addr())
	}
	return Options[V]{
		Addrs:     addrs,
		Namespace: "t" + strings.ReplaceAll(t.Name(), "/", "_"),
		Timeout:   2 * time.Second, // generous: -race on a loaded 2-core machine
	}
}

// pollPing calls Ping until ok accepts its error or 10 seconds pass; it returns the
// last error.
func pollPing[V any](t *testing.T, c *Cache[V], what string, ok func(error) bool) error {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := c.Ping(context.Background())
		if ok(err) {
			return err
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; last Ping: %v", what, err)
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
}

func TestPing(t *testing.T) {
	servers := redistest.Start(t, 3)
	c := newCache(t, addrOpts[string](t, servers))

	// Healthy: every node answers and every subscription is confirmed (New waits
	// up to Timeout for them; poll in case that was not enough on a loaded machine).
	pollPing(t, c, "a healthy ring", func(err error) bool { return err == nil })

	// One node stopped: Ping names it, and only it.
	down := servers[1].Addr()
	if err := servers[1].Stop(); err != nil {
		t.Fatal(err)
	}
	err := c.Ping(context.Background())
	if err == nil || !strings.Contains(err.Error(), strconv.Quote(down)) {
		t.Fatalf("Ping with %s stopped = %v, want an error naming it", down, err)
	}
	for _, s := range []*redistest.Server{servers[0], servers[2]} {
		if strings.Contains(err.Error(), strconv.Quote(s.Addr())) {
			t.Errorf("Ping with only %s stopped names %s too: %v", down, s.Addr(), err)
		}
	}
	t.Logf("first Ping after the stop: %v", err)
	// The pooled connection may fail with EOF first; from then on, the dial is refused.
	err = pollPing(t, c, "a refused connection", func(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) })
	t.Logf("Ping: %v", err)
	if !strings.Contains(err.Error(), "invalidation subscription") {
		// The subscriber notices the closed connection at once (EOF): poll for it.
		err = pollPing(t, c, "the lost subscription", func(err error) bool {
			return err != nil && strings.Contains(err.Error(), "invalidation subscription")
		})
	}

	// Back: Ping passes once the node answers and is subscribed again.
	if err := servers[1].Restart(); err != nil {
		t.Fatal(err)
	}
	pollPing(t, c, "the restarted node", func(err error) bool { return err == nil })

	c.Close()
	if err := c.Ping(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Ping after Close = %v, want ErrClosed", err)
	}
}

// A subscription that is down fails Ping even though the node answers PING: its
// keys bypass the near-cache, which a readiness probe should know.
func TestPingSubscriptionDown(t *testing.T) {
	servers := redistest.Start(t, 2)
	o := ringOpts[string](t, servers)
	c := newCache(t, o)
	pollPing(t, c, "a healthy ring", func(err error) bool { return err == nil })
	c.local.MarkDown(1) // as busHandler.Down does when the subscription is lost
	err := c.Ping(context.Background())
	if err == nil || !strings.Contains(err.Error(), `node "node-1": invalidation subscription not confirmed`) ||
		strings.Contains(err.Error(), "node-0") {
		t.Fatalf("Ping with node-1's subscription down = %v, want an error naming node-1 only", err)
	}
	c.local.MarkUp(1)
	if err := c.Ping(context.Background()); err != nil {
		t.Fatalf("Ping after MarkUp = %v", err)
	}
}

func TestPingWithoutSharedTier(t *testing.T) {
	c, err := New(Options[string]{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Ping(context.Background()); err != nil {
		t.Fatalf("Ping without a shared tier = %v, want nil", err)
	}
	c.Close()
	if err := c.Ping(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Ping after Close = %v, want ErrClosed", err)
	}
}

// errLog records the errors logged with an "err" attribute about a key (the read
// and write paths; not the subscribers).
type errLog struct {
	mu   sync.Mutex
	errs []error
}

func (l *errLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *errLog) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *errLog) WithGroup(string) slog.Handler            { return l }
func (l *errLog) Handle(_ context.Context, r slog.Record) error {
	var err error
	var key bool
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "err":
			err, _ = a.Value.Any().(error)
		case "key":
			key = true
		}
		return true
	})
	if err != nil && key {
		l.mu.Lock()
		l.errs = append(l.errs, err)
		l.mu.Unlock()
	}
	return nil
}

func (l *errLog) all() []error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]error(nil), l.errs...)
}

// A node whose port refuses connections fails a call at once, with the refusal, and
// the Loader serves: go-redis's default dial retries (5, 100 ms apart) made each
// call wait min(Timeout, 400 ms) for nothing. Timings are logged, not asserted.
func TestRefusedConnectionFailsFast(t *testing.T) {
	servers := redistest.Start(t, 2)
	o := addrOpts[string](t, servers)
	log := &errLog{}
	o.Logger = slog.New(log)
	src := newSource()
	o.Loader = src
	c := newCache(t, o)
	pollPing(t, c, "a healthy ring", func(err error) bool { return err == nil })
	if err := servers[1].Stop(); err != nil {
		t.Fatal(err)
	}
	// A pooled connection to the stopped node may fail with EOF once; Ping, which
	// counts towards no breaker, gets that out of the way.
	pollPing(t, c, "a refused connection", func(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) })

	// The clients the Cache made: nothing in them waits longer than Timeout, and
	// a dial is tried once.
	for _, n := range c.sh.nodes {
		opt := n.owned.(*redis.Client).Options()
		if opt.DialerRetries != 1 || opt.DialTimeout > o.Timeout || opt.PoolTimeout > o.Timeout {
			t.Errorf("client for %s: DialerRetries %d, DialTimeout %v, PoolTimeout %v; want 1 and at most Timeout (%v)",
				opt.Addr, opt.DialerRetries, opt.DialTimeout, opt.PoolTimeout, o.Timeout)
		}
	}

	// Keys owned by the stopped node: the first calls dial (before the breaker
	// opens), and each is refused.
	var keys []string
	for i := 0; len(keys) < 3; i++ {
		if k := "k" + strconv.Itoa(i); c.shared.Owner(k) == 1 {
			keys = append(keys, k)
			src.put(k, "v"+k)
		}
	}
	for _, k := range keys {
		start := time.Now()
		v, err := c.Get(context.Background(), k)
		t.Logf("Get(%q) with its node refusing connections: %v (Timeout %v)", k, time.Since(start), o.Timeout)
		if err != nil || v != "v"+k {
			t.Fatalf("Get(%q) = %q, %v; want the Loader's value", k, v, err)
		}
	}
	if got := src.calls.Load(); got != int64(len(keys)) {
		t.Errorf("Loader calls = %d, want %d", got, len(keys))
	}
	var refused int
	for _, err := range log.all() {
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			refused++
		case errors.Is(err, remote.ErrNodeUnavailable): // the breaker, open after a few refusals
		default:
			t.Errorf("logged error %v is neither a refused connection nor the open breaker", err)
		}
	}
	if refused == 0 {
		t.Errorf("no refused connection logged; logged: %v", log.all())
	}
	start := time.Now()
	err := c.Ping(context.Background())
	t.Logf("Ping with a node refusing connections: %v: %v", time.Since(start), err)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("Ping = %v, want a refused connection", err)
	}
}

// New waits for Redis only until Timeout has passed since it was called, however
// the nodes fail, and returns a Cache whose Loader serves. Only a generous bound is
// asserted; the elapsed times are logged.
func TestNewBoundedByTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	bound := 5*timeout + time.Second
	check := func(t *testing.T, o Options[string]) {
		src := newSource()
		src.put("k", "v")
		o.Loader = src
		o.Timeout = timeout
		start := time.Now()
		c, err := New(o)
		elapsed := time.Since(start)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		t.Logf("New took %v (Timeout %v)", elapsed, timeout)
		if elapsed > bound {
			t.Errorf("New took %v, more than %v", elapsed, bound)
		}
		for _, k := range []string{"k", "k"} { // a miss, then (maybe) a near-cache hit
			start = time.Now()
			v, err := c.Get(context.Background(), k)
			t.Logf("Get took %v", time.Since(start))
			if err != nil || v != "v" {
				t.Fatalf("Get = %q, %v; want the Loader's value", v, err)
			}
		}
	}
	t.Run("refused", func(t *testing.T) {
		servers := redistest.Start(t, 3)
		o := addrOpts[string](t, servers)
		for _, s := range servers {
			if err := s.Stop(); err != nil {
				t.Fatal(err)
			}
		}
		check(t, o)
	})
	t.Run("hung", func(t *testing.T) {
		servers := redistest.Start(t, 3)
		o := addrOpts[string](t, servers)
		for _, s := range servers {
			if err := s.Pause(); err != nil {
				t.Skipf("cannot pause redis-server: %v", err)
			}
			t.Cleanup(func() { s.Resume() })
		}
		check(t, o)
	})
}

// With a Redis Cluster as the shared tier, every master answers PING.
func TestPingCluster(t *testing.T) {
	cluster := redistest.StartClusterT(t, 3)
	cl := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cluster.Addrs(), ContextTimeoutEnabled: true, MaxRetries: -1})
	t.Cleanup(func() { cl.Close() })
	c := newCache(t, Options[string]{Client: cl, Namespace: "tPingCluster", Timeout: 2 * time.Second})
	pollPing(t, c, "a healthy cluster", func(err error) bool { return err == nil })

	down := cluster.Nodes[2]
	if err := down.Stop(); err != nil {
		t.Fatal(err)
	}
	err := pollPing(t, c, "the stopped master to fail Ping", func(err error) bool { return err != nil })
	t.Logf("Ping with a master stopped: %v", err)
	if !strings.Contains(err.Error(), `node "redis"`) || !strings.Contains(err.Error(), down.Addr()) {
		t.Errorf("Ping = %v, want an error naming the node and the stopped master %s", err, down.Addr())
	}
}
