package benchmarks

// The fault workload: BenchmarkFaults/fault=<fault>/sys=<system>. One operation is one
// episode of a fault, on fresh replicas over a fresh keyspace:
//
//	populate   10k keys written into Redis through the system (version 0)
//	warm-up    20k reads through the reader, so that its near-cache holds the hot keys
//	steady     2 s: the writer writes a Zipf-drawn key every 2 ms, 8 goroutines read
//	           Zipf-drawn keys through the reader, each at most 100 reads a
//	           millisecond (near hits without a pause would take every core, and
//	           the invalidations would wait for the scheduler rather than the
//	           network), each read with a deadline of 0.5 to 1 s (readBudget) and
//	           checked by the Checker
//	fault      3 s of one fault (faults below), on the reader's links to every node
//	           (blackhole, resets, latency) or on the first node for everyone (kill)
//	recovery   3 s more of the same traffic, the links clean again
//
// The writer replica dials the nodes directly; the reader dials each node through a
// toxiproxy (in-process, v2.12.0) in front of it, all of its connections (data,
// pub/sub, tracking): Config.Dial. Metrics, per run (one episode with -benchtime 1x):
//
//	reads         reads that returned a value (all three periods)
//	fault-reads   of those, the reads that began during the fault
//	read-errors   reads that returned an error
//	stale-100ms   reads stale with respect to Δ = 100 ms (the Checker's rule)
//	stale-1s      reads stale with respect to Δ = 1 s
//	max-stale-ms  the oldest superseded value any read returned
//	last-stale-ms from the fault's end to the start of the last read stale past 100 ms
//	              (negative: the last one began before the end); absent when no read
//	              was stale past 100 ms
//	after-ms      from the fault's end to the end of the run (the recovery observed)
//	writes, write-errors  the writer's acknowledged and failed writes

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tieredcache/tiered/internal/linkproxy"
	"github.com/tieredcache/tiered/internal/redistest"
)

const (
	faultKeys      = 10_000
	faultWarmReads = 20_000
	faultReaders   = 8                      // goroutines reading through the faulted replica
	readBurst      = 100                    // each reads at most this many times
	readPace       = time.Millisecond       // in this interval
	faultWriteGap  = 2 * time.Millisecond   // between the writer's writes
	faultSteady    = 2 * time.Second        // before the fault
	faultHold      = 3 * time.Second        // the fault
	faultRecovery  = 3 * time.Second        // after it
	resetEvery     = 300 * time.Millisecond // the resets fault cuts the links this often
	addedLatency   = 200 * time.Millisecond // the latency fault, each way
	// faultMaxStaleness is go-redis-csc's MaxStaleness in this workload: its docs call
	// it the backstop for lost invalidations and suggest seconds; 1 s is tiered's
	// default MaxStaleness, so both promise the same bound.
	faultMaxStaleness = time.Second
)

// staleDeltas are the two bounds a read of the fault workload is judged against.
var staleDeltas = [2]time.Duration{100 * time.Millisecond, time.Second}

// faultSystems are the systems that keep replicas coherent, and two controls: raw
// go-redis (no near-cache) and go-redis-cache (no invalidation at all).
var faultSystems = []Peer{tieredPeer, goredisCSCPeer, rueidisPeer, goredisPeer, gorediscachePeer}

// faultNodes are the fault workload's own Redis nodes: it kills and flushes them.
var faultNodes nodeGroup

// fault is one fault mode. begin applies it, repeat (if every > 0) again every
// `every` while it lasts, end lifts it.
type fault struct {
	name    string
	proxied bool              // the reader dials through proxies
	toxics  []linkproxy.Toxic // the toxics the proxies carry, inactive until begin
	begin   func(*faultEnv) error
	every   time.Duration
	repeat  func(*faultEnv) error
	end     func(*faultEnv) error
}

// faultEnv is what a fault acts on: the reader's proxies (one per node) and the
// nodes.
type faultEnv struct {
	proxies []*linkproxy.LinkProxy
	servers []*redistest.Server
}

