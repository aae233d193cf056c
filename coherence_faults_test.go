package tiered

// Invariant C4 (lost messages) against real redis-server processes.
//
// Every test runs a writer Cache A and a reader Cache B (clients of their own) on one
// 3-node ring, with a Loader over a source of truth that A updates before each Set.
// A c4History records when each of A's writes was acknowledged and what each of B's
// reads returned. A read of B that starts more than Δ after the acknowledgement of a
// newer version than the one it returns is a stale read; its age is how long before
// the read started that newer version was acknowledged.

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"runtime"
	"sort"
	"strconv"
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

// ---- staleness checker ----

type c4Ack struct {
	ver int
	at  time.Time // when A's Set returned
}

type c4Read struct {
	key   string
	start time.Time
	ver   int
	done  time.Time // when it was recorded: ascending in c4History.reads
}

// c4History records A's acknowledged writes and B's reads.
type c4History struct {
	mu    sync.Mutex
	acks  map[string][]c4Ack // per key, ascending version (one writer per key at a time)
	reads []c4Read
	errs  []string // first few read errors
	nerrs int
}

func newC4History() *c4History { return &c4History{acks: make(map[string][]c4Ack)} }

func (h *c4History) ack(key string, ver int, at time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.acks[key] = append(h.acks[key], c4Ack{ver, at})
}

func (h *c4History) read(key string, start time.Time, ver int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.reads = append(h.reads, c4Read{key, start, ver, time.Now()})
}

func (h *c4History) fail(key string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nerrs++
	if len(h.errs) < 5 {
		h.errs = append(h.errs, fmt.Sprintf("%s: %v", key, err))
	}
}

// readsSince counts the reads of keys accepted by match that started at or after from.
func (h *c4History) readsSince(from time.Time, match func(string) bool) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	// Reads are recorded when they end, so none recorded before from started after it.
	for i := len(h.reads) - 1; i >= 0 && !h.reads[i].done.Before(from); i-- {
		if r := h.reads[i]; !r.start.Before(from) && (match == nil || match(r.key)) {
			n++
		}
	}
	return n
}

// age returns how long before r started a version newer than r's had been
// acknowledged, and the newest version acknowledged by then; age < 0 if r was fresh.
func (h *c4History) age(r c4Read) (age time.Duration, want int) {
	acks := h.acks[r.key]
	i := sort.Search(len(acks), func(i int) bool { return acks[i].ver > r.ver })
	if i == len(acks) || !acks[i].at.Before(r.start) {
		return -1, r.ver
	}
	j := sort.Search(len(acks), func(j int) bool { return !acks[j].at.Before(r.start) })
	return r.start.Sub(acks[i].at), acks[j-1].ver
}

type c4Result struct {
	reads, stale int
	maxAge       time.Duration // over all stale reads, whatever delta
	staleAny     int           // reads with any age > 0
	worst        c4Read
	worstWant    int
}

// analyze looks at the reads of keys accepted by match (nil: all) that started in
// [from, to) (zero to: no end) and counts those older than delta.
func (h *c4History) analyze(from, to time.Time, delta time.Duration, match func(string) bool) c4Result {
	h.mu.Lock()
	defer h.mu.Unlock()
	var res c4Result
	for _, r := range h.reads {
		if r.start.Before(from) || (!to.IsZero() && !r.start.Before(to)) || (match != nil && !match(r.key)) {
			continue
		}
		res.reads++
		age, want := h.age(r)
		if age < 0 {
			continue
		}
		res.staleAny++
		if age > res.maxAge {
			res.maxAge, res.worst, res.worstWant = age, r, want
		}
		if age > delta {
			res.stale++
		}
	}
	return res
}

func (r c4Result) String() string {
	s := fmt.Sprintf("%d reads, %d stale by more than Δ; %d older than an earlier ack at all, max age %v",
		r.reads, r.stale, r.staleAny, r.maxAge.Round(time.Microsecond))
	if r.staleAny > 0 {
		s += fmt.Sprintf(" (%s read v%d, v%d acknowledged)", r.worst.key, r.worst.ver, r.worstWant)
	}
	return s
}

// c4Writer writes versions 1, 2, 3, ... of each key through A: source first, then
// Set, and records the acknowledgement. One goroutine per key at a time.
type c4Writer struct {
	a   *Cache[string]
	src *source
	h   *c4History
	mu  sync.Mutex
	ver map[string]int
}

