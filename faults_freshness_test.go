package tiered

import (
	"context"
	"fmt"
	"io"
	"net"
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

// slowLink is a TCP proxy that delays what the server sends by delay (from when it is
// set; 0: none), keeping its order: a link that is slow but neither silent nor lost.
type slowLink struct {
	ln       net.Listener
	upstream string
	delay    atomic.Int64 // nanoseconds
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
		l.mu.Lock()
		l.conns = append(l.conns, c, u)
		l.mu.Unlock()
		l.wg.Go(func() { io.Copy(u, c); u.Close() })
		chunks := make(chan chunk, 4096)
		l.wg.Go(func() { // server to client: read, stamp with when it may go
			defer close(chunks)
			for {
				b := make([]byte, 32<<10)
				n, err := u.Read(b)
				if n > 0 {
					chunks <- chunk{b: b[:n], at: time.Now().Add(time.Duration(l.delay.Load()))}
				}
				if err != nil {
					return
				}
			}
		})
		l.wg.Go(func() {
			defer c.Close()
			for ch := range chunks {
				if d := time.Until(ch.at); d > 0 {
					<-time.After(d) // the link's latency
				}
				if _, err := c.Write(ch.b); err != nil {
					u.Close()
					for range chunks { // drain until the reader ends
					}
					return
				}
			}
		})
	}
}

type chunk struct {
	b  []byte
	at time.Time
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
