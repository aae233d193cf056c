package tiered

// Fault: a network partition between B and one node, black-holed through toxiproxy:
// open connections stay open and silent, new ones are accepted and silent too, so only
// the subscriber's ping can notice. C4 (while a node's subscriber is down, its keys are
// not served from the near-cache) and C5 (bounded staleness) hold: B marks the node
// down within HealthCheck + Timeout and serves its keys fresh from then on. The harness
// is in faults_harness_test.go.

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/tieredcache/tiered/internal/redistest"
)

// blackHole is an in-process toxiproxy in front of one node. B's client dials whatever
// proxy is live; cut black-holes it, heal replaces it with a clean one.
//
// Why a "timeout" toxic with timeout 0 on both streams (toxics/timeout.go): it reads
// and drops every byte without closing anything, so open connections stay open and
// silent and new ones are accepted and silent too: a partition or a hung node, which
// only the subscriber's ping can detect. Disabling the proxy (Proxy.Stop) instead
// closes every connection and refuses new ones: a clean failure, noticed at once
// from the EOF, which TestC4ClientKillUnderLoad and TestC4NodeKillRestart cover.
//
// Why heal by replacing the proxy rather than removing the toxic: removing a timeout
// toxic closes every connection through it anyway (TimeoutToxic.Cleanup), and
// ToxicLink.RemoveToxic in v2.12.0 leaves the stub before it sending into the
// removed stub's unbuffered input: a chunk that arrives in that window blocks that
// goroutine forever (NoopToxic.Pipe, chan send), which goleak reports; a scratch
// program removing the toxics under traffic leaked one in 9 heals of 50. Stopping the
// proxy with the toxics still in place drains every link (the toxic keeps reading
// until the input closes), and the clients see the same thing: their connections
// through the black hole are closed, new ones work.
type blackHole struct {
	srv      *toxiproxy.ApiServer
	name     string
	upstream string
	addr     atomic.Pointer[string]
	mu       sync.Mutex
	proxies  []*toxiproxy.Proxy // every proxy started; the live one last
}

func newBlackHole(t *testing.T, srv *toxiproxy.ApiServer, name, upstream string) *blackHole {
	h := &blackHole{srv: srv, name: name, upstream: upstream}
	h.start(t)
	t.Cleanup(func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, p := range h.proxies {
			p.Stop() // closes every connection; the links' goroutines then drain
		}
	})
	return h
}

func (h *blackHole) start(t *testing.T) {
	t.Helper()
	p := toxiproxy.NewProxy(h.srv, h.name, "127.0.0.1:0", h.upstream)
	if err := p.Start(); err != nil {
		t.Fatalf("toxiproxy %s: %v", h.name, err)
	}
	h.mu.Lock()
	h.proxies = append(h.proxies, p)
	h.mu.Unlock()
	addr := p.Listen // the port it bound, set before Start returned
	h.addr.Store(&addr)
}

func (h *blackHole) live() *toxiproxy.Proxy {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.proxies[len(h.proxies)-1]
}

func (h *blackHole) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", *h.addr.Load())
}

// cut adds a "timeout" toxic with timeout 0 to both directions: every byte is
// dropped, open connections stay open, new ones are accepted and dead too.
func (h *blackHole) cut(t *testing.T) {
	t.Helper()
	for _, stream := range []string{"downstream", "upstream"} {
		js := fmt.Sprintf(`{"name":"blackhole_%s","type":"timeout","stream":%q,"toxicity":1,"attributes":{"timeout":0}}`, stream, stream)
		if _, err := h.live().Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
			t.Fatalf("add toxic: %v", err)
		}
	}
}

// heal ends the black hole: the black-holed proxy is stopped (closing every
// connection through it, as removing a timeout toxic would) and a clean one started.
func (h *blackHole) heal(t *testing.T) {
	t.Helper()
	h.live().Stop()
	h.start(t)
}