func newC4Writer(a *Cache[string], src *source, h *c4History) *c4Writer {
	return &c4Writer{a: a, src: src, h: h, ver: make(map[string]int)}
}

func (w *c4Writer) next(key string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ver[key]++
	return w.ver[key]
}

func (w *c4Writer) current(key string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ver[key]
}

// set writes version ver of key; it may be called again with the same ver after an
// error (the Set may or may not have happened).
func (w *c4Writer) set(ctx context.Context, key string, ver int) (time.Time, error) {
	val := strconv.Itoa(ver)
	w.src.put(key, val)
	if err := w.a.Set(ctx, key, val); err != nil {
		return time.Time{}, err
	}
	at := time.Now()
	w.h.ack(key, ver, at)
	return at, nil
}

func (w *c4Writer) write(ctx context.Context, key string) (int, time.Time, error) {
	ver := w.next(key)
	at, err := w.set(ctx, key, ver)
	return ver, at, err
}

// ---- load ----

type c4Load struct {
	cancel context.CancelFunc
	ctx    context.Context
	wg     sync.WaitGroup
	errs   atomic.Int64
}

func newC4Load() *c4Load {
	l := &c4Load{}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	return l
}

// stop ends the load and waits for its goroutines. Idempotent.
func (l *c4Load) stop() { l.cancel(); l.wg.Wait() }

// paced runs fn every period on n goroutines until stop.
func (l *c4Load) paced(n int, period time.Duration, fn func(g int, rng *rand.Rand)) {
	for g := range n {
		l.wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), uint64(time.Now().UnixNano())))
			tick := time.NewTicker(period)
			defer tick.Stop()
			for {
				select {
				case <-l.ctx.Done():
					return
				case <-tick.C:
				}
				fn(g, rng)
			}
		})
	}
}

// c4StartWriters has n goroutines write keys through w, each its own share of them.
func c4StartWriters(t *testing.T, w *c4Writer, keys []string, n int, period time.Duration) *c4Load {
	l := newC4Load()
	t.Cleanup(l.stop)
	mine := make([][]string, n) // goroutine g writes keys g, g+n, g+2n, ...
	for i, k := range keys {
		mine[i%n] = append(mine[i%n], k)
	}
	next := make([]int, n) // next[g] is used by goroutine g only
	l.paced(n, period, func(g int, _ *rand.Rand) {
		k := mine[g][next[g]%len(mine[g])]
		next[g]++
		if _, _, err := w.write(context.Background(), k); err != nil {
			l.errs.Add(1)
		}
	})
	return l
}

// c4StartReaders has n goroutines read random keys through b and record them in h.
func c4StartReaders(t *testing.T, b *Cache[string], h *c4History, keys []string, n int, period time.Duration) *c4Load {
	l := newC4Load()
	t.Cleanup(l.stop)
	l.paced(n, period, func(_ int, rng *rand.Rand) {
		k := keys[rng.IntN(len(keys))]
		start := time.Now()
		v, err := b.Get(context.Background(), k)
		if err == nil {
			var ver int
			if ver, err = strconv.Atoi(v); err == nil {
				h.read(k, start, ver)
				return
			}
		}
		h.fail(k, err)
	})
	return l
}

// ---- caches and waiting ----

// c4Cache returns a Cache with a ring of clients of its own over servers (named and
// namespaced like ringOpts, so A and B agree on owners and channels). custom may
// change each client's options. A zero timeout is ringOpts's 2 s; a zero hc is
// Options' default.
func c4Cache(t *testing.T, servers []*redistest.Server, src *source, hc, timeout time.Duration, custom func(i int, o *redis.Options)) *Cache[string] {
	t.Helper()
	var nodes []Node
	for i, s := range servers {
		ro := &redis.Options{Addr: s.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1}
		if custom != nil {
			custom(i, ro)
		}
		cl := redis.NewClient(ro)
		t.Cleanup(func() { cl.Close() })
		nodes = append(nodes, Node{Name: fmt.Sprintf("node-%d", i), Client: cl})
	}
	if timeout == 0 {
		timeout = 2 * time.Second
	}
	return newCache(t, Options[string]{
		Nodes:       nodes,
		Namespace:   "t" + strings.ReplaceAll(t.Name(), "/", "_"),
		Timeout:     timeout,
		HealthCheck: hc,
		Loader:      src,
	})
}

