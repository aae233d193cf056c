package tiered

// The harness of the fault tests (faults_*_test.go): the C4 (lost messages) and C7
// (faults) invariants, defined in helpers_test.go's header, against real redis-server processes.
//
// Every fault test runs a writer Cache A and a reader Cache B (clients of their own)
// on one 3-node ring, with a Loader over a source of truth that A updates before each
// Set (writerAndReader). A history records when each of A's writes was acknowledged
// and what each of B's reads returned. A read of B that starts more than Δ after the
// acknowledgement of a newer version than the one it returns is a stale read; its age
// is how long before the read started that newer version was acknowledged.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tieredcache/tiered/internal/redistest"
)

// writerAndReader returns the fault tests' two Caches on one ring over servers, each
// with clients of its own, both loading from src: A, the writer, with ringOpts's
// Timeout and the default HealthCheck; B, the reader, with hc and timeout, the
// MaxStaleness readerStale(hc) (what B holds of a node whose subscription is lost is
// served no longer than that), and its clients changed by opts. It returns once both
// are subscribed to every node.
func writerAndReader(t *testing.T, servers []*redistest.Server, src *source, hc, timeout time.Duration, opts ...clientOption) (a, b *Cache[string]) {
	t.Helper()
	oa := ringOpts[string](t, servers)
	oa.Loader = src
	a = newCache(t, oa)
	ob := ringOpts[string](t, servers, opts...)
	ob.Loader, ob.HealthCheck, ob.Timeout, ob.MaxStaleness = src, hc, timeout, readerStale(hc)
	b = newCache(t, ob)
	waitFor(t, "A and B subscribed to every node", func() bool { return allUp(a) && allUp(b) })
	return a, b
}

// readerStale is B's MaxStaleness in the fault tests: four pings, so that a pong late
// by up to three intervals (-race on a loaded 2-core machine) costs no near hit, yet
// well inside the bounds the tests assert.
func readerStale(hc time.Duration) time.Duration { return 4 * hc }

// ---- staleness checker ----

type writeAck struct {
	ver int
	at  time.Time // when A's Set returned
}

type readRec struct {
	key   string
	start time.Time
	ver   int
	done  time.Time // when it was recorded: ascending in history.reads
}

// history records A's acknowledged writes and B's reads.
type history struct {
	mu    sync.Mutex
	acks  map[string][]writeAck // per key, ascending version (one writer per key at a time)
	reads []readRec
	errs  []string // first few read errors
	nerrs int
}

func newHistory() *history { return &history{acks: make(map[string][]writeAck)} }

func (h *history) ack(key string, ver int, at time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.acks[key] = append(h.acks[key], writeAck{ver, at})
}

func (h *history) read(key string, start time.Time, ver int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.reads = append(h.reads, readRec{key, start, ver, time.Now()})
}

func (h *history) fail(key string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nerrs++
	if len(h.errs) < 5 {
		h.errs = append(h.errs, fmt.Sprintf("%s: %v", key, err))
	}
}

