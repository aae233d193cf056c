package benchmarks

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	loadDelay = time.Millisecond // the Loader's cost, a database query
	zipfS     = 1.1
	zipfKeys  = 100_000
	replicas  = 3
	// parallelism is b.SetParallelism for the workloads that wait on Redis:
	// 8 x GOMAXPROCS goroutines share the replicas, the same for every system.
	parallelism = 8
	// fastSampleEvery: the workloads whose operations can be near hits (tens of
	// nanoseconds) time one operation in 16, so that reading the clock does not
	// dominate them; the others time every operation.
	fastSampleEvery = 16
)

// timerCost is the median cost of an empty timed region (two clock reads), which
// latency samples subtract: for a near hit it is of the same order as the operation.
var timerCost = sync.OnceValue(func() time.Duration {
	d := make([]time.Duration, 10001)
	for i := range d {
		t := time.Now()
		d[i] = time.Since(t)
	}
	slices.Sort(d)
	return d[len(d)/2]
})

// tally is what the benchmark goroutines count: each in its own, merged once at its
// end, so that counting costs no shared cache line per operation.
type tally struct {
	lat    []time.Duration
	reads  uint64
	stale  [len(coherenceDeltas)]uint64 // reads stale with respect to each Δ
	maxAge time.Duration                // the oldest superseded value a read returned
	failed uint64                       // writes that returned an error (never acknowledged)
	err    error                        // a read that failed: ends the benchmark
	cpu    cpuSpent                     // the timed region's CPU time (the merged tally only)
}

func (t *tally) add(u *tally) {
	t.lat = append(t.lat, u.lat...)
	t.reads += u.reads
	for j := range t.stale {
		t.stale[j] += u.stale[j]
	}
	t.maxAge = max(t.maxAge, u.maxAge)
	t.failed += u.failed
	if t.err == nil {
		t.err = u.err
	}
}

// worker is one benchmark goroutine: its tally and its latency sampling.
type worker struct {
	tally
	id    int
	every int // time one operation in every
	n     int
}

// start returns the time if this operation is to be timed, else the zero Time.
func (w *worker) start() time.Time {
	if w.n++; w.n < w.every {
		return time.Time{}
	}
	w.n = 0
	return time.Now()
}

func (w *worker) stop(t time.Time) {
	if !t.IsZero() {
		w.lat = append(w.lat, time.Since(t))
	}
}

// runParallel runs body on b.RunParallel's goroutines (b.SetParallelism(par) if
// par > 0), each with its own worker; every-th operation is timed.
func runParallel(b *testing.B, par, every int, body func(w *worker, pb *testing.PB)) *tally {
	var (
		mu sync.Mutex // protects r
		r  tally
	)
	var ids atomic.Int64
	if par > 0 {
		b.SetParallelism(par)
	}
	b.ReportAllocs()
	stopProfile := startTimedProfile(b)
	mark := cpuNow()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		w := &worker{id: int(ids.Add(1) - 1), every: every}
		w.lat = make([]time.Duration, 0, 1024)
		body(w, pb)
		mu.Lock()
		r.add(&w.tally)
		mu.Unlock()
	})
	b.StopTimer()
	r.cpu.add(mark, cpuNow())
	stopProfile()
	if r.err != nil {
		b.Fatal(r.err)
	}
	return &r
}

// report reports the run's metrics: ops/s, latency percentiles, the share of reads
// each tier answered, and Loader calls per operation.
func report(b *testing.B, p Peer, r *tally, tiers Tiers, loads uint64) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
	if len(r.lat) > 0 {
		slices.Sort(r.lat)
		tc := timerCost()
		pct := func(q float64) float64 { return float64(max(r.lat[int(q*float64(len(r.lat)-1))]-tc, 0)) }
		b.ReportMetric(pct(0.50), "p50-ns")
		b.ReportMetric(pct(0.99), "p99-ns")
	}
	if r.reads > 0 {
		near := 0.0
		if p.Near && tiers.NearMisses <= r.reads {
			near = 100 * float64(r.reads-tiers.NearMisses) / float64(r.reads)
		}
		b.ReportMetric(near, "near-hit-%")
		b.ReportMetric(100*float64(tiers.SharedHits)/float64(r.reads), "shared-hit-%")
	}
	b.ReportMetric(float64(loads)/float64(b.N), "loads/op")
	if r.cpu.ok {
		b.ReportMetric(float64(r.cpu.self)/float64(b.N), "cpu-ns/op")
		b.ReportMetric(float64(r.cpu.redis)/float64(b.N), "redis-cpu-ns/op")
	}
	// Failures are reported only when there are some, so that the usual table stays
	// narrow: shared-tier failures a system hid from its caller (tiered falls back to
	// the Loader), and writes that returned an error.
	if tiers.Absorbed > 0 {
		b.ReportMetric(float64(tiers.Absorbed), "absorbed-errors")
	}
	if r.failed > 0 {
		b.ReportMetric(float64(r.failed), "write-errors")
	}
}