// c4WaitFor polls cond every millisecond until it holds, and returns when it did.
func c4WaitFor(t *testing.T, within time.Duration, what string, cond func() bool) time.Time {
	t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		if cond() {
			return time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
		<-tick.C
	}
}

func c4AllUp(c *Cache[string]) bool {
	for i := range len(c.subs) {
		if !c.local.Up(i) {
			return false
		}
	}
	return true
}

// c4Keys returns n keys owned by each of nodes, in that order.
func c4Keys(c *Cache[string], prefix string, n int, nodes ...int) []string {
	var keys []string
	for _, node := range nodes {
		found := 0
		for i := 0; found < n; i++ {
			k := fmt.Sprintf("%s:%d", prefix, i)
			if c.shared.Owner(k) == node {
				keys = append(keys, k)
				found++
			}
		}
	}
	return keys
}

func c4In(keys []string) func(string) bool {
	set := make(map[string]bool, len(keys))
	for _, k := range keys {
		set[k] = true
	}
	return func(k string) bool { return set[k] }
}

// c4Seed writes version 1 of every key through w and has b read it.
func c4Seed(t *testing.T, w *c4Writer, b *Cache[string], keys []string) {
	t.Helper()
	ctx := context.Background()
	for _, k := range keys {
		if _, _, err := w.write(ctx, k); err != nil {
			t.Fatalf("seed %q: %v", k, err)
		}
		if v, err := b.Get(ctx, k); err != nil || v != "1" {
			t.Fatalf("B.Get(%q) after seeding = %q, %v", k, v, err)
		}
	}
}

// c4CheckFinal asserts that B returns A's last acknowledged version of every key.
func c4CheckFinal(t *testing.T, w *c4Writer, b *Cache[string], keys []string) {
	t.Helper()
	for _, k := range keys {
		v, err := b.Get(context.Background(), k)
		if want := strconv.Itoa(w.current(k)); err != nil || v != want {
			t.Errorf("B.Get(%q) after heal = %q, %v; want %q", k, v, err, want)
		}
	}
}

func c4CheckReadErrors(t *testing.T, h *c4History) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.nerrs > 0 {
		t.Errorf("B's Gets failed %d times (it has a Loader), e.g. %q", h.nerrs, h.errs)
	}
}

// c4WaitGoroutinesGone waits until no goroutine's stack mentions fn, and returns
// how long that took.
func c4WaitGoroutinesGone(t testing.TB, fn string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(within)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		for n == len(buf) {
			buf = make([]byte, 2*len(buf))
			n = runtime.Stack(buf, true)
		}
		if !bytes.Contains(buf[:n], []byte(fn)) {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Errorf("goroutines in %s still running after %v:\n%s", fn, within, buf[:n])
			return time.Since(start)
		}
		<-tick.C
	}
}

func c4LogStats(t *testing.T, name string, s Stats) {
	t.Helper()
	t.Logf("%s stats: SubscriptionsLost=%d FlushesResubscribe=%d FlushesGap=%d FlushesEpoch=%d InvalidationsReceived=%d "+
		"LocalHits=%d RemoteHits=%d RemoteErrors=%d Loads=%d DeliveryLagMax=%v DeliveryLagMean=%v",
		name, s.SubscriptionsLost, s.FlushesResubscribe, s.FlushesGap, s.FlushesEpoch, s.InvalidationsReceived,
		s.LocalHits, s.RemoteHits, s.RemoteErrors, s.Loads, s.DeliveryLagMax, s.DeliveryLagMean)
}

// ---- 1. pub/sub clients killed under load ----

