package tiered

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tieredcache/tiered/internal/local"
	"github.com/tieredcache/tiered/internal/redistest"
)

// TestMaxStalenessOnSlowLink: B's links to the node have 700 ms of latency (server to
// client) while A writes. The subscription stays up (its pings are answered, late), so
// nothing marks the node down, and invalidations reach B 700 ms after their writes.
// With MaxStaleness 250 ms, B's near-cache stops serving the node's keys once its last
// confirmation is older than that, and reads Redis instead: no read is staler than
// MaxStaleness plus a clock tick (plus a margin for a loaded machine). The control,
// with MaxStaleness 30 s, serves near hits all along and reads values replaced by
// writes acknowledged far longer ago: the bound, not the scenario, keeps reads fresh.
func TestMaxStalenessOnSlowLink(t *testing.T) {
	const (
		latency = 700 * time.Millisecond
		bound   = 250 * time.Millisecond
		margin  = 100 * time.Millisecond // the near-cache clock's goroutine, -race on 2 cores
		hold    = 2 * time.Second
	)
	run := func(t *testing.T, maxStale time.Duration) (during staleness, hits uint64) {
		servers := redistest.Start(t, 1)
		link := newSlowLink(t, servers[0].Addr())
		src := newSource()
		h := newHistory()
		oa := ringOpts[string](t, servers)
		oa.Loader = src
		a := newCache(t, oa)
		ob := ringOpts[string](t, servers, func(_ int, o *redis.Options) { o.Addr = link.addr() })
		ob.Loader, ob.HealthCheck, ob.Timeout, ob.MaxStaleness = src, 50*time.Millisecond, 5*time.Second, maxStale
		b := newCache(t, ob)
		waitFor(t, "A and B subscribed", func() bool { return allUp(a) && allUp(b) })
		keys := ownedKeys(a, "k", 8, 0)
		w := newVersionWriter(a, src, h)
		seedVersions(t, w, b, keys)
		for _, k := range keys {
			waitLocal(t, b, k)
		}
		link.delay.Store(int64(latency))
		slowAt := time.Now()
		writers := startWriters(t, w, keys, 2, 20*time.Millisecond)
		readers := startReaders(t, b, h, keys, 4, time.Millisecond)
		base := b.Stats()
		tick := time.NewTicker(10 * time.Millisecond)
		var fresh, samples int
		defer func() { t.Logf("node fresh in %d of %d samples", fresh, samples) }()
		for time.Since(slowAt) < hold || h.readsSince(slowAt, nil) < 20 {
			samples++
			if b.local.Fresh(0) {
				fresh++
			}
			if time.Since(slowAt) > 20*time.Second {
				t.Fatalf("only %d reads on the slow link", h.readsSince(slowAt, nil))
			}
			<-tick.C
		}
		tick.Stop()
		writers.stop()
		readers.stop()
		if !b.local.Up(0) {
			t.Fatal("the slow link was taken for a lost one: the scenario needs it up")
		}
		during = h.analyze(slowAt, time.Time{}, bound+local.Tick+margin, nil)
		hits = b.Stats().LocalHits - base.LocalHits
		t.Logf("MaxStaleness %v, %v latency: %v; near hits %d; A's write errors %d", maxStale, latency, during, hits, writers.errs.Load())
		return during, hits
	}

	t.Run("bounded", func(t *testing.T) {
		during, _ := run(t, bound)
		if during.stale > 0 {
			t.Errorf("%d reads staler than MaxStaleness + tick + margin (%v); worst %v", during.stale, bound+local.Tick+margin, during.maxAge)
		}
	})
	t.Run("control", func(t *testing.T) {
		during, hits := run(t, 30*time.Second)
		if hits == 0 || during.maxAge < latency/2 {
			t.Errorf("without the bound, expected near hits staler than %v on a %v link; got %d hits, max age %v", latency/2, latency, hits, during.maxAge)
		}
	})
}