// TestC4BlackHole black-holes B's links to node X for 1.5 s under load: B marks X down
// within HealthCheck + Timeout, serves X's keys fresh (from X's loads) until the heal,
// and comes back to X's near-cache entries only through a confirmed re-subscription.
func TestC4BlackHole(t *testing.T) {
	// B's Timeout and HealthCheck are small so that the test is fast: a silent link
	// is pinged after 100 ms and given up 200 ms later.
	const (
		hc      = 100 * time.Millisecond
		timeout = 200 * time.Millisecond
		margin  = 300 * time.Millisecond // -race on a loaded 2-core machine
		delta   = hc + timeout + margin
		x       = 0 // the node B loses
		hold    = 1500 * time.Millisecond
	)
	servers := redistest.Start(t, 3)
	tp := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	// After every proxy has been stopped (cleanups run last-in first-out):
	t.Cleanup(func() { waitGoroutinesGone(t, "github.com/Shopify/toxiproxy", 5*time.Second) })
	holes := make([]*blackHole, len(servers))
	for i, s := range servers {
		holes[i] = newBlackHole(t, tp, fmt.Sprintf("node-%d", i), s.Addr())
	}
	src := newSource()
	h := newHistory()
	// A's clients dial the nodes directly; B's dial through the holes.
	a, b := writerAndReader(t, servers, src, hc, timeout, func(i int, o *redis.Options) {
		o.Addr = *holes[i].addr.Load()
		o.Dialer = holes[i].dial
	})
	xkeys := ownedKeys(a, "x", 10, x)
	isX := keySet(xkeys)
	keys := append(ownedKeys(a, "o", 5, 1, 2), xkeys...)
	w := newVersionWriter(a, src, h)
	seedVersions(t, w, b, keys)

	writers := startWriters(t, w, keys, 3, 5*time.Millisecond)
	readers := startReaders(t, b, h, keys, 4, 500*time.Microsecond)
	base := b.Stats()
	waitFor(t, "B serving from its near-cache and receiving invalidations", func() bool {
		s := b.Stats()
		return s.LocalHits-base.LocalHits >= 500 && s.InvalidationsReceived-base.InvalidationsReceived >= 200
	})

	cutAt := time.Now()
	holes[x].cut(t)
	cutDone := time.Now()
	downAt := waitFor(t, "B marks X down", func() bool { return !b.local.Up(x) })
	cutStats := b.Stats()
	// Hold the black hole; X must stay down in B all along (no subscription can be
	// confirmed through it), and B must have read X's keys meanwhile.
	tick := time.NewTicker(5 * time.Millisecond)
	for time.Since(cutDone) < hold || h.readsSince(downAt, isX) < 10 {
		if b.local.Up(x) {
			t.Fatalf("B marked X up %v into the black hole", time.Since(cutDone))
		}
		if time.Since(cutDone) > 10*time.Second {
			t.Fatalf("B read X's keys only %d times in the black hole", h.readsSince(downAt, isX))
		}
		<-tick.C
	}
	tick.Stop()
	holeStats := b.Stats()
	healAt := time.Now()
	holes[x].heal(t)
	upAt := waitFor(t, "B re-subscribed to X after the heal", func() bool { return b.local.Up(x) })

	writers.stop()
	lastAck := writeAll(t, w, keys)
	finish(t, w, b, h, readers, keys, lastAck.Add(delta), isX, 200)

	s := b.Stats()
	logStats(t, "B", s)
	detect := downAt.Sub(cutAt)
	t.Logf("black hole on X for %v (adding the toxics took %v); B marked X down %v after the cut (bound HealthCheck+Timeout = %v); "+
		"B up again %v after the heal; Δ = %v; A's write errors %d",
		healAt.Sub(cutAt).Round(time.Millisecond), cutDone.Sub(cutAt).Round(time.Microsecond), detect.Round(time.Millisecond), hc+timeout,
		upAt.Sub(healAt).Round(time.Millisecond), delta, writers.errs.Load())
	t.Logf("in the black hole after detection: B's loads +%d, remote errors +%d, invalidations received +%d",
		holeStats.Loads-cutStats.Loads, holeStats.RemoteErrors-cutStats.RemoteErrors, holeStats.InvalidationsReceived-cutStats.InvalidationsReceived)
	before := h.analyze(time.Time{}, cutAt, delta, nil)
	window := h.analyze(cutAt, downAt, delta, isX)
	hole := h.analyze(downAt, healAt, delta, isX)
	holeOthers := h.analyze(cutAt, healAt, delta, func(k string) bool { return !isX(k) })
	after := h.analyze(healAt, time.Time{}, delta, nil)
	t.Logf("before the cut: %v", before)
	t.Logf("X's keys, cut until detection: %v", window)
	t.Logf("X's keys, detection until heal: %v", hole)
	t.Logf("other nodes' keys during the black hole: %v", holeOthers)
	t.Logf("after heal: %v", after)

	if detect > hc+timeout+margin {
		t.Errorf("B took %v to mark X down, more than HealthCheck+Timeout+margin = %v", detect, hc+timeout+margin)
	}
	if window.maxAge > hc+timeout+margin {
		t.Errorf("a read of X's keys before detection was %v stale, more than the detection bound %v", window.maxAge, hc+timeout+margin)
	}
	// While X is down no invalidation can reach B, so a Get may join a load of the key
	// already in flight, whose Loader read the source just before a write: such a read
	// is older than that write by at most one load (its shared-tier read is bounded by
	// Timeout, or fails at once once the breaker is open). Nothing older may appear.
	if hole.maxAge > timeout+margin {
		t.Errorf("a read of X's keys after B marked X down was %v older than an acknowledged write, more than one load (%v); %d such reads in all",
			hole.maxAge, timeout+margin, hole.staleAny)
	}
	if before.stale+holeOthers.stale+after.stale > 0 {
		t.Errorf("stale reads by more than Δ=%v: %d before the cut, %d of other nodes' keys in the black hole, %d after heal",
			delta, before.stale, holeOthers.stale, after.stale)
	}
	if hole.reads == 0 || holeStats.Loads == cutStats.Loads {
		t.Errorf("B read X's keys %d times in the black hole, with %d loads", hole.reads, holeStats.Loads-cutStats.Loads)
	}
	if w := writers.errs.Load(); w > 0 {
		t.Errorf("A's Set failed %d times", w)
	}
}