func TestC4ClientKillUnderLoad(t *testing.T) {
	const (
		hc      = 100 * time.Millisecond
		timeout = 500 * time.Millisecond
		margin  = 400 * time.Millisecond // -race on a loaded 2-core machine
		delta   = hc + timeout + margin
	)
	servers := redistest.Start(t, 3)
	src := newSource()
	h := newC4History()
	a := c4Cache(t, servers, src, 0, 0, nil)
	b := c4Cache(t, servers, src, hc, timeout, nil)
	c4WaitFor(t, 10*time.Second, "A and B subscribed to every node", func() bool { return c4AllUp(a) && c4AllUp(b) })
	keys := c4Keys(a, "hot", 7, 0, 1, 2)[:20]
	w := newC4Writer(a, src, h)
	c4Seed(t, w, b, keys)

	writers := c4StartWriters(t, w, keys, 4, 5*time.Millisecond)
	readers := c4StartReaders(t, b, h, keys, 4, 500*time.Microsecond)
	base := b.Stats()
	c4WaitFor(t, 10*time.Second, "B serving from its near-cache and receiving invalidations", func() bool {
		s := b.Stats()
		return s.LocalHits-base.LocalHits >= 500 && s.InvalidationsReceived-base.InvalidationsReceived >= 200
	})

	// Kill every pub/sub client of every node every 200 ms for 3 s.
	ctx := context.Background()
	killStart := time.Now()
	var kills atomic.Int64
	killErrs := make(chan error, 45)
	var kwg sync.WaitGroup
	kwg.Go(func() {
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for i := range 15 {
			if i > 0 {
				<-tick.C
			}
			for _, s := range servers {
				if err := s.KillPubSubClients(ctx); err != nil {
					killErrs <- err
				} else {
					kills.Add(1)
				}
			}
		}
	})
	kwg.Wait()
	close(killErrs)
	for err := range killErrs {
		t.Errorf("KillPubSubClients: %v", err)
	}
	killEnd := time.Now()
	upAt := c4WaitFor(t, 10*time.Second, "B's nodes all up again after the kills", func() bool { return c4AllUp(b) })

	// A last round of writes; then reads until some start more than Δ after it.
	writers.stop()
	var lastAck time.Time
	for _, k := range keys {
		_, at, err := w.write(ctx, k)
		if err != nil {
			t.Fatalf("final write %q: %v", k, err)
		}
		lastAck = at
	}
	c4WaitFor(t, 10*time.Second, "B's reads more than Δ after the last ack", func() bool {
		return h.readsSince(lastAck.Add(delta), nil) >= 400
	})
	readers.stop()
	c4CheckFinal(t, w, b, keys)
	c4CheckReadErrors(t, h)

	s := b.Stats()
	c4LogStats(t, "B", s)
	t.Logf("%d CLIENT KILL TYPE pubsub over %v; B's nodes all up %v after the last kill; A's write errors %d; Δ = %v",
		kills.Load(), killEnd.Sub(killStart).Round(time.Millisecond), upAt.Sub(killEnd).Round(time.Millisecond), writers.errs.Load(), delta)
	before := h.analyze(time.Time{}, killStart, delta, nil)
	during := h.analyze(killStart, upAt, delta, nil)
	after := h.analyze(upAt, time.Time{}, delta, nil)
	final := h.analyze(lastAck.Add(delta), time.Time{}, delta, nil)
	t.Logf("before the kills: %v", before)
	t.Logf("kill phase (until all up): %v", during)
	t.Logf("after heal: %v", after)
	t.Logf("starting > Δ after the last ack: %v", final)

	if s.SubscriptionsLost-base.SubscriptionsLost == 0 {
		t.Errorf("B lost no subscription: the kills did not reach it")
	}
	if s.FlushesResubscribe-base.FlushesResubscribe == 0 {
		t.Errorf("B never re-subscribed")
	}
	if during.stale > 0 {
		t.Errorf("%d stale reads by more than Δ=%v during the kill phase", during.stale, delta)
	}
	if after.stale > 0 || final.staleAny > 0 {
		t.Errorf("stale reads after heal: %d by more than Δ=%v; %d starting more than Δ after the last ack", after.stale, delta, final.staleAny)
	}
	if w := writers.errs.Load(); w > 0 {
		t.Errorf("A's Set failed %d times", w)
	}
}

// ---- 2. a node killed with SIGKILL and restarted empty ----