var faults = []fault{
	{
		// Bytes stop both ways (toxiproxy's timeout toxic, timeout 0); connections
		// stay open, and new ones are accepted and silent too: only a timeout or a
		// ping can tell. The end stops the proxies, which closes every connection
		// through them (as removing the timeout toxic would: a link that dropped
		// bytes cannot carry on), and starts clean ones on the same addresses.
		name: "blackhole", proxied: true,
		toxics: []linkproxy.Toxic{{Kind: "timeout", Attrs: `{"timeout":0}`}},
		begin:  forEachProxy(func(l *linkproxy.LinkProxy) error { return l.Activate("timeout") }),
		end:    forEachProxy((*linkproxy.LinkProxy).Cut),
	},
	{
		// Every connection through the proxies is reset (TCP RST) every 300 ms; the
		// clients reconnect at once in between. A cut stops the proxy and starts a
		// clean one; the reset_peer toxic never acts (toxicity 0), but its presence
		// makes toxiproxy set SO_LINGER 0 on both sockets of every link
		// (ToxicLink.Start), so that closing them resets them.
		name: "resets", proxied: true,
		toxics: []linkproxy.Toxic{{Kind: "reset_peer", Attrs: `{"timeout":0}`}},
		begin:  forEachProxy((*linkproxy.LinkProxy).Cut),
		every:  resetEvery,
		repeat: forEachProxy((*linkproxy.LinkProxy).Cut),
		end:    func(*faultEnv) error { return nil },
	},
	{
		// 200 ms more each way on every byte (toxiproxy's latency toxic); the
		// connections stay up throughout, and the bytes held back when it ends go
		// on at once.
		name: "latency", proxied: true,
		toxics: []linkproxy.Toxic{{Kind: "latency", Attrs: fmt.Sprintf(`{"latency":%d}`, addedLatency.Milliseconds())}},
		begin:  forEachProxy(func(l *linkproxy.LinkProxy) error { return l.Activate("latency") }),
		end:    forEachProxy(func(l *linkproxy.LinkProxy) error { return l.Deactivate("latency") }),
	},
	{
		// The first node (the one rueidis uses) is killed with SIGKILL and, at the
		// end, restarted empty on the same port: every replica sees it.
		name:  "kill",
		begin: func(e *faultEnv) error { return e.servers[0].Kill() },
		end:   func(e *faultEnv) error { return e.servers[0].Restart() },
	},
}

func forEachProxy(f func(*linkproxy.LinkProxy) error) func(*faultEnv) error {
	return func(e *faultEnv) error {
		var errs []error
		for _, l := range e.proxies {
			errs = append(errs, f(l))
		}
		return errors.Join(errs...)
	}
}

func BenchmarkFaults(b *testing.B) {
	for _, f := range faults {
		b.Run("fault="+f.name, func(b *testing.B) {
			for _, p := range faultSystems {
				b.Run("sys="+p.Name, func(b *testing.B) { benchFault(b, f, p) })
			}
		})
	}
}