// TestClusterMaxStalenessOnSlowBus: on a Redis Cluster, an invalidation published on
// one master reaches the subscription's node over the cluster bus, which the
// subscription's own pings do not cross. Here the bus into the subscription's node is
// slowed by 700 ms while A writes keys of the other masters: B (MaxStaleness 250 ms)
// must serve no read staler than its bound, which its per-master confirmations give
// (every master publishes them, behind its invalidations, on the same bus link);
// C, on the same Cluster without the bound, shows the bus was that slow.
func TestClusterMaxStalenessOnSlowBus(t *testing.T) {
	const (
		latency = 700 * time.Millisecond
		bound   = 250 * time.Millisecond
		margin  = 100 * time.Millisecond // the near-cache clock's goroutine, -race on 2 cores
		hold    = 2 * time.Second
	)
	// A node timeout far above the bus's latency: the slow link must not be taken for
	// a failed node.
	cluster := redistest.StartClusterT(t, 3, redistest.WithArgs("--cluster-node-timeout", "20000"))
	ctx := context.Background()
	newClient := func() *redis.ClusterClient {
		cl := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cluster.Addrs(), ContextTimeoutEnabled: true})
		t.Cleanup(func() { cl.Close() })
		return cl
	}
	src := newSource()
	h, hc := newHistory(), newHistory()
	opts := func(maxStale time.Duration) Options[string] {
		return Options[string]{Client: newClient(), Namespace: "slowbus", Loader: src,
			HealthCheck: 50 * time.Millisecond, Timeout: 5 * time.Second, MaxStaleness: maxStale}
	}
	a := newCache(t, opts(time.Second))
	b := newCache(t, opts(bound))
	c := newCache(t, opts(30*time.Second))
	waitFor(t, "A, B and C subscribed", func() bool { return allUp(a) && allUp(b) && allUp(c) })

	// The subscriptions are on the master of the channel's slot: slow the bus into it.
	cl := newClient()
	sub, err := cl.MasterForKey(ctx, a.shared.(interface{ Channel() string }).Channel())
	if err != nil {
		t.Fatal(err)
	}
	var subNode *redistest.Server
	for _, n := range cluster.Nodes {
		if n.Addr() == sub.Options().Addr {
			subNode = n
		}
	}
	if subNode == nil {
		t.Fatalf("the subscriptions' node %s is not in the cluster", sub.Options().Addr)
	}
	link := newSlowLink(t, fmt.Sprintf("127.0.0.1:%d", subNode.Port()+10000))
	_, proxyPort, _ := net.SplitHostPort(link.addr())
	if _, err := subNode.Do(ctx, "CONFIG", "SET", "cluster-announce-bus-port", proxyPort); err != nil {
		t.Fatal(err)
	}
	// The other masters reconnect their bus links to the node through the proxy.
	waitFor(t, "the other masters' bus links to the node go through the proxy", func() bool {
		for _, n := range cluster.Nodes {
			if n == subNode {
				continue
			}
			nodes, err := n.Do(ctx, "CLUSTER", "NODES")
			if err != nil || !strings.Contains(fmt.Sprint(nodes), "@"+proxyPort) {
				return false
			}
		}
		return link.accepted.Load() >= int64(len(cluster.Nodes)-1)
	})

	// Keys of the other masters: their invalidations cross the slow bus.
	var keys []string
	for i := 0; len(keys) < 8; i++ {
		k := fmt.Sprint("k:", i)
		m, err := cl.MasterForKey(ctx, redisKey(a, k))
		if err != nil {
			t.Fatal(err)
		}
		if m.Options().Addr != subNode.Addr() {
			keys = append(keys, k)
		}
	}
	w := newVersionWriter(a, src, h)
	seedVersions(t, w, b, keys)
	for _, k := range keys {
		if _, err := c.Get(ctx, k); err != nil {
			t.Fatal(err)
		}
		waitLocal(t, b, k)
		waitLocal(t, c, k)
	}
	link.upDelay.Store(int64(latency))
	slowAt := time.Now()
	writers := startWriters(t, w, keys, 2, 20*time.Millisecond)
	rb := startReaders(t, b, h, keys, 4, time.Millisecond)
	rc := startReaders(t, c, hc, keys, 4, time.Millisecond)
	base, basec := b.Stats(), c.Stats()
	for time.Since(slowAt) < hold || h.readsSince(slowAt, nil) < 20 {
		if time.Since(slowAt) > 20*time.Second {
			t.Fatalf("only %d reads on the slow bus", h.readsSince(slowAt, nil))
		}
		<-time.After(10 * time.Millisecond) // the length of the run, not a wait for an event
	}
	writers.stop()
	rb.stop()
	rc.stop()
	if !b.local.Up(0) || !c.local.Up(0) {
		t.Fatal("a subscription was lost: the scenario needs it up")
	}
	hc.acks = h.acks // the writers are stopped: C's reads are judged against the same acknowledgements
	during := h.analyze(slowAt, time.Time{}, bound+local.Tick+margin, nil)
	control := hc.analyze(slowAt, time.Time{}, bound+local.Tick+margin, nil)
	t.Logf("B, MaxStaleness %v: %v; near hits %d", bound, during, b.Stats().LocalHits-base.LocalHits)
	t.Logf("C, MaxStaleness 30s: %v; near hits %d", control, c.Stats().LocalHits-basec.LocalHits)
	t.Logf("A's write errors: %d", writers.errs.Load())
	if during.stale > 0 {
		t.Errorf("B: %d reads staler than MaxStaleness + tick + margin (%v); worst %v", during.stale, bound+local.Tick+margin, during.maxAge)
	}
	if control.maxAge < latency/2 {
		t.Errorf("C, without the bound: expected reads staler than %v on a %v bus; max age %v", latency/2, latency, control.maxAge)
	}
}

