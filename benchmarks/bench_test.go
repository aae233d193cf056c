package benchmarks

// The workloads, identical for every system in Systems. Each is one
// Benchmark<Workload> with a sub-benchmark sys=<name> per system.
//
//	NearHit    one replica reads 10k keys it holds: near-cache hits where there is a
//	           near-cache, Redis GETs where there is none.
//	SharedHit  one replica reads keys another replica wrote, each once: shared-tier hits.
//	Miss       one replica reads keys no tier holds: the Loader (1 ms) and the fills.
//	Zipf95     three replicas (own connections each) on the 3-node ring, keys drawn
//	Zipf50     from Zipf(s = 1.1) over 100k keys, 95% or 50% reads, the rest writes
//	           (source first, then Set through the same replica).
//	Stampede   1000 goroutines over three replicas Get one cold key at once; op = one key.
//	Coherence  the Zipf95 workload with every write through replica 0 and every read
//	           on replicas 1 and 2, each read checked against the last write
//	           acknowledged more than Δ before it began (coherenceDeltas).
//	Faults     a writer and a reader replica through a fault on the reader's links
//	           or on a node, one episode per op (faults_test.go); its systems are
//	           those that keep replicas coherent, and two controls.
//
// Metrics beside ns/op, B/op and allocs/op: ops/s; p50-ns and p99-ns (per-operation
// latency; see fastSampleEvery and timerCost); near-hit-% and shared-hit-% (share of
// reads answered by each tier); loads/op (Loader calls per op); cpu-ns/op and
// redis-cpu-ns/op (CPU time per op of this process and of the Redis servers it
// started, Linux only: cputime_test.go); for Coherence,
// reads, stale-reads and stale-% (Δ = 100 ms), stale-reads-10ms, stale-reads-1ms and
// max-stale-ms (the oldest superseded value any read returned, whatever Δ).

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// coherenceDeltas are how long after a write is acknowledged a read anywhere may
// still return the previous value without counting as stale. The first, 100 ms, is
// the headline: the bound the library's own multi-process coherence test uses, far
// above a pub/sub delivery on loopback (well under a millisecond) and far below a
// near-cache TTL (a minute). The tighter two show how fast each system propagates.
var coherenceDeltas = [...]time.Duration{100 * time.Millisecond, 10 * time.Millisecond, time.Millisecond}

const nearKeys = 10_000

func forEachSystem(b *testing.B, f func(*testing.B, Peer)) {
	for _, p := range Systems {
		b.Run("sys="+p.Name, func(b *testing.B) { f(b, p) })
	}
}

// forEachSystemReusing is forEachSystem for the workloads whose setup costs more
// than a run: setup builds a system's fixture on its first run, and the system's other
// runs (the -count repetitions and b.N's ramp) reuse it. setup closes what it opens
// when parent ends.
func forEachSystemReusing[F any](b *testing.B, setup func(parent, b *testing.B, p Peer) F, run func(*testing.B, Peer, F)) {
	fixtures := map[string]F{}
	forEachSystem(b, func(sb *testing.B, p Peer) {
		f, ok := fixtures[p.Name]
		if !ok {
			f = setup(b, sb, p)
			fixtures[p.Name] = f
		}
		run(sb, p, f)
	})
}

func BenchmarkNearHit(b *testing.B)   { forEachSystemReusing(b, newNearFixture, benchNearHit) }
func BenchmarkSharedHit(b *testing.B) { forEachSystem(b, benchSharedHit) }
func BenchmarkMiss(b *testing.B)      { forEachSystem(b, benchMiss) }
func BenchmarkZipf95(b *testing.B)    { forEachSystemReusing(b, newZipfFixture, benchZipf95) }
func BenchmarkZipf50(b *testing.B)    { forEachSystemReusing(b, newZipfFixture, benchZipf50) }
func BenchmarkStampede(b *testing.B)  { forEachSystem(b, benchStampede) }
func BenchmarkCoherence(b *testing.B) { forEachSystemReusing(b, newZipfFixture, benchCoherence) }

// nearFixture is a replica of a system holding nearKeys keys in its near-cache (or,
// for a system without one, in Redis).
type nearFixture struct {
	sys  System
	src  *Source
	keys []string
}