// readsSince counts the reads of keys accepted by match that started at or after from.
func (h *history) readsSince(from time.Time, match func(string) bool) int {
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
func (h *history) age(r readRec) (age time.Duration, want int) {
	acks := h.acks[r.key]
	i := sort.Search(len(acks), func(i int) bool { return acks[i].ver > r.ver })
	if i == len(acks) || !acks[i].at.Before(r.start) {
		return -1, r.ver
	}
	j := sort.Search(len(acks), func(j int) bool { return !acks[j].at.Before(r.start) })
	return r.start.Sub(acks[i].at), acks[j-1].ver
}

type staleness struct {
	reads, stale int
	maxAge       time.Duration // over all stale reads, whatever delta
	staleAny     int           // reads with any age > 0
	worst        readRec
	worstWant    int
}

// analyze looks at the reads of keys accepted by match (nil: all) that started in
// [from, to) (zero to: no end) and counts those older than delta.
func (h *history) analyze(from, to time.Time, delta time.Duration, match func(string) bool) staleness {
	h.mu.Lock()
	defer h.mu.Unlock()
	var res staleness
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

func (r staleness) String() string {
	s := fmt.Sprintf("%d reads, %d stale by more than Δ; %d older than an earlier ack at all, max age %v",
		r.reads, r.stale, r.staleAny, r.maxAge.Round(time.Microsecond))
	if r.staleAny > 0 {
		s += fmt.Sprintf(" (%s read v%d, v%d acknowledged)", r.worst.key, r.worst.ver, r.worstWant)
	}
	return s
}

// versionWriter writes versions 1, 2, 3, ... of each key through A: source first, then
// Set, and records the acknowledgement. One goroutine per key at a time.
type versionWriter struct {
	a   *Cache[string]
	src *source
	h   *history
	mu  sync.Mutex
	ver map[string]int
}

func newVersionWriter(a *Cache[string], src *source, h *history) *versionWriter {
	return &versionWriter{a: a, src: src, h: h, ver: make(map[string]int)}
}

func (w *versionWriter) next(key string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ver[key]++
	return w.ver[key]
}

func (w *versionWriter) current(key string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ver[key]
}

// set writes version ver of key; it may be called again with the same ver after an
// error (the Set may or may not have happened).
func (w *versionWriter) set(ctx context.Context, key string, ver int) (time.Time, error) {
	val := strconv.Itoa(ver)
	w.src.put(key, val)
	if err := w.a.Set(ctx, key, val); err != nil {
		return time.Time{}, err
	}
	at := time.Now()
	w.h.ack(key, ver, at)
	return at, nil
}

func (w *versionWriter) write(ctx context.Context, key string) (int, time.Time, error) {
	ver := w.next(key)
	at, err := w.set(ctx, key, ver)
	return ver, at, err
}

// ---- load ----

type loadGen struct {
	cancel context.CancelFunc
	ctx    context.Context
	wg     sync.WaitGroup
	errs   atomic.Int64
}

func newLoadGen() *loadGen {
	l := &loadGen{}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	return l
}

// stop ends the load and waits for its goroutines. Idempotent.
func (l *loadGen) stop() { l.cancel(); l.wg.Wait() }

// paced runs fn every period on n goroutines until stop.
func (l *loadGen) paced(n int, period time.Duration, fn func(g int, rng *rand.Rand)) {
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

// startWriters has n goroutines write keys through w, each its own share of them.
func startWriters(t *testing.T, w *versionWriter, keys []string, n int, period time.Duration) *loadGen {
	l := newLoadGen()
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

// startReaders has n goroutines read random keys through b and record them in h.
func startReaders(t *testing.T, b *Cache[string], h *history, keys []string, n int, period time.Duration) *loadGen {
	l := newLoadGen()
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

func keySet(keys []string) func(string) bool {
	set := make(map[string]bool, len(keys))
	for _, k := range keys {
		set[k] = true
	}
	return func(k string) bool { return set[k] }
}

// seedVersions writes version 1 of every key through w and has b read it.
func seedVersions(t *testing.T, w *versionWriter, b *Cache[string], keys []string) {
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

// writeAll writes the next version of every key through w, and returns when the last
// write was acknowledged.
func writeAll(t *testing.T, w *versionWriter, keys []string) time.Time {
	t.Helper()
	var last time.Time
	for _, k := range keys {
		_, at, err := w.write(context.Background(), k)
		if err != nil {
			t.Fatalf("A.Set(%q) after the fault: %v", k, err)
		}
		last = at
	}
	return last
}

// finish ends a fault test's reads: it waits until n reads of B of the keys accepted by
// match (nil: all) have started after from, stops readers, and checks that B returns
// A's last version of every key and that none of B's reads failed.
func finish(t *testing.T, w *versionWriter, b *Cache[string], h *history, readers *loadGen, keys []string, from time.Time, match func(string) bool, n int) {
	t.Helper()
	waitFor(t, "B's reads more than Δ after the last ack", func() bool { return h.readsSince(from, match) >= n })
	readers.stop()
	checkFinal(t, w, b, keys)
	checkReadErrors(t, h)
}

// checkFinal asserts that B returns A's last acknowledged version of every key.
func checkFinal(t *testing.T, w *versionWriter, b *Cache[string], keys []string) {
	t.Helper()
	for _, k := range keys {
		v, err := b.Get(context.Background(), k)
		if want := strconv.Itoa(w.current(k)); err != nil || v != want {
			t.Errorf("B.Get(%q) after heal = %q, %v; want %q", k, v, err, want)
		}
	}
}

func checkReadErrors(t *testing.T, h *history) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.nerrs > 0 {
		t.Errorf("B's Gets failed %d times (it has a Loader), e.g. %q", h.nerrs, h.errs)
	}
}

func logStats(t *testing.T, name string, s Stats) {
	t.Helper()
	t.Logf("%s stats: SubscriptionsLost=%d FlushesResubscribe=%d FlushesGap=%d FlushesEpoch=%d InvalidationsReceived=%d "+
		"LocalHits=%d RemoteHits=%d RemoteErrors=%d Loads=%d DeliveryLagMax=%v DeliveryLagMean=%v",
		name, s.SubscriptionsLost, s.FlushesResubscribe, s.FlushesGap, s.FlushesEpoch, s.InvalidationsReceived,
		s.LocalHits, s.RemoteHits, s.RemoteErrors, s.Loads, s.DeliveryLagMax, s.DeliveryLagMean)
}