// slowLink is a TCP proxy that delays what the server sends by delay, and what the
// client sends by upDelay (from when they are set; 0: none), keeping its order: a link
// that is slow but neither silent nor lost.
type slowLink struct {
	ln       net.Listener
	upstream string
	delay    atomic.Int64 // nanoseconds, server to client
	upDelay  atomic.Int64 // nanoseconds, client to server
	accepted atomic.Int64 // connections accepted
	wg       sync.WaitGroup
	mu       sync.Mutex // protects conns
	conns    []net.Conn
}

func newSlowLink(t *testing.T, upstream string) *slowLink {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &slowLink{ln: ln, upstream: upstream}
	l.wg.Go(l.accept)
	t.Cleanup(func() {
		ln.Close()
		l.mu.Lock()
		for _, c := range l.conns {
			c.Close()
		}
		l.mu.Unlock()
		l.wg.Wait()
	})
	return l
}

func (l *slowLink) addr() string { return l.ln.Addr().String() }

func (l *slowLink) accept() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", l.upstream)
		if err != nil {
			c.Close()
			continue
		}
		l.accepted.Add(1)
		l.mu.Lock()
		l.conns = append(l.conns, c, u)
		l.mu.Unlock()
		l.pipe(u, c, &l.upDelay)
		l.pipe(c, u, &l.delay)
	}
}

// pipe copies what src sends to dst, each chunk delay after it was read; when either
// side fails, both are closed.
func (l *slowLink) pipe(dst, src net.Conn, delay *atomic.Int64) {
	chunks := make(chan chunk, 4096)
	l.wg.Go(func() { // read, stamp with when it may go
		defer close(chunks)
		for {
			b := make([]byte, 32<<10)
			n, err := src.Read(b)
			if n > 0 {
				chunks <- chunk{b: b[:n], at: time.Now().Add(time.Duration(delay.Load()))}
			}
			if err != nil {
				return
			}
		}
	})
	l.wg.Go(func() {
		defer dst.Close()
		for ch := range chunks {
			if d := time.Until(ch.at); d > 0 {
				<-time.After(d) // the link's latency
			}
			if _, err := dst.Write(ch.b); err != nil {
				src.Close()
				for range chunks { // drain until the reader ends
				}
				return
			}
		}
	})
}

type chunk struct {
	b  []byte
	at time.Time
}