// newNearFixture returns p's near fixture, closed when parent ends.
func newNearFixture(parent, b *testing.B, p Peer) *nearFixture {
	f := &nearFixture{src: NewSource(loadDelay, p.Name+"/n", nearKeys)}
	f.keys = f.src.Keys()
	nodes := scratchNodes.flushed(b)
	if err := populateThrough(p, nodes, f.src, f.keys); err != nil {
		b.Fatal(err)
	}
	f.sys = open(b, parent, p, nodes, f.src)
	warmNear(b, p, f.sys, f.keys)
	return f
}

func benchNearHit(b *testing.B, p Peer, f *nearFixture) {
	ctx := context.Background()
	sys, keys := f.sys, f.keys
	if p.Near {
		warmNear(b, p, sys, keys) // a pass of hits, unless the fixture outlived LocalTTL
	}
	t0, l0 := sys.Tiers(), f.src.Loads()
	var start atomic.Int64
	r := runParallel(b, 0, fastSampleEvery, func(w *worker, pb *testing.PB) {
		i := int(start.Add(nearKeys/7)) % nearKeys
		for pb.Next() {
			t := w.start()
			_, err := sys.Get(ctx, keys[i])
			w.stop(t)
			if err != nil {
				w.err = err
				return
			}
			w.reads++
			if i++; i == nearKeys {
				i = 0
			}
		}
	})
	report(b, p, r, sys.Tiers().sub(t0), f.src.Loads()-l0)
}