func TestC4NodeKillRestart(t *testing.T) {
	const (
		hc      = 100 * time.Millisecond
		timeout = 500 * time.Millisecond
		margin  = 400 * time.Millisecond
		delta   = hc + timeout + margin
		x       = 1 // the node killed
	)
	servers := redistest.Start(t, 3)
	src := newSource()
	h := newC4History()
	a := c4Cache(t, servers, src, 0, 0, nil)
	b := c4Cache(t, servers, src, hc, timeout, nil)
	c4WaitFor(t, 10*time.Second, "A and B subscribed to every node", func() bool { return c4AllUp(a) && c4AllUp(b) })
	xkeys := c4Keys(a, "x", 8, x)
	isX := c4In(xkeys)
	keys := append(c4Keys(a, "o", 4, 0, 2), xkeys...)
	w := newC4Writer(a, src, h)
	c4Seed(t, w, b, keys)
	ctx := context.Background()

	// B holds near-cache copies of X's keys.
	for _, k := range xkeys {
		waitLocal(t, b, k)
	}
	s0 := b.Stats()
	for _, k := range xkeys {
		if v, err := b.Get(ctx, k); err != nil || v != "1" {
			t.Fatalf("B.Get(%q) = %q, %v", k, v, err)
		}
	}
	if s := b.Stats(); s.LocalHits-s0.LocalHits != uint64(len(xkeys)) || s.RemoteHits != s0.RemoteHits || s.Loads != s0.Loads {
		t.Fatalf("B's reads of X's keys: %d local hits, %d remote hits, %d loads; want %d local hits only",
			s.LocalHits-s0.LocalHits, s.RemoteHits-s0.RemoteHits, s.Loads-s0.Loads, len(xkeys))
	}
	epochKey := "t" + t.Name() + ":invalidate:epoch"
	epochBefore, err := servers[x].Do(ctx, "GET", epochKey)
	if err != nil {
		t.Fatal(err)
	}

	readers := c4StartReaders(t, b, h, keys, 3, time.Millisecond)
	base := b.Stats()

	killAt := time.Now()
	if err := servers[x].Kill(); err != nil {
		t.Fatal(err)
	}
	downAt := c4WaitFor(t, 5*time.Second, "B marks X down", func() bool { return !b.local.Up(x) })

	// A writes version 2 of X's keys, retrying until its Sets succeed (its clients
	// reconnect once X is back), while X is restarted empty on its port.
	var failedSets atomic.Int64
	var lastAck atomic.Int64
	writeErr := make(chan error, 1)
	var wwg sync.WaitGroup
	wwg.Go(func() {
		deadline := time.Now().Add(20 * time.Second)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for _, k := range xkeys {
			ver := w.next(k)
			for {
				at, err := w.set(ctx, k, ver)
				if err == nil {
					lastAck.Store(at.UnixNano())
					break
				}
				failedSets.Add(1)
				if time.Now().After(deadline) {
					writeErr <- fmt.Errorf("A.Set(%q) still failing: %w", k, err)
					return
				}
				<-tick.C
			}
		}
	})
	// Keep X dead until A's Set has failed and B has read X's keys meanwhile.
	c4WaitFor(t, 10*time.Second, "A's Set failing and B reading X's keys while X is dead", func() bool {
		return failedSets.Load() > 0 && h.readsSince(downAt, isX) >= 5
	})
	deadStats := b.Stats()
	restartAt := time.Now()
	if err := servers[x].Restart(); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	upAt := c4WaitFor(t, 10*time.Second, "B re-subscribed to X", func() bool { return b.local.Up(x) })
	wwg.Wait()
	close(writeErr)
	if err := <-writeErr; err != nil {
		t.Fatal(err)
	}
	acked := time.Unix(0, lastAck.Load())

	// Two more rounds through the healed node, then reads more than Δ after the last.
	var last time.Time
	for range 2 {
		for _, k := range xkeys {
			_, at, err := w.write(ctx, k)
			if err != nil {
				t.Fatalf("A.Set(%q) after heal: %v", k, err)
			}
			last = at
		}
	}
	c4WaitFor(t, 10*time.Second, "B's reads more than Δ after the last ack", func() bool {
		return h.readsSince(last.Add(delta), isX) >= 200
	})
	readers.stop()
	c4CheckFinal(t, w, b, keys)
	c4CheckReadErrors(t, h)

	epochAfter, err := servers[x].Do(ctx, "GET", epochKey)
	if err != nil {
		t.Fatal(err)
	}
	s := b.Stats()
	c4LogStats(t, "B", s)
	t.Logf("X killed: B marked it down after %v; restart took %v; A's Sets failed %d times, the last of version 2 acknowledged %v after the restart; "+
		"B up again %v after the restart; X's epoch %v -> %v; Δ = %v",
		downAt.Sub(killAt).Round(time.Microsecond), restarted.Sub(restartAt).Round(time.Millisecond), failedSets.Load(),
		acked.Sub(restarted).Round(time.Millisecond), upAt.Sub(restarted).Round(time.Millisecond), epochBefore, epochAfter, delta)
	t.Logf("while X was dead: B's loads +%d, remote errors +%d",
		deadStats.Loads-base.Loads, deadStats.RemoteErrors-base.RemoteErrors)
	all := h.analyze(time.Time{}, time.Time{}, delta, nil)
	dead := h.analyze(downAt, restarted, delta, isX)
	healing := h.analyze(restarted, upAt, delta, isX)
	after := h.analyze(upAt, time.Time{}, delta, isX)
	t.Logf("all reads: %v", all)
	t.Logf("X's keys from detection until the restart: %v", dead)
	t.Logf("X's keys from the restart until B re-subscribed: %v", healing)
	t.Logf("X's keys after heal: %v", after)

	if all.stale > 0 {
		t.Errorf("%d stale reads by more than Δ=%v", all.stale, delta)
	}
	if dead.staleAny+healing.staleAny > 0 {
		t.Errorf("%d reads of X's keys older than an acknowledged write while B had X down", dead.staleAny+healing.staleAny)
	}
	if deadStats.Loads == base.Loads {
		t.Errorf("B did not load X's keys while X was dead")
	}
	if s.SubscriptionsLost == base.SubscriptionsLost || s.FlushesResubscribe == base.FlushesResubscribe {
		t.Errorf("B's stats show no lost subscription and resubscription flush: before %+v, after %+v", base, s)
	}
	if epochBefore == epochAfter {
		t.Errorf("X's epoch did not change across the restart (%v)", epochAfter)
	}
	// A's and B's pools dialled the dead node: go-redis's dial circuit breaker
	// (ConnPool.tryDial) probes once a second and ends on a successful dial, which
	// X now allows. It does not watch Close, so let it finish before the clients
	// are closed and goleak looks.
	waited := c4WaitGoroutinesGone(t, "(*ConnPool).tryDial", 5*time.Second)
	t.Logf("waited %v for go-redis's dial probes (ConnPool.tryDial) to end", waited.Round(time.Millisecond))
}