// TestNodeStatusConfirmed: Nodes reports when each node was last confirmed. It
// follows the pings while the node answers, stops while the node is paused (so the
// node's keys leave the near-cache once it is MaxStaleness old), and moves on again
// when the node answers.
func TestNodeStatusConfirmed(t *testing.T) {
	const maxStale = 300 * time.Millisecond
	srv := redistest.Start(t, 1)
	o := ringOpts[string](t, srv)
	o.Loader, o.HealthCheck, o.Timeout, o.MaxStaleness = newSource(), 50*time.Millisecond, 5*time.Second, maxStale
	c := newCache(t, o)
	confirmed := func() time.Time { return c.Nodes()[0].Confirmed }
	waitFor(t, "the node confirmed within MaxStaleness", func() bool {
		at := confirmed()
		return !at.IsZero() && time.Since(at) < maxStale && c.local.Fresh(0)
	})
	if err := srv[0].Pause(); err != nil {
		t.Fatal(err)
	}
	paused := time.Now()
	waitFor(t, "the paused node's confirmation older than twice MaxStaleness", func() bool {
		return time.Since(confirmed()) > 2*maxStale
	})
	if at := confirmed(); at.After(paused) {
		t.Errorf("confirmed at %v, after the node was paused (%v)", at, paused)
	}
	if c.local.Fresh(0) {
		t.Error("the node's keys are still served from the near-cache, its confirmation older than MaxStaleness")
	}
	if err := srv[0].Resume(); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	waitFor(t, "the node confirmed again", func() bool { return confirmed().After(resumed) && c.local.Fresh(0) })
}

// TestNearCacheServesThroughOutage: the only node is stopped. With a long MaxStaleness
// the near-cache keeps answering what it holds (no load, no error) although the node's
// subscription is down; with a short one, the keys go to the Loader once the node's
// last confirmation is MaxStaleness old. Availability over freshness is the user's
// choice of MaxStaleness.
func TestNearCacheServesThroughOutage(t *testing.T) {
	run := func(t *testing.T, maxStale time.Duration) (c *Cache[string], src *source, stopped time.Time, keys []string) {
		srv := redistest.Start(t, 1)
		src = newSource()
		o := ringOpts[string](t, srv)
		o.Loader, o.HealthCheck, o.Timeout, o.MaxStaleness = src, 100*time.Millisecond, 200*time.Millisecond, maxStale
		c = newCache(t, o)
		waitFor(t, "subscribed", func() bool { return allUp(c) })
		ctx := context.Background()
		for i := range 20 {
			k := fmt.Sprintf("k%d", i)
			src.put(k, "v")
			keys = append(keys, k)
			if _, err := c.Get(ctx, k); err != nil {
				t.Fatal(err)
			}
			waitLocal(t, c, k)
		}
		if err := srv[0].Stop(); err != nil {
			t.Fatal(err)
		}
		stopped = time.Now()
		waitFor(t, "the subscription is lost", func() bool { return !c.Nodes()[0].Subscribed })
		return c, src, stopped, keys
	}
	ctx := context.Background()

	t.Run("long", func(t *testing.T) {
		c, src, stopped, keys := run(t, 30*time.Second)
		loads := src.calls.Load()
		for time.Since(stopped) < 1500*time.Millisecond {
			for _, k := range keys {
				if v, err := c.Get(ctx, k); err != nil || v != "v" {
					t.Fatalf("Get(%s) in the outage = %q, %v", k, v, err)
				}
			}
		}
		if n := src.calls.Load() - loads; n != 0 {
			t.Errorf("%d loads in the outage with MaxStaleness 30 s: the near-cache did not answer", n)
		}
		if st := c.Stats(); st.SubscriptionsLost == 0 {
			t.Errorf("the outage was not noticed: %+v", st)
		}
	})
	t.Run("short", func(t *testing.T) {
		const maxStale = 300 * time.Millisecond
		c, src, stopped, keys := run(t, maxStale)
		loads := src.calls.Load()
		at := waitFor(t, "the keys go to the Loader", func() bool {
			for _, k := range keys {
				if _, err := c.Get(ctx, k); err != nil {
					t.Fatal(err)
				}
			}
			return src.calls.Load()-loads >= int64(len(keys))
		})
		t.Logf("near-cache answered for %v after the node stopped (MaxStaleness %v)", at.Sub(stopped).Round(time.Millisecond), maxStale)
		if at.Sub(stopped) > maxStale+local.Tick+time.Second {
			t.Errorf("the near-cache answered %v into the outage, well past MaxStaleness %v", at.Sub(stopped), maxStale)
		}
	})
}