// warmNear reads keys until a whole pass is answered by the near-cache (once, for a
// system without one).
func warmNear(b *testing.B, p Peer, sys System, keys []string) {
	ctx := context.Background()
	for pass := 0; pass < 100; pass++ {
		before := sys.Tiers().NearMisses
		err := parallel(len(keys), func(i int) error {
			_, err := sys.Get(ctx, keys[i])
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		if !p.Near || sys.Tiers().NearMisses == before {
			return
		}
	}
	b.Fatalf("%s: the near-cache still misses after 100 passes over %d keys", p.Name, len(keys))
}

func benchSharedHit(b *testing.B, p Peer) {
	nodes := scratchNodes.flushed(b)
	src := NewSource(loadDelay, p.Name+"/s", b.N)
	keys := src.Keys()
	if err := populateThrough(p, nodes, src, keys); err != nil {
		b.Fatal(err)
	}
	readEachOnce(b, p, open(b, b, p, nodes, src), src, keys)
}

func benchMiss(b *testing.B, p Peer) {
	src := NewSource(loadDelay, p.Name+"/m", b.N)
	readEachOnce(b, p, open(b, b, p, scratchNodes.flushed(b), src), src, src.Keys())
}

// readEachOnce is the timed part of SharedHit and Miss: b.N reads through sys, of
// keys[0] to keys[b.N-1], each once, on parallelism x GOMAXPROCS goroutines.
func readEachOnce(b *testing.B, p Peer, sys System, src *Source, keys []string) {
	ctx := context.Background()
	t0, l0 := sys.Tiers(), src.Loads()
	var next atomic.Int64
	r := runParallel(b, parallelism, 1, func(w *worker, pb *testing.PB) {
		for pb.Next() {
			k := keys[next.Add(1)-1]
			t := w.start()
			_, err := sys.Get(ctx, k)
			w.stop(t)
			if err != nil {
				w.err = err
				return
			}
			w.reads++
		}
	})
	report(b, p, r, sys.Tiers().sub(t0), src.Loads()-l0)
}

// zipfWarmReads are the untimed reads that warm the replicas' near-caches before a
// system's first Zipf or coherence run.
const zipfWarmReads = 10_000

// zipfFixture is a system's populated Zipf keyspace and three replicas over it. The
// replicas serve all of the system's runs of one workload, so that later runs find
// the near-caches as the earlier ones left them: a steady state, as in a service
// that has been up for a while.
type zipfFixture struct {
	w    *world
	reps []System
}

func newZipfFixture(parent, b *testing.B, p Peer) *zipfFixture {
	w := zipfWorld(b, p)
	reps := openReplicas(b, parent, p, w.nodes, w.src)
	warmZipf(b, w, reps, zipfWarmReads)
	return &zipfFixture{w, reps}
}

var seeds atomic.Uint64

func benchZipf95(b *testing.B, p Peer, f *zipfFixture) { benchZipf(b, p, f, 5) }
func benchZipf50(b *testing.B, p Peer, f *zipfFixture) { benchZipf(b, p, f, 50) }

func benchZipf(b *testing.B, p Peer, f *zipfFixture, writePct int) {
	ctx := context.Background()
	w, reps := f.w, f.reps
	t0, l0 := sumTiers(reps), w.src.Loads()
	seed := seeds.Add(1)
	r := runParallel(b, parallelism, fastSampleEvery, func(wk *worker, pb *testing.PB) {
		sys := reps[wk.id%len(reps)]
		zipf, rng := newZipf(wk.id, seed)
		for pb.Next() {
			i := int(zipf.Uint64())
			t := wk.start()
			if rng.IntN(100) < writePct {
				if w.write(ctx, sys, i, nil) != nil {
					wk.failed++
				}
				wk.stop(t)
				continue
			}
			_, err := sys.Get(ctx, w.keys[i])
			wk.stop(t)
			if err != nil {
				wk.err = err
				return
			}
			wk.reads++
		}
	})
	report(b, p, r, sumTiers(reps).sub(t0), w.src.Loads()-l0)
}

const stampedeGoroutines = 1000

func benchStampede(b *testing.B, p Peer) {
	ctx := context.Background()
	src := NewSource(loadDelay, p.Name+"/st", 0)
	reps := openReplicas(b, b, p, scratchNodes.flushed(b), src)
	t0, l0 := sumTiers(reps), src.Loads()
	var r tally
	lat := make([]time.Duration, stampedeGoroutines)
	errs := make([]error, stampedeGoroutines)
	b.ReportAllocs()
	b.ResetTimer()
	for n := range b.N {
		b.StopTimer()
		key := fmt.Sprintf("%s/st%d", p.Name, n)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for g := range stampedeGoroutines {
			wg.Go(func() {
				<-start
				t := time.Now()
				_, errs[g] = reps[g%len(reps)].Get(ctx, key)
				lat[g] = time.Since(t)
			})
		}
		mark := cpuNow()
		b.StartTimer()
		close(start)
		wg.Wait()
		b.StopTimer()
		r.cpu.add(mark, cpuNow())
		if err := errors.Join(errs...); err != nil {
			b.Fatal(err)
		}
		r.lat = append(r.lat, lat...)
		r.reads += stampedeGoroutines
		b.StartTimer()
	}
	b.StopTimer()
	report(b, p, &r, sumTiers(reps).sub(t0), src.Loads()-l0)
}

func benchCoherence(b *testing.B, p Peer, f *zipfFixture) {
	ctx := context.Background()
	w, reps := f.w, f.reps
	base := make([]uint64, len(w.keys))
	for i := range base {
		base[i] = w.src.Version(i)
	}
	chk := NewChecker(base)
	t0, l0 := sumTiers(reps), w.src.Loads()
	seed := seeds.Add(1)
	r := runParallel(b, parallelism, 1, func(wk *worker, pb *testing.PB) {
		writer, reader := reps[0], reps[1+wk.id%(len(reps)-1)]
		zipf, rng := newZipf(wk.id, seed)
		for pb.Next() {
			i := int(zipf.Uint64())
			if rng.IntN(100) < 5 {
				t := time.Now()
				if w.write(ctx, writer, i, chk) != nil {
					wk.failed++ // not acknowledged: no read is judged against it
				}
				wk.lat = append(wk.lat, time.Since(t))
				continue
			}
			t := chk.Now()
			v, err := reader.Get(ctx, w.keys[i])
			wk.lat = append(wk.lat, chk.Now()-t)
			if err != nil {
				wk.err = err
				return
			}
			ver, ok := parseVersion(v)
			if !ok {
				wk.err = fmt.Errorf("%s: Get(%q) = %q: not a value of the source", p.Name, w.keys[i], v)
				return
			}
			wk.reads++
			age, superseded := chk.Age(i, ver, t)
			if superseded {
				wk.maxAge = max(wk.maxAge, age)
			}
			for j, d := range coherenceDeltas {
				if staleAfter(age, superseded, d) {
					wk.stale[j]++
				}
			}
		}
	})
	report(b, p, r, sumTiers(reps).sub(t0), w.src.Loads()-l0)
	b.ReportMetric(float64(r.reads), "reads")
	b.ReportMetric(float64(r.stale[0]), "stale-reads")
	b.ReportMetric(100*float64(r.stale[0])/float64(max(r.reads, 1)), "stale-%")
	b.ReportMetric(float64(r.stale[1]), "stale-reads-10ms")
	b.ReportMetric(float64(r.stale[2]), "stale-reads-1ms")
	b.ReportMetric(float64(r.maxAge)/float64(time.Millisecond), "max-stale-ms")
}