func benchFault(b *testing.B, f fault, p Peer) {
	var r faultSummary
	for range b.N {
		r.add(runEpisode(b, f, p))
	}
	b.ReportMetric(float64(r.reads), "reads")
	b.ReportMetric(float64(r.faultReads), "fault-reads")
	b.ReportMetric(float64(r.errs), "read-errors")
	b.ReportMetric(float64(r.stale[0]), "stale-100ms")
	b.ReportMetric(float64(r.stale[1]), "stale-1s")
	b.ReportMetric(ms(r.maxAge), "max-stale-ms")
	if r.anyStale {
		b.ReportMetric(ms(r.lastStale), "last-stale-ms")
	}
	b.ReportMetric(ms(r.after), "after-ms")
	b.ReportMetric(float64(r.writes), "writes")
	b.ReportMetric(float64(r.writeErrs), "write-errors")
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// faultTally is what one reader goroutine counts.
type faultTally struct {
	reads, faultReads, errs uint64
	stale                   [len(staleDeltas)]uint64
	maxAge                  time.Duration
	lastStale               time.Duration // start of the last read stale past staleDeltas[0]; -1: none
	firstErr                error
}

func newFaultTally() faultTally { return faultTally{lastStale: -1} }

// judge counts a read that began at start (inFault: during the fault) and that the
// Checker judged (age, superseded).
func (t *faultTally) judge(start, age time.Duration, superseded, inFault bool) {
	t.reads++
	if inFault {
		t.faultReads++
	}
	if !superseded {
		return
	}
	t.maxAge = max(t.maxAge, age)
	for j, d := range staleDeltas {
		if staleAfter(age, superseded, d) {
			t.stale[j]++
		}
	}
	if staleAfter(age, superseded, staleDeltas[0]) {
		t.lastStale = max(t.lastStale, start)
	}
}

func (t *faultTally) fail(err error) {
	t.errs++
	if t.firstErr == nil {
		t.firstErr = err
	}
}

func (t *faultTally) merge(u *faultTally) {
	t.reads += u.reads
	t.faultReads += u.faultReads
	t.errs += u.errs
	for j := range t.stale {
		t.stale[j] += u.stale[j]
	}
	t.maxAge = max(t.maxAge, u.maxAge)
	t.lastStale = max(t.lastStale, u.lastStale)
	if t.firstErr == nil {
		t.firstErr = u.firstErr
	}
}

// episodeResult is what one episode measured. Times are on its Checker's clock.
type episodeResult struct {
	faultTally
	writes, writeErrs uint64
	faultEnd          time.Duration // when the fault had been lifted
	end               time.Duration // when the reads stopped
}

// faultSummary adds up the episodes of a run: counts add up, times are the worst
// episode's.
type faultSummary struct {
	faultTally        // lastStale unused
	writes, writeErrs uint64
	lastStale         time.Duration // from a fault's end to the last read stale past 100 ms: the latest
	anyStale          bool          // whether any read was stale past 100 ms (lastStale is set)
	after             time.Duration // from a fault's end to the end of its episode: the shortest
}

func (s *faultSummary) add(r episodeResult) {
	first := s.reads == 0 && s.errs == 0 && s.writes == 0 && s.writeErrs == 0 && !s.anyStale
	s.faultTally.merge(&r.faultTally)
	s.writes += r.writes
	s.writeErrs += r.writeErrs
	if r.lastStale >= 0 {
		d := r.lastStale - r.faultEnd
		if !s.anyStale || d > s.lastStale {
			s.lastStale = d
		}
		s.anyStale = true
	}
	if first || r.end-r.faultEnd < s.after {
		s.after = r.end - r.faultEnd
	}
}

// schedule is an episode's timing: steady, the fault, recovery.
type schedule struct {
	steady, hold, recovery time.Duration
}

// run drives f through s on e: it waits s.steady, begins the fault, repeats it every
// f.every while it lasts, ends it s.hold after it began and waits s.recovery. clock is
// the episode's clock; began is called with the time just before the fault begins,
// ended with the time it has been lifted.
func (s schedule) run(ctx context.Context, f fault, e *faultEnv, clock func() time.Duration, began, ended func(time.Duration)) error {
	wait := func(d time.Duration) error {
		if d <= 0 {
			return ctx.Err()
		}
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := wait(s.steady); err != nil {
		return err
	}
	t0 := clock()
	began(t0)
	if err := f.begin(e); err != nil {
		return fmt.Errorf("begin %s: %w", f.name, err)
	}
	if f.every > 0 {
		for next := f.every; next < s.hold; next += f.every {
			if err := wait(t0 + next - clock()); err != nil {
				return err
			}
			if err := f.repeat(e); err != nil {
				return fmt.Errorf("%s: %w", f.name, err)
			}
		}
	}
	if err := wait(t0 + s.hold - clock()); err != nil {
		return err
	}
	if err := f.end(e); err != nil {
		return fmt.Errorf("end %s: %w", f.name, err)
	}
	ended(clock())
	return wait(s.recovery)
}

var episodes atomic.Uint64

// runEpisode runs one episode of f against p (see the top of this file).
func runEpisode(b *testing.B, f fault, p Peer) episodeResult {
	b.StopTimer()
	nodes := faultNodes.flushed(b)
	src := NewSource(loadDelay, fmt.Sprintf("%s/f%d/", p.Name, episodes.Add(1)), faultKeys)
	w := &world{src: src, keys: src.Keys(), nodes: nodes}
	if err := populateThrough(p, nodes, src, w.keys); err != nil {
		b.Fatalf("%s: populate: %v", p.Name, err)
	}
	env := &faultEnv{servers: faultNodes.servers}
	cfg := config(p, nodes, src)
	cfg.MaxStaleness = faultMaxStaleness
	rcfg := cfg
	if f.proxied {
		for i, n := range cfg.Nodes {
			l, err := linkproxy.NewLinkProxy(toxiproxyServer(), fmt.Sprintf("node-%d", i), n, f.toxics...)
			if err != nil {
				b.Fatal(err)
			}
			env.proxies = append(env.proxies, l)
			rcfg.Dial = append(rcfg.Dial, l.Addr())
		}
	}
	var closers []func() error
	defer func() {
		for _, c := range closers {
			if err := c(); err != nil {
				// tiered's Close reports the writes it could not replay (the kill):
				// what it says is worth reading, but it is not a failed run.
				b.Logf("%s: Close: %v", p.Name, err)
			}
		}
		for _, l := range env.proxies {
			l.Stop()
		}
		if len(env.proxies) > 0 {
			if _, err := redistest.WaitGoroutinesGone("github.com/Shopify/toxiproxy", 10*time.Second); err != nil {
				b.Error(err)
			}
		}
	}()
	writer, err := p.New(cfg)
	if err != nil {
		b.Fatalf("%s: %v", p.Name, err)
	}
	closers = append(closers, writer.Close)
	reader, err := p.New(rcfg)
	if err != nil {
		b.Fatalf("%s: %v", p.Name, err)
	}
	closers = append(closers, reader.Close)
	warmFault(b, w, reader)

	chk := NewChecker(make([]uint64, faultKeys)) // every key at version 0
	var faultStart, faultEnd atomic.Int64
	faultStart.Store(math.MaxInt64)
	faultEnd.Store(math.MaxInt64)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	seed := seeds.Add(1)
	var (
		wg                sync.WaitGroup
		mu                sync.Mutex // protects res
		res               episodeResult
		writes, writeErrs atomic.Uint64
	)
	res.faultTally = newFaultTally()
	b.StartTimer()
	wg.Go(func() {
		zipf, _ := newFaultZipf(-1, seed)
		tick := time.NewTicker(faultWriteGap)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			err := w.write(ctx, writer, int(zipf.Uint64()), chk)
			switch {
			case err == nil:
				writes.Add(1)
			case ctx.Err() == nil:
				writeErrs.Add(1)
			}
		}
	})
	for g := range faultReaders {
		wg.Go(func() {
			zipf, _ := newFaultZipf(g, seed)
			t := newFaultTally()
			var budget readBudget
			defer budget.release()
			pace := time.NewTicker(readPace)
			defer pace.Stop()
			for n := 0; ctx.Err() == nil; n++ {
				if n == readBurst {
					n = 0
					select {
					case <-pace.C:
					case <-ctx.Done():
						continue
					}
				}
				i := int(zipf.Uint64())
				start := chk.Now()
				v, err := reader.Get(budget.context(ctx), w.keys[i])
				if err != nil {
					if ctx.Err() == nil {
						t.fail(err)
					}
					continue
				}
				ver, ok := parseVersion(v)
				if !ok {
					t.fail(fmt.Errorf("Get(%q) = %q: not a value of the source", w.keys[i], v))
					continue
				}
				age, superseded := chk.Age(i, ver, start)
				inFault := int64(start) >= faultStart.Load() && int64(start) < faultEnd.Load()
				t.judge(start, age, superseded, inFault)
			}
			mu.Lock()
			res.merge(&t)
			mu.Unlock()
		})
	}

	sched := schedule{steady: faultSteady, hold: faultHold, recovery: faultRecovery}
	err = sched.run(ctx, f, env, chk.Now,
		func(t time.Duration) { faultStart.Store(int64(t)) },
		func(t time.Duration) { faultEnd.Store(int64(t)) })
	res.end = chk.Now()
	cancel()
	wg.Wait()
	b.StopTimer()
	if err != nil {
		if f.name == "kill" {
			_ = env.servers[0].Restart() // leave the node up for the next episode
		}
		b.Fatalf("%s: %v", p.Name, err)
	}
	res.faultEnd = time.Duration(faultEnd.Load())
	res.writes, res.writeErrs = writes.Load(), writeErrs.Load()
	if res.firstErr != nil {
		b.Logf("%s, %s: %d read errors; the first: %v", f.name, p.Name, res.errs, res.firstErr)
	}
	return res
}

// readBudget gives each read of a reader goroutine a deadline, as a service gives its
// requests one: between readDeadline/2 and readDeadline after the read begins. A
// context with a deadline costs a timer, too much for a near hit's tens of
// nanoseconds, so one serves the goroutine's reads for readDeadline/2.
type readBudget struct {
	ctx    context.Context
	cancel context.CancelFunc
	renew  time.Time
}

// readDeadline is the longest a read of the fault workload may take: a read blocked on
// a dead link fails after at most this, rather than holding its goroutine for the
// whole fault.
const readDeadline = time.Second

func (r *readBudget) context(parent context.Context) context.Context {
	if now := time.Now(); r.ctx == nil || now.After(r.renew) {
		r.release()
		r.ctx, r.cancel = context.WithTimeout(parent, readDeadline)
		r.renew = now.Add(readDeadline / 2)
	}
	return r.ctx
}

func (r *readBudget) release() {
	if r.cancel != nil {
		r.cancel()
	}
}

// newFaultZipf returns a Zipf (s = 1.1) generator over the fault workload's keys.
func newFaultZipf(id int, seed uint64) (*rand.Zipf, *rand.Rand) {
	r := rand.New(rand.NewPCG(uint64(id), seed^0xfa017))
	return rand.NewZipf(r, zipfS, 1, faultKeys-1), r
}

// warmFault reads faultWarmReads Zipf-drawn keys through sys, untimed.
func warmFault(b *testing.B, w *world, sys System) {
	ctx := context.Background()
	var mu sync.Mutex // guards gen: warm-up only
	gen, _ := newFaultZipf(-2, 0x5eed)
	err := parallel(faultWarmReads, func(int) error {
		mu.Lock()
		i := int(gen.Uint64())
		mu.Unlock()
		_, err := sys.Get(ctx, w.keys[i])
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
}

// toxiproxyServer is the toxiproxy server every episode's proxies belong to.
var toxiproxyServer = sync.OnceValue(linkproxy.NewToxiproxy)