// open starts one replica of p over nodes (Nodes[0] only if p cannot shard) with src
// as its Loader; it fails b if the system cannot start, and closes the replica when
// owner ends (b itself, or the parent benchmark of a reused fixture).
func open(b, owner *testing.B, p Peer, nodes []string, src *Source) System {
	s, err := newSystem(p, nodes, src)
	if err != nil {
		b.Fatalf("%s: %v", p.Name, err)
	}
	owner.Cleanup(func() {
		if err := s.Close(); err != nil {
			owner.Errorf("%s: Close: %v", p.Name, err)
		}
	})
	return s
}

func newSystem(p Peer, nodes []string, src *Source) (System, error) {
	return p.New(config(p, nodes, src))
}

// config is p's configuration over nodes (Nodes[0] only if p cannot shard) with src as
// its Loader.
func config(p Peer, nodes []string, src *Source) Config {
	if !p.Shards {
		nodes = nodes[:1]
	}
	return defaultConfig(nodes, src.Load)
}

func openReplicas(b, owner *testing.B, p Peer, nodes []string, src *Source) []System {
	reps := make([]System, replicas)
	for i := range reps {
		reps[i] = open(b, owner, p, nodes, src)
	}
	return reps
}

func sumTiers(reps []System) Tiers {
	var t Tiers
	for _, s := range reps {
		t = t.add(s.Tiers())
	}
	return t
}

// parallel runs f(i) for i in [0, n) on 16 goroutines (setup and warm-up) and
// returns the first error.
func parallel(n int, f func(i int) error) error {
	var next atomic.Int64
	var first atomic.Pointer[error]
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || first.Load() != nil {
					return
				}
				if err := f(i); err != nil {
					first.CompareAndSwap(nil, &err)
					return
				}
			}
		})
	}
	wg.Wait()
	if e := first.Load(); e != nil {
		return *e
	}
	return nil
}

// populateThrough writes version 0 of every key through a replica of p of its own
// (setup, untimed), which it then closes, so that no replica of the measured run has
// the keys in its near-cache. That replica's Redis calls may take up to 5 s (see
// Config.Timeout), and a failed write is tried again, a few times.
func populateThrough(p Peer, nodes []string, src *Source, keys []string) error {
	cfg := config(p, nodes, src)
	cfg.Timeout = 5 * time.Second
	s, err := p.New(cfg)
	if err != nil {
		return err
	}
	ctx := context.Background()
	err = parallel(len(keys), func(i int) error {
		var err error
		for range 3 {
			if err = s.Set(ctx, keys[i], makeValue(0)); err == nil {
				return nil
			}
		}
		return err
	})
	return errors.Join(err, s.Close())
}

// world is a system's populated Zipf keyspace on zipfNodes: its source of truth and
// one value per key in Redis, written once per test binary through the system's own
// Set (so in its own encoding) and shared by the Zipf and coherence workloads.
type world struct {
	src    *Source
	keys   []string
	nodes  []string
	writes [4096]sync.Mutex // serialise each key's writes, as a row lock would
}

var worlds struct {
	sync.Mutex
	m map[string]*world
}

func zipfWorld(b *testing.B, p Peer) *world {
	worlds.Lock()
	defer worlds.Unlock()
	if w := worlds.m[p.Name]; w != nil {
		return w
	}
	w := &world{src: NewSource(loadDelay, p.Name+"/z", zipfKeys), nodes: zipfNodes.addrs(b)}
	w.keys = w.src.Keys()
	if err := populateThrough(p, w.nodes, w.src, w.keys); err != nil {
		b.Fatalf("%s: populate: %v", p.Name, err)
	}
	if worlds.m == nil {
		worlds.m = make(map[string]*world)
	}
	worlds.m[p.Name] = w
	return w
}

// write advances key i's version at the source and writes it through sys, holding
// the key's write lock so that every tier receives the key's versions in order. If
// chk is not nil, the acknowledged write is recorded in it.
func (w *world) write(ctx context.Context, sys System, i int, chk *Checker) error {
	m := &w.writes[i%len(w.writes)]
	m.Lock()
	defer m.Unlock()
	ver, v := w.src.Write(i)
	if err := sys.Set(ctx, w.keys[i], v); err != nil {
		return err
	}
	if chk != nil {
		chk.Acked(i, ver, chk.Now())
	}
	return nil
}

// newZipf returns a Zipf (s = 1.1) generator of key indexes, hottest first, and the
// uniform generator under it, seeded by id and seed.
func newZipf(id int, seed uint64) (*rand.Zipf, *rand.Rand) {
	r := rand.New(rand.NewPCG(uint64(id), seed))
	return rand.NewZipf(r, zipfS, 1, zipfKeys-1), r
}

// warmZipf reads n keys drawn from the Zipf distribution through reps, untimed, so
// that the measured run does not begin with cold near-caches.
func warmZipf(b *testing.B, w *world, reps []System, n int) {
	ctx := context.Background()
	var mu sync.Mutex // guards gen: warm-up only
	gen, _ := newZipf(-1, 0x5eed)
	err := parallel(n, func(j int) error {
		mu.Lock()
		i := int(gen.Uint64())
		mu.Unlock()
		_, err := reps[j%len(reps)].Get(ctx, w.keys[i])
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
}