// ---- 3. B's links to one node black-holed through toxiproxy ----

// c4Hole is an in-process toxiproxy in front of one node. B's client dials whatever
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
type c4Hole struct {
	srv      *toxiproxy.ApiServer
	name     string
	upstream string
	addr     atomic.Pointer[string]
	mu       sync.Mutex
	proxies  []*toxiproxy.Proxy // every proxy started; the live one last
}

func newC4Hole(t *testing.T, srv *toxiproxy.ApiServer, name, upstream string) *c4Hole {
	h := &c4Hole{srv: srv, name: name, upstream: upstream}
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

func (h *c4Hole) start(t *testing.T) {
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

func (h *c4Hole) live() *toxiproxy.Proxy {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.proxies[len(h.proxies)-1]
}

func (h *c4Hole) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", *h.addr.Load())
}

// cut adds a "timeout" toxic with timeout 0 to both directions: every byte is
// dropped, open connections stay open, new ones are accepted and dead too.
func (h *c4Hole) cut(t *testing.T) {
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
func (h *c4Hole) heal(t *testing.T) {
	t.Helper()
	h.live().Stop()
	h.start(t)
}

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
	t.Cleanup(func() { c4WaitGoroutinesGone(t, "github.com/Shopify/toxiproxy", 5*time.Second) })
	holes := make([]*c4Hole, len(servers))
	for i, s := range servers {
		holes[i] = newC4Hole(t, tp, fmt.Sprintf("node-%d", i), s.Addr())
	}
	src := newSource()
	h := newC4History()
	a := c4Cache(t, servers, src, 0, 0, nil) // direct
	b := c4Cache(t, servers, src, hc, timeout, func(i int, o *redis.Options) {
		o.Addr = *holes[i].addr.Load()
		o.Dialer = holes[i].dial
	})
	c4WaitFor(t, 10*time.Second, "A and B subscribed to every node", func() bool { return c4AllUp(a) && c4AllUp(b) })
	xkeys := c4Keys(a, "x", 10, x)
	isX := c4In(xkeys)
	keys := append(c4Keys(a, "o", 5, 1, 2), xkeys...)
	w := newC4Writer(a, src, h)
	c4Seed(t, w, b, keys)

	writers := c4StartWriters(t, w, keys, 3, 5*time.Millisecond)
	readers := c4StartReaders(t, b, h, keys, 4, 500*time.Microsecond)
	base := b.Stats()
	c4WaitFor(t, 10*time.Second, "B serving from its near-cache and receiving invalidations", func() bool {
		s := b.Stats()
		return s.LocalHits-base.LocalHits >= 500 && s.InvalidationsReceived-base.InvalidationsReceived >= 200
	})

	cutAt := time.Now()
	holes[x].cut(t)
	cutDone := time.Now()
	downAt := c4WaitFor(t, 5*time.Second, "B marks X down", func() bool { return !b.local.Up(x) })
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
	upAt := c4WaitFor(t, 10*time.Second, "B re-subscribed to X after the heal", func() bool { return b.local.Up(x) })

	writers.stop()
	ctx := context.Background()
	var lastAck time.Time
	for _, k := range keys {
		_, at, err := w.write(ctx, k)
		if err != nil {
			t.Fatalf("final write %q: %v", k, err)
		}
		lastAck = at
	}
	c4WaitFor(t, 10*time.Second, "B's reads more than Δ after the last ack", func() bool {
		return h.readsSince(lastAck.Add(delta), isX) >= 200
	})
	readers.stop()
	c4CheckFinal(t, w, b, keys)
	c4CheckReadErrors(t, h)

	s := b.Stats()
	c4LogStats(t, "B", s)
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

// ---- 4. a lost subscription keeps the node's keys out of the near-cache ----

// TestC4LostSubscriptionBypass kills B's subscription to one node while the node keeps
// answering reads, and holds the re-subscription unconfirmed deterministically: B's
// ACL user is refused the node's channels (SUBSCRIBE fails with NOPERM) until they
// are granted again. A's invalidations cannot reach B meanwhile, so only the bypass
// keeps B fresh.
func TestC4LostSubscriptionBypass(t *testing.T) {
	const (
		hc      = 100 * time.Millisecond
		timeout = time.Second
		x       = 2
	)
	servers := redistest.Start(t, 3)
	ctx := context.Background()
	for _, s := range servers {
		if _, err := s.Do(ctx, "ACL", "SETUSER", "reader", "on", ">pw", "~*", "&*", "+@all"); err != nil {
			t.Fatal(err)
		}
	}
	src := newSource()
	h := newC4History()
	a := c4Cache(t, servers, src, 0, 0, nil)
	b := c4Cache(t, servers, src, hc, timeout, func(_ int, o *redis.Options) {
		o.Username, o.Password = "reader", "pw"
	})
	c4WaitFor(t, 10*time.Second, "A and B subscribed to every node", func() bool { return c4AllUp(a) && c4AllUp(b) })
	k := c4Keys(a, "x", 1, x)[0]
	other := c4Keys(a, "o", 1, (x+1)%3)[0]
	w := newC4Writer(a, src, h)
	c4Seed(t, w, b, []string{k, other})
	waitLocal(t, b, k)
	waitLocal(t, b, other)
	noperm := func() int {
		info, err := servers[x].Do(ctx, "INFO", "errorstats")
		if err != nil {
			t.Fatal(err)
		}
		_, rest, _ := strings.Cut(info.(string), "errorstat_NOPERM:count=")
		n, _ := strconv.Atoi(strings.TrimSpace(strings.SplitN(rest, "\r\n", 2)[0]))
		return n
	}

	s0 := b.Stats()
	revokeAt := time.Now()
	if _, err := servers[x].Do(ctx, "ACL", "SETUSER", "reader", "resetchannels"); err != nil {
		t.Fatal(err)
	}
	if err := servers[x].KillPubSubClients(ctx); err != nil {
		t.Fatal(err)
	}
	downAt := c4WaitFor(t, 5*time.Second, "B marks X down", func() bool { return !b.local.Up(x) })
	// B's subscriber has tried again, and been refused, at least twice.
	c4WaitFor(t, 5*time.Second, "B's re-subscriptions refused", func() bool { return noperm() >= 2 })
	s1 := b.Stats()
	if s1.SubscriptionsLost != s0.SubscriptionsLost+1 || s1.FlushesResubscribe != s0.FlushesResubscribe {
		t.Fatalf("after the kill: SubscriptionsLost %d -> %d, FlushesResubscribe %d -> %d; want +1 and +0",
			s0.SubscriptionsLost, s1.SubscriptionsLost, s0.FlushesResubscribe, s1.FlushesResubscribe)
	}
	hk := b.local.Hash(k)
	b.local.Wait()
	if _, _, ok := b.local.Get(hk, k); ok {
		t.Fatalf("%q still served from B's near-cache after its node's subscription was lost", k)
	}

	// Every read of k goes to the node and sees A's last write at once.
	const rounds = 20
	for i := range rounds {
		ver, _, err := w.write(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		for range 2 {
			if v, err := b.Get(ctx, k); err != nil || v != strconv.Itoa(ver) {
				t.Fatalf("round %d: B.Get(%q) = %q, %v; want %d (no invalidation can reach B)", i, k, v, err, ver)
			}
		}
		b.local.Wait()
		if _, _, ok := b.local.Get(hk, k); ok {
			t.Fatalf("round %d: B stored %q in its near-cache while X was down", i, k)
		}
		if b.local.Up(x) {
			t.Fatalf("round %d: B marked X up while its SUBSCRIBE is refused", i)
		}
	}
	s2 := b.Stats()
	if s2.LocalHits != s1.LocalHits || s2.RemoteHits-s1.RemoteHits != 2*rounds ||
		s2.InvalidationsReceived != s1.InvalidationsReceived || s2.FlushesResubscribe != s0.FlushesResubscribe {
		t.Fatalf("while X was down: local hits +%d (want 0), remote hits +%d (want %d), invalidations received +%d (want 0), FlushesResubscribe +%d (want 0)",
			s2.LocalHits-s1.LocalHits, s2.RemoteHits-s1.RemoteHits, 2*rounds, s2.InvalidationsReceived-s1.InvalidationsReceived, s2.FlushesResubscribe-s0.FlushesResubscribe)
	}
	// Another node's keys are still served from the near-cache.
	if v, err := b.Get(ctx, other); err != nil || v != "1" {
		t.Fatalf("B.Get(%q) = %q, %v", other, v, err)
	}
	if s := b.Stats(); s.LocalHits != s2.LocalHits+1 {
		t.Fatalf("B.Get(%q) on a healthy node was not a near-cache hit", other)
	}
	refused := noperm()

	// Grant the channels again: the next subscription is confirmed, X comes back up,
	// and the near-cache and the invalidations work for k again.
	grantAt := time.Now()
	if _, err := servers[x].Do(ctx, "ACL", "SETUSER", "reader", "allchannels"); err != nil {
		t.Fatal(err)
	}
	upAt := c4WaitFor(t, 10*time.Second, "B re-subscribed to X", func() bool { return b.local.Up(x) })
	s3 := b.Stats()
	if s3.FlushesResubscribe != s0.FlushesResubscribe+1 || s3.SubscriptionsLost != s1.SubscriptionsLost {
		t.Fatalf("after the grant: FlushesResubscribe +%d, SubscriptionsLost +%d; want +1 and +0",
			s3.FlushesResubscribe-s0.FlushesResubscribe, s3.SubscriptionsLost-s1.SubscriptionsLost)
	}
	waitLocal(t, b, k)
	ver, _, err := w.write(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	c4WaitFor(t, 5*time.Second, "B sees A's write after re-subscribing", func() bool {
		v, err := b.Get(ctx, k)
		return err == nil && v == strconv.Itoa(ver)
	})
	s4 := b.Stats()
	if s4.InvalidationsReceived == s3.InvalidationsReceived {
		t.Fatalf("B received no invalidation on the new subscription")
	}
	c4LogStats(t, "B", s4)
	t.Logf("B marked X down %v after the kill; %d SUBSCRIBEs refused while %d writes of A were each read fresh twice from X "+
		"(local hits +0, remote hits +%d, invalidations +0); X up %v after the grant",
		downAt.Sub(revokeAt).Round(time.Microsecond), refused, rounds, s2.RemoteHits-s1.RemoteHits, upAt.Sub(grantAt).Round(time.Millisecond))
}
