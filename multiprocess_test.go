package tiered

// The multi-process coherence test: invariant C1 (every process's near-cache stays
// coherent with the shared tier through the invalidation bus) with bounded staleness,
// checked for linearizability with porcupine.
//
// The test binary re-executes itself as child processes (TestMain hands over to
// runChild when TIERED_CHILD is set). Each child has its own Cache[string] on one
// 3-node ring, and every child's Loader reads the same source of truth: a 4th Redis
// server used as the "database" (GET db:<key>). Writers write the database and then
// the cache (Set), or delete from the database and then the cache (Delete); readers
// Get. Every operation is recorded with wall-clock start and end times
// (time.Now().UnixNano(): one system clock for every process on the machine); the
// parent merges the histories and checks them against a register per key whose reads
// may take effect up to staleBound before they start (see staleBound).
//
// TestMultiProcessNegativeControl runs the same harness with every child ignoring the
// other processes' invalidations and requires porcupine to find the stale reads: a
// checker that cannot tell the two apart proves nothing.
//
// TIERED_LONG=1 runs a long version (at least 10^5 operations); TIERED_MP_ARTIFACTS=dir
// keeps the children's histories and porcupine's visualization there instead of in
// t.TempDir().

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/redis/go-redis/v9"

	"github.com/tieredcache/tiered/internal/linkproxy"
	"github.com/tieredcache/tiered/internal/local"
	"github.com/tieredcache/tiered/internal/redistest"
)

// staleBound (Δ) is how long after a write is acknowledged a read that starts later
// may still return the value the write replaced. The checker moves every read's call
// time earlier by Δ, so a read may take effect anywhere in [start-Δ, end]: exactly
// "a read that starts more than Δ after a write returned must not return an older
// value".
//
// Why 100 ms: the writer's script publishes the invalidation atomically with the
// write, before the write is acknowledged, and each subscriber evicts as soon as it
// reads the message, so the only staleness C1 allows is the message's delivery time:
// on loopback about 0.5 ms on average (each child logs the delivery lag it saw). The
// bound has to absorb the tail of that under scheduling noise: CI runs -race on a
// noisy 2-core machine shared by four test processes and four redis-servers, where
// the slowest delivery seen was 8-10 ms without -race and up to 30 ms with it. 100 ms
// leaves a margin of 3 or more over that, yet is 600 times shorter than the
// near-cache's LocalTTL (1 minute, set explicitly in the children): a process that
// missed an invalidation would serve its stale copy for far longer than Δ, and the
// negative control shows the checker then fails.
const staleBound = 100 * time.Millisecond

// Environment of a child process.
const (
	envRole     = "TIERED_CHILD"        // "writer" or "reader"; set only in children
	envHealth   = "TIERED_MP_HEALTH"    // the children's HealthCheck, if set
	envMaxStale = "TIERED_MP_MAXSTALE"  // the children's MaxStaleness, if set
	envNodes    = "TIERED_MP_NODES"     // the ring's 3 node addresses, comma-separated
	envDB       = "TIERED_MP_DB"        // the "database" server's address
	envNS       = "TIERED_MP_NAMESPACE" // the cache's Namespace
	envProc     = "TIERED_MP_PROC"      // this process's id, 0..n-1
	envStart    = "TIERED_MP_START"     // when to start operating, Unix nanoseconds
	envDuration = "TIERED_MP_DURATION"  // how long to operate (time.ParseDuration)
	envBudget   = "TIERED_MP_OPS"       // most operations this process may record
	envWork     = "TIERED_MP_WORKLOAD"  // JSON mpWorkload
	envOut      = "TIERED_MP_OUT"       // the history file to write
	envBlind    = "TIERED_MP_BLIND"     // "1": ignore other processes' invalidations (negative control)
)

// mpWorkload is what each goroutine of a child does.
type mpWorkload struct {
	Keys          int           // the hot key set: k0 .. k<Keys-1>
	Writers       int           // write goroutines in a writer process
	WriterReads   int           // read goroutines in a writer process
	Readers       int           // read goroutines in a reader process
	WritePeriod   time.Duration // each write goroutine writes once per WritePeriod
	ReadPeriod    time.Duration // each read goroutine reads once per ReadPeriod
	DeletePercent int           // share of writes that are deletes, in percent
}

// mpRecord is one line of a child's history file: an operation, or (last) the
// child's summary.
type mpRecord struct {
	Proc   int    `json:"p"`
	Worker int    `json:"w"`
	Kind   string `json:"op"` // "set", "del" or "get"
	Key    string `json:"k"`
	In     string `json:"in,omitempty"`    // set: the value written
	Out    string `json:"out,omitempty"`   // get: the value read
	Found  bool   `json:"found,omitempty"` // get: false for ErrNotFound
	Start  int64  `json:"s"`               // Unix nanoseconds
	End    int64  `json:"e"`
	Err    string `json:"err,omitempty"`

	Summary *mpSummary `json:"summary,omitempty"`
}

type mpSummary struct {
	Role     string
	Ops      int
	Ready    int64         // when the child was ready to start, Unix nanoseconds
	LateBy   time.Duration // how much after the start time the child was ready (0: in time)
	Stats    Stats
	Duration time.Duration // from the start to the last operation's end
}

func mpKey(i int) string { return "k" + strconv.Itoa(i) }

func dbKey(key string) string { return "db:" + key }

// runChild is a child process's main: it runs one role's workload against the ring
// and writes its history. It returns the exit code; failures go to stderr.
func runChild(role string) int {
	if err := child(role); err != nil {
		fmt.Fprintf(os.Stderr, "tiered child %s (proc %s): %v\n", role, os.Getenv(envProc), err)
		return 1
	}
	return 0
}

func child(role string) (err error) {
	switch role {
	case "stampede":
		return stampedeChild()
	case "lease-holder":
		return leaseHolderChild()
	case "getmany":
		return getManyChild()
	case "hint-writer":
		return hintWriterChild()
	}
	if role != "writer" && role != "reader" {
		return fmt.Errorf("unknown role %q", role)
	}
	proc, err := strconv.Atoi(os.Getenv(envProc))
	if err != nil {
		return fmt.Errorf("%s: %w", envProc, err)
	}
	startNs, err := strconv.ParseInt(os.Getenv(envStart), 10, 64)
	if err != nil {
		return fmt.Errorf("%s: %w", envStart, err)
	}
	start := time.Unix(0, startNs)
	dur, err := time.ParseDuration(os.Getenv(envDuration))
	if err != nil {
		return fmt.Errorf("%s: %w", envDuration, err)
	}
	budget, err := strconv.ParseInt(os.Getenv(envBudget), 10, 64)
	if err != nil {
		return fmt.Errorf("%s: %w", envBudget, err)
	}
	var w mpWorkload
	if err := json.Unmarshal([]byte(os.Getenv(envWork)), &w); err != nil {
		return fmt.Errorf("%s: %w", envWork, err)
	}
	addrs := strings.Split(os.Getenv(envNodes), ",")
	if len(addrs) != 3 {
		return fmt.Errorf("%s: want 3 addresses, got %q", envNodes, addrs)
	}
	out, err := os.Create(os.Getenv(envOut))
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, out.Close()) }()

	// The clients are built as ringOpts builds them, and closed after the Cache.
	nodes, clients := ringNodes(addrs)
	defer func() {
		for _, cl := range clients {
			err = errors.Join(err, cl.Close())
		}
	}()
	db := redis.NewClient(&redis.Options{Addr: os.Getenv(envDB), ContextTimeoutEnabled: true})
	clients = append(clients, db)

	c, err := New(Options[string]{
		Nodes:     nodes,
		Namespace: os.Getenv(envNS),
		Timeout:   2 * time.Second, // generous: -race on a loaded 2-core machine
		// The faults run: MaxStaleness bounds what a lost subscription leaves served.
		HealthCheck:  durationEnv(envHealth),
		MaxStaleness: durationEnv(envMaxStale),
		// Explicit, because the test's claim rests on it: without invalidation a
		// copy would be served for a minute, far beyond staleBound.
		LocalTTL: time.Minute,
		Loader: LoaderFunc[string](func(ctx context.Context, key string) (string, error) {
			v, err := db.Get(ctx, dbKey(key)).Result()
			if errors.Is(err, redis.Nil) {
				return "", ErrNotFound
			}
			return v, err
		}),
	})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, c.Close()) }()
	if os.Getenv(envBlind) == "1" {
		blindToOthers(c)
	}
	// Every node's subscription must be up, or its keys would bypass the near-cache
	// and the test would not exercise it. New waits up to Timeout; wait longer here.
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	for i, f := range c.follows {
		select {
		case <-f.sub.Ready():
		case <-deadline.C:
			return fmt.Errorf("node %d's invalidation subscription not confirmed after 30 s", i)
		}
	}

	// Start at the common start time; a child ready after it (a loaded machine)
	// starts at once and still operates for the whole duration, overlapping the
	// others less (the parent logs it).
	ready := time.Now()
	var lateBy time.Duration
	if d := time.Until(start); d > 0 {
		t := time.NewTimer(d) // the common start time, not an event
		<-t.C
	} else {
		lateBy, start = -d, ready
	}
	end := start.Add(dur)

	var mu sync.Mutex // guards firstErr
	var firstErr error
	var ops atomic.Int64
	var wg sync.WaitGroup
	histories := make([][]mpRecord, w.Writers+w.WriterReads+w.Readers) // by worker id
	worker := func(id int, write bool) {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(proc), uint64(id)))
			period := w.ReadPeriod
			if write {
				period = w.WritePeriod
			}
			tick := time.NewTicker(period)
			defer tick.Stop()
			var h []mpRecord
			defer func() { histories[id] = h }()
			ctx := context.Background()
			for n := 0; ; n++ {
				if time.Now().After(end) || ops.Add(1) > budget {
					return
				}
				r := mpRecord{Proc: proc, Worker: id}
				var err error
				if write {
					// Skewed: key i gets (2(Keys-i)-1)/Keys² of the writes, so
					// in the default run the hottest key changes about every
					// 40 ms and the coldest about once a second: short and long
					// windows in which a stale copy would show.
					r.Key = mpKey(min(rng.IntN(w.Keys), rng.IntN(w.Keys)))
					r.Start = time.Now().UnixNano()
					if rng.IntN(100) < w.DeletePercent {
						r.Kind = "del"
						if err = db.Del(ctx, dbKey(r.Key)).Err(); err == nil {
							err = c.Delete(ctx, r.Key)
						}
					} else {
						r.Kind, r.In = "set", fmt.Sprintf("p%d-w%d-%d", proc, id, n)
						if err = db.Set(ctx, dbKey(r.Key), r.In, 0).Err(); err == nil {
							err = c.Set(ctx, r.Key, r.In)
						}
					}
					r.End = time.Now().UnixNano()
				} else {
					r.Kind, r.Key = "get", mpKey(rng.IntN(w.Keys))
					r.Start = time.Now().UnixNano()
					r.Out, err = c.Get(ctx, r.Key)
					r.End = time.Now().UnixNano()
					r.Found = err == nil
					if errors.Is(err, ErrNotFound) {
						err = nil
					}
				}
				if err != nil {
					r.Err = err.Error()
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("%s %q: %w", r.Kind, r.Key, err)
					}
					mu.Unlock()
				}
				h = append(h, r)
				<-tick.C
			}
		})
	}
	id := 0
	if role == "writer" {
		for range w.Writers {
			worker(id, true)
			id++
		}
		for range w.WriterReads {
			worker(id, false)
			id++
		}
	} else {
		for range w.Readers {
			worker(id, false)
			id++
		}
	}
	wg.Wait()

	bw := bufio.NewWriter(out)
	enc := json.NewEncoder(bw)
	sum := mpSummary{Role: role, Ready: ready.UnixNano(), LateBy: lateBy, Stats: c.Stats()}
	var last int64
	for _, h := range histories {
		for _, r := range h {
			if err := enc.Encode(r); err != nil {
				return err
			}
			sum.Ops++
			last = max(last, r.End)
		}
	}
	sum.Duration = time.Duration(last - start.UnixNano())
	if err := enc.Encode(mpRecord{Summary: &sum}); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return firstErr
}

// blindOrigin is the origin every child of the negative control writes with and
// listens as.
const blindOrigin = "negative-control"

// blindToOthers makes c ignore every other process's invalidations, for the negative
// control only. A subscriber skips the messages whose Origin is its cache's own (the
// writer has already evicted its copy), so giving every process the same origin makes
// each one treat all writes as its own. A Subscriber takes its Origin when it starts,
// in New, so setting c.origin alone would only change what c sends: the subscribers
// are restarted with it, through the same subscribe New uses (stopping them marks
// the nodes down, which the children's stats count as 3 lost subscriptions; the new
// subscriptions mark them up, flushing nothing, as nothing is cached yet). Nothing
// else changes: Set, Delete, the fencing and the near-cache's LocalTTL are the
// library's own, and gaps and new epochs would still flush.
func blindToOthers(c *Cache[string]) {
	c.subsMu.Lock()
	follows := c.follows
	c.subsMu.Unlock()
	c.origin = blindOrigin
	for idx, f := range follows {
		c.unfollow(f, false)
		c.followNode(idx, f.sn)
	}
}

// mpConfig sizes one run of the harness.
type mpConfig struct {
	readers  int           // reader processes (plus one writer process)
	duration time.Duration // how long the children operate
	budget   int64         // most operations per process
	work     mpWorkload
	blind    bool          // negative control
	margin   time.Duration // from launching the children to their common start time
	timeout  time.Duration // porcupine's
	// faults kills the pub/sub connections of one node after another every
	// faultEvery while the children run, and every episodeEvery starts an episode
	// of another fault (see faultEpisodes); the children then run with HealthCheck
	// 100 ms and MaxStaleness 200 ms, and delta (Δ) must cover MaxStaleness.
	faults bool
	delta  time.Duration // Δ: how stale a read may be (staleBound if 0)
}

// faultEvery is how often the faults run kills a node's pub/sub connections.
const faultEvery = 150 * time.Millisecond

// The faults run's other faults, one episode every episodeEvery, in turn, each on a
// node in turn (the kinds and the nodes do not go round in step):
//
//   - pause: the node is stopped (SIGSTOP) for pauseFor, for every process: calls to
//     it wait (the children's Timeout is 2 s), its pings go unanswered, so that what
//     each process holds of it is served only within MaxStaleness of the last pong;
//   - blackhole: reader process 1's links to the node (it dials every node through a
//     proxy) are cut, and the new ones drop every byte, connections open, for
//     blackHoleFor; then they are cut again, as a partition that heals with a reset
//     ends;
//   - latency: process 1's links to the node are cut, and the new ones carry
//     addedLatency more each way for latencyFor: its pongs come back later than
//     MaxStaleness after their pings, so its near-cache stops serving the node's keys
//     and its reads go to Redis over the slow link; then they are cut again.
//
// Each episode begins and ends with a cut because switching a toxic on or off while a
// link carries traffic is a data race inside toxiproxy (see linkproxy.LinkProxy).
const (
	episodeEvery = 600 * time.Millisecond
	pauseFor     = 250 * time.Millisecond
	blackHoleFor = 250 * time.Millisecond
	latencyFor   = 400 * time.Millisecond
	addedLatency = 150 * time.Millisecond
)

var faultEpisodes = [...]string{"pause", "blackhole", "latency"}

// mpFaults is what the faults run acts on: the ring's nodes, and the proxies process
// 1 reaches them through.
type mpFaults struct {
	servers []*redistest.Server
	links   []*linkproxy.LinkProxy
	wg      sync.WaitGroup // the episodes in progress
	mu      sync.Mutex     // protects count and err
	count   map[string]int // episodes run, by kind
	err     error
}

func newMPFaults(t *testing.T, servers []*redistest.Server) *mpFaults {
	f := &mpFaults{servers: servers, count: make(map[string]int)}
	tp := linkproxy.NewToxiproxy()
	for i, s := range servers {
		l, err := linkproxy.NewLinkProxy(tp, fmt.Sprintf("node-%d", i), s.Addr(),
			linkproxy.Toxic{Kind: "timeout", Attrs: `{"timeout":0}`},
			linkproxy.Toxic{Kind: "latency", Attrs: fmt.Sprintf(`{"latency":%d}`, addedLatency.Milliseconds())})
		if err != nil {
			t.Fatal(err)
		}
		f.links = append(f.links, l)
	}
	t.Cleanup(func() {
		for _, l := range f.links {
			l.Stop()
		}
		waitGoroutinesGone(t, "github.com/Shopify/toxiproxy", linkproxy.GuardPatience+5*time.Second)
	})
	return f
}

// addrs returns the addresses process 1 dials: the proxies.
func (f *mpFaults) addrs() []string {
	var a []string
	for _, l := range f.links {
		a = append(a, l.Addr())
	}
	return a
}

// episode runs episode n (its kind and node chosen by n) in a goroutine of its own.
func (f *mpFaults) episode(n int) {
	kind, node := faultEpisodes[n%len(faultEpisodes)], (n/len(faultEpisodes))%len(f.servers)
	f.wg.Go(func() {
		err := f.run(kind, node)
		f.mu.Lock()
		defer f.mu.Unlock()
		f.count[kind]++
		f.err = errors.Join(f.err, err)
	})
}

func (f *mpFaults) run(kind string, node int) error {
	hold := func(d time.Duration) {
		t := time.NewTimer(d) // the fault's length, not an event
		<-t.C
	}
	switch kind {
	case "pause":
		if err := f.servers[node].Pause(); err != nil {
			return err
		}
		hold(pauseFor)
		return f.servers[node].Resume()
	case "blackhole":
		// CutTo rather than Activate under traffic: see linkproxy.LinkProxy.Activate.
		if err := f.links[node].CutTo("timeout"); err != nil {
			return err
		}
		hold(blackHoleFor)
		return f.links[node].Cut()
	default:
		if err := f.links[node].CutTo("latency"); err != nil {
			return err
		}
		hold(latencyFor)
		return f.links[node].Cut()
	}
}

// wait waits for the episodes in progress and returns how many of each kind ran.
func (f *mpFaults) wait() (map[string]int, error) {
	f.wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.count, f.err
}

// Δ of the faults run: the children's MaxStaleness, a tick of the near-cache's clock,
// and the margin staleBound leaves for delivery under scheduling noise.
const faultDelta = 200*time.Millisecond + local.Tick + staleBound

// mpDefault is the CI run: one writer process (2 goroutines writing, one reading)
// and 3 reader processes (2 goroutines each) on 16 keys for 3 s, about 2,700
// operations. Every goroutine is paced, at one operation per 10 ms.
//
// The pace is what keeps porcupine fast on this history. Moving each read's call
// time back by staleBound makes it overlap every read of its key that starts in the
// next staleBound: about (700 reads/s / 16 keys) × 100 ms ≈ 4.4 of them. A
// linearizable history is checked in milliseconds whatever that number, but proving
// a history illegal means exhausting the orders of those overlapping reads, which
// costs about 2^overlap per operation: on 3-second runs of the negative control,
// 0.2 s at 4.4, 2.5 s at 6, and more than a minute (Unknown) for some keys at 17.
// At this pace a single stale read planted in a 117,000-operation history of the
// long run was proven illegal in 0.5 to 1.5 s. Higher rates would turn a violation
// into a timeout (a failure too, but without a verdict or a visualization).
func mpDefault() mpConfig {
	return mpConfig{
		readers:  3,
		duration: 3 * time.Second,
		budget:   10_000,
		work: mpWorkload{
			Keys: 16, Writers: 2, WriterReads: 1, Readers: 2,
			WritePeriod: 10 * time.Millisecond, ReadPeriod: 10 * time.Millisecond,
			DeletePercent: 25,
		},
		margin:  2 * time.Second,
		timeout: time.Minute,
	}
}

func TestMultiProcessCoherence(t *testing.T) { checkMultiProcess(t, mpDefault()) }

// TestMultiProcessCoherenceUnderFaults is TestMultiProcessCoherence while the nodes'
// pub/sub connections are killed, one node after another every faultEvery (about 20
// kills in the CI run): each kill loses the invalidations in flight and suspends the
// node in every process until it re-subscribes, and what a process holds of the node
// meanwhile is served within MaxStaleness (200 ms here). Every episodeEvery another
// fault begins, in turn (faultEpisodes): a node paused for everyone, reader process
// 1's links to a node cut and black-holed, or cut and slowed by 150 ms each way. The
// history must be linearizable with reads up to Δ = MaxStaleness + a clock tick +
// staleBound stale, whatever the link does.
func TestMultiProcessCoherenceUnderFaults(t *testing.T) {
	cfg := mpDefault()
	cfg.faults, cfg.delta = true, faultDelta
	checkMultiProcess(t, cfg)
}

// checkMultiProcess runs the harness with cfg (for over 10^5 operations with
// TIERED_LONG=1) and fails t unless porcupine finds the history linearizable with
// reads up to Δ stale.
func checkMultiProcess(t *testing.T, cfg mpConfig) {
	if testing.Short() {
		t.Skip("starts 4 processes and 4 redis-servers")
	}
	long := os.Getenv("TIERED_LONG") == "1"
	if long {
		// The same load for longer: about 900 operations a second, about 750 under
		// faults (calls wait out pauses and black holes: 98,504 in 130 s once).
		cfg.duration, cfg.budget, cfg.timeout = 130*time.Second, 100_000, 10*time.Minute
		if cfg.faults {
			cfg.duration = 160 * time.Second
		}
	}
	run := runMultiProcess(t, cfg)
	if long && len(run.ops) < 100_000 {
		t.Errorf("long run recorded %d operations, want at least 10^5", len(run.ops))
	}
	switch run.result {
	case porcupine.Ok:
		t.Logf("linearizable with reads up to %v stale", run.delta)
	case porcupine.Unknown:
		t.Errorf("porcupine timed out after %v: the history is neither proven linearizable nor illegal", cfg.timeout)
		reportStale(t, run.ops)
	default:
		t.Errorf("NOT linearizable with reads up to %v stale: a near-cache served a value more than %v after a write replaced it",
			run.delta, run.delta)
		run.reportIllegal(t)
	}
}

// durationEnv returns the duration in the environment variable name, or 0.
func durationEnv(name string) time.Duration {
	d, _ := time.ParseDuration(os.Getenv(name))
	return d
}

// TestMultiProcessNegativeControl proves the harness has teeth: the same run with
// every process ignoring the others' invalidations (see blindToOthers), so that each
// near-cache serves what it holds for its whole LocalTTL, must be found illegal.
func TestMultiProcessNegativeControl(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 4 processes and 4 redis-servers")
	}
	cfg := mpDefault()
	cfg.duration = 2 * time.Second
	cfg.blind = true
	cfg.margin += time.Second // blindToOthers restarts the subscriptions
	run := runMultiProcess(t, cfg)
	if run.result != porcupine.Illegal {
		t.Errorf("porcupine says %s for a history in which no near-cache applies another process's invalidations, want Illegal: "+
			"the multi-process harness cannot detect stale reads", run.result)
	}
	reportStale(t, run.ops)
}

// mpOp is an operation of the merged history.
type mpOp struct {
	mpRecord
	client int // porcupine's ClientId: one per goroutine of every process
}

// mpRun is a run's merged history and porcupine's verdict on it.
type mpRun struct {
	ops    []mpOp
	result porcupine.CheckResult
	info   porcupine.LinearizationInfo
	model  porcupine.Model
	dir    string // the histories, and where the visualization goes
	delta  time.Duration
}

// runMultiProcess starts the servers and the children, merges their histories and
// checks them. It fails t on any child or operation error.
func runMultiProcess(t *testing.T, cfg mpConfig) mpRun {
	t.Helper()
	servers := redistest.Start(t, 4) // the ring's 3 nodes and the "database"
	var addrs []string
	for _, s := range servers[:3] {
		addrs = append(addrs, s.Addr())
	}
	dir := artifactDir(t)
	work, err := json.Marshal(cfg.work)
	if err != nil {
		t.Fatal(err)
	}

	// Children take from a few hundred milliseconds to 1.5 s (-race on a busy
	// 2-core machine) to start and subscribe; they all begin at the same wall-clock
	// time, so they overlap. A child ready late starts at once (its log says so).
	t0 := time.Now()
	start := t0.Add(cfg.margin)
	ctx, cancel := context.WithTimeout(context.Background(), cfg.margin+cfg.duration+2*time.Minute)
	defer cancel()
	type proc struct {
		role           string
		cmd            *exec.Cmd
		stdout, stderr bytes.Buffer
		out            string
	}
	var faults *mpFaults
	if cfg.faults {
		faults = newMPFaults(t, servers[:3])
	}
	procs := make([]*proc, 1+cfg.readers)
	for i := range procs {
		nodes := addrs
		if faults != nil && i == 1 {
			nodes = faults.addrs() // the same ring (nodes are named by index), through the proxies
		}
		p := &proc{role: "reader", out: filepath.Join(dir, fmt.Sprintf("proc-%d.jsonl", i))}
		if i == 0 {
			p.role = "writer"
		}
		p.cmd = exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
		p.cmd.Env = append(os.Environ(),
			envRole+"="+p.role,
			envNodes+"="+strings.Join(nodes, ","),
			envDB+"="+servers[3].Addr(),
			envNS+"=mp",
			envProc+"="+strconv.Itoa(i),
			envStart+"="+strconv.FormatInt(start.UnixNano(), 10),
			envDuration+"="+cfg.duration.String(),
			envBudget+"="+strconv.FormatInt(cfg.budget, 10),
			envWork+"="+string(work),
			envOut+"="+p.out,
			// The race detector sleeps a second before a process exits.
			"GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"),
		)
		if cfg.blind {
			p.cmd.Env = append(p.cmd.Env, envBlind+"=1")
		}
		if cfg.faults {
			p.cmd.Env = append(p.cmd.Env, envHealth+"=100ms", envMaxStale+"=200ms")
		}
		p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
		p.cmd.WaitDelay = 5 * time.Second
		if err := p.cmd.Start(); err != nil {
			t.Fatalf("start child %d: %v", i, err)
		}
		procs[i] = p
	}
	kills := 0
	if cfg.faults {
		tick := time.NewTicker(faultEvery)
		episodes := 0
		for i := 0; time.Now().Before(start.Add(cfg.duration)); i++ {
			<-tick.C
			if time.Now().Before(start) {
				continue
			}
			if err := servers[i%3].KillPubSubClients(ctx); err != nil {
				t.Errorf("killing node %d's pub/sub clients: %v", i%3, err)
			}
			kills++
			if i%int(episodeEvery/faultEvery) == 0 && time.Now().Add(latencyFor).Before(start.Add(cfg.duration)) {
				faults.episode(episodes)
				episodes++
			}
		}
		tick.Stop()
		count, err := faults.wait()
		if err != nil {
			t.Errorf("fault episodes: %v", err)
		}
		t.Logf("killed a node's pub/sub connections %d times during the run; other faults: %v", kills, count)
		for _, kind := range faultEpisodes {
			if count[kind] == 0 {
				t.Errorf("no %s episode ran", kind)
			}
		}
	}
	for i, p := range procs {
		if err := p.cmd.Wait(); err != nil {
			t.Errorf("child %d (%s): %v\nstderr:\n%s\nstdout:\n%s", i, p.role, err, p.stderr.String(), p.stdout.String())
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	ran := time.Since(t0)

	// Merge.
	var ops []mpOp
	clients := map[[2]int]int{}
	var total Stats
	var errs []string
	for i, p := range procs {
		f, err := os.Open(p.out)
		if err != nil {
			t.Fatal(err)
		}
		dec := json.NewDecoder(bufio.NewReader(f))
		var sum *mpSummary
		for {
			var r mpRecord
			if err := dec.Decode(&r); err != nil {
				if !errors.Is(err, io.EOF) {
					t.Fatalf("child %d's history: %v", i, err)
				}
				break
			}
			if r.Summary != nil {
				sum = r.Summary
				continue
			}
			if r.Err != "" {
				errs = append(errs, fmt.Sprintf("%s: %s", describeOp(r), r.Err))
			}
			id, ok := clients[[2]int{r.Proc, r.Worker}]
			if !ok {
				id = len(clients)
				clients[[2]int{r.Proc, r.Worker}] = id
			}
			ops = append(ops, mpOp{mpRecord: r, client: id})
		}
		f.Close()
		if sum == nil {
			t.Fatalf("child %d's history has no summary", i)
		}
		if sum.Ops == 0 {
			t.Errorf("child %d (%s) recorded no operations", i, sum.Role)
		}
		s := sum.Stats
		t.Logf("child %d (%s): %d ops in %v (ready at +%v%s); near hits %d, misses %d; remote hits %d; loads %d; "+
			"invalidations sent %d, received %d, delivery lag max %v, mean %v; flushes: gap %d, epoch %d; subscriptions lost %d",
			i, sum.Role, sum.Ops, sum.Duration.Round(time.Millisecond),
			time.Duration(sum.Ready-t0.UnixNano()).Round(time.Millisecond), lateness(sum.LateBy),
			s.LocalHits, s.LocalMisses, s.RemoteHits, s.Loads,
			s.InvalidationsSent, s.InvalidationsReceived, s.DeliveryLagMax, s.DeliveryLagMean,
			s.FlushesGap, s.FlushesEpoch, s.SubscriptionsLost)
		total.LocalHits += s.LocalHits
		total.Loads += s.Loads
		total.RemoteHits += s.RemoteHits
		total.InvalidationsReceived += s.InvalidationsReceived
		total.SubscriptionsLost += s.SubscriptionsLost
	}
	if len(errs) > 0 {
		t.Fatalf("%d operations failed (the children report errors in their exit status too); the first:\n%s",
			len(errs), strings.Join(errs[:min(len(errs), 5)], "\n"))
	}
	var reads int
	for _, op := range ops {
		if op.Kind == "get" {
			reads++
		}
	}
	t.Logf("%d operations (%d reads, %d writes) on %d keys from %d processes (%d goroutines); children done %v after launch",
		len(ops), reads, len(ops)-reads, cfg.work.Keys, len(procs), len(clients), ran.Round(time.Millisecond))
	// The run must have exercised what it checks: near-cache hits, fills from both
	// tiers and, unless the control switched it off, invalidations between processes.
	if total.LocalHits == 0 || total.RemoteHits == 0 || total.Loads == 0 || (!cfg.blind && total.InvalidationsReceived == 0) {
		t.Fatalf("the run did not exercise the tiers: %+v", total)
	}
	if cfg.faults && (kills == 0 || total.SubscriptionsLost == 0) {
		t.Fatalf("the faults run lost no subscription (%d kills): %+v", kills, total)
	}

	run := mpRun{ops: ops, model: registerModel(), dir: dir, delta: cmp.Or(cfg.delta, staleBound)}
	history := make([]porcupine.Operation, len(ops))
	for i, op := range ops {
		call := op.Start
		if op.Kind == "get" {
			call -= int64(run.delta) // bounded staleness: see staleBound
		}
		history[i] = porcupine.Operation{
			ClientId: op.client,
			Input:    mpInput{Kind: op.Kind, Key: op.Key, Value: op.In},
			Call:     call,
			Output:   mpOutput{Value: op.Out, Found: op.Found},
			Return:   op.End,
			Metadata: fmt.Sprintf("p%d/w%d", op.Proc, op.Worker),
		}
	}
	checkStart := time.Now()
	run.result, run.info = porcupine.CheckOperationsVerbose(run.model, history, cfg.timeout)
	t.Logf("porcupine (reads up to %v stale): %s in %v", run.delta, run.result, time.Since(checkStart).Round(time.Millisecond))
	return run
}

func lateness(d time.Duration) string {
	if d <= 0 {
		return ""
	}
	return fmt.Sprintf(", %v after the common start: started then", d.Round(time.Millisecond))
}

// artifactDir is where the histories and a visualization go: a new directory under
// TIERED_MP_ARTIFACTS if set (kept after the test), else t.TempDir().
func artifactDir(t *testing.T) string {
	base := os.Getenv("TIERED_MP_ARTIFACTS")
	if base == "" {
		return t.TempDir()
	}
	dir, err := os.MkdirTemp(base, strings.ReplaceAll(t.Name(), "/", "_")+"-")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// The porcupine model: a register per key, "absent" at first.

type mpInput struct {
	Kind  string // "set", "del", "get"
	Key   string
	Value string // set
}

type mpOutput struct {
	Value string
	Found bool
}

// mpState is a register's value; the zero value is "absent".
type mpState struct {
	Value   string
	Present bool
}

func registerModel() porcupine.Model {
	return porcupine.Model{
		Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
			return partitionBy(history, func(op porcupine.Operation) string { return op.Input.(mpInput).Key })
		},
		PartitionEvent: func(history []porcupine.Event) [][]porcupine.Event {
			// A return event carries the output, not the key: find it by id.
			keys := map[int]string{}
			for _, e := range history {
				if e.Kind == porcupine.CallEvent {
					keys[e.Id] = e.Value.(mpInput).Key
				}
			}
			return partitionBy(history, func(e porcupine.Event) string { return keys[e.Id] })
		},
		Init: func() any { return mpState{} },
		Step: func(state, input, output any) (bool, any) {
			s, in := state.(mpState), input.(mpInput)
			switch in.Kind {
			case "set":
				return true, mpState{Value: in.Value, Present: true}
			case "del":
				return true, mpState{}
			default: // get
				out := output.(mpOutput)
				return out.Found == s.Present && out.Value == s.Value, s
			}
		},
		Hash: func(state any) uint64 {
			h := fnv.New64a()
			h.Write([]byte(state.(mpState).Value))
			return h.Sum64()
		},
		DescribeOperation: func(input, output any) string {
			in, out := input.(mpInput), output.(mpOutput)
			return describe(in.Kind, in.Key, in.Value, out.Value, out.Found)
		},
		DescribeState: func(state any) string {
			if s := state.(mpState); s.Present {
				return s.Value
			}
			return "absent"
		},
	}
}

// partitionBy groups xs by key, in key order, so that partition i is the same key
// whichever function built it.
func partitionBy[T any](xs []T, key func(T) string) [][]T {
	m := map[string][]T{}
	for _, x := range xs {
		m[key(x)] = append(m[key(x)], x)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([][]T, len(keys))
	for i, k := range keys {
		out[i] = m[k]
	}
	return out
}

// reportIllegal writes porcupine's visualization and names the keys whose history is
// not linearizable, with reads that are stale beyond doubt.
func (run mpRun) reportIllegal(t *testing.T) {
	t.Helper()
	path := filepath.Join(run.dir, "linearizability.html")
	if err := porcupine.VisualizePath(run.model, run.info, path); err != nil {
		t.Errorf("visualization: %v", err)
	} else if os.Getenv("TIERED_MP_ARTIFACTS") == "" {
		t.Logf("visualization: %s (removed after the test: set TIERED_MP_ARTIFACTS=dir to keep it)", path)
	} else {
		t.Logf("visualization: %s", path)
	}
	parts := partitionBy(run.ops, func(op mpOp) string { return op.Key })
	for p, partials := range run.info.PartialLinearizations() {
		longest := 0
		for _, l := range partials {
			longest = max(longest, len(l))
		}
		if longest < len(parts[p]) {
			t.Logf("key %s: %d operations, the longest linearizable subset has %d", parts[p][0].Key, len(parts[p]), longest)
		}
	}
	reportStale(t, run.ops)
}

// reportStale logs how many reads are stale beyond doubt, and the first few.
func reportStale(t *testing.T, ops []mpOp) {
	t.Helper()
	stale := staleReads(ops)
	t.Logf("%d reads are stale by more than %v beyond doubt (see staleReads)", len(stale), staleBound)
	seen := map[string]bool{}
	shown := 0
	for _, s := range stale { // the first of each key, up to 5
		if !seen[s.key] && shown < 5 {
			seen[s.key] = true
			shown++
			t.Log("  " + s.what)
		}
	}
}

type staleRead struct {
	key   string
	start int64
	what  string
}

// staleReads returns the reads that no linearization can explain even with staleBound
// of staleness, in order of start time: a sufficient condition, much cheaper and
// easier to read than porcupine's verdict. They are the reads of a value x, written
// by w, that start more than staleBound after a write w2 returned that itself started
// after w returned; the reads of absent that start more than staleBound after a set w2
// returned when no delete can take effect between w2 and the read; and the reads of a
// value no one wrote, or that was written only after the read returned.
func staleReads(ops []mpOp) []staleRead {
	var out []staleRead
	for _, part := range partitionBy(ops, func(op mpOp) string { return op.Key }) {
		var writes []mpOp
		byValue := map[string]mpOp{}
		for _, op := range part {
			if op.Kind != "get" {
				writes = append(writes, op)
			}
			if op.Kind == "set" {
				byValue[op.In] = op
			}
		}
		slices.SortFunc(writes, func(a, b mpOp) int { return cmp.Compare(a.End, b.End) })
		for _, r := range part {
			if r.Kind != "get" {
				continue
			}
			bound := r.Start - int64(staleBound)
			add := func(format string, args ...any) {
				out = append(out, staleRead{key: r.Key, start: r.Start, what: describeOp(r.mpRecord) + ": " + fmt.Sprintf(format, args...)})
			}
			if r.Found {
				w, ok := byValue[r.Out]
				if !ok {
					add("no one wrote %q", r.Out)
					continue
				}
				if w.Start > r.End {
					add("%s started after the read returned", describeOp(w.mpRecord))
					continue
				}
				for _, w2 := range writes {
					if w2.End >= bound {
						break
					}
					if w2.Start > w.End {
						add("%s started after %s returned, and returned %v before the read started",
							describeOp(w2.mpRecord), describeOp(w.mpRecord), time.Duration(r.Start-w2.End))
						break
					}
				}
				continue
			}
			for _, w2 := range writes {
				if w2.End >= bound {
					break
				}
				if w2.Kind != "set" {
					continue
				}
				if !slices.ContainsFunc(writes, func(d mpOp) bool { return d.Kind == "del" && d.End >= w2.Start && d.Start <= r.End }) {
					add("%s returned %v before the read started, and no delete can take effect in between",
						describeOp(w2.mpRecord), time.Duration(r.Start-w2.End))
					break
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b staleRead) int { return cmp.Compare(a.start, b.start) })
	return out
}

func describeOp(r mpRecord) string {
	return fmt.Sprintf("[p%d/w%d %s, %d..%d ns]", r.Proc, r.Worker, describe(r.Kind, r.Key, r.In, r.Out, r.Found), r.Start, r.End)
}

func describe(kind, key, in, out string, found bool) string {
	switch kind {
	case "set":
		return fmt.Sprintf("set(%s, %s)", key, in)
	case "del":
		return fmt.Sprintf("del(%s)", key)
	case "get":
		if found {
			return fmt.Sprintf("get(%s) -> %s", key, out)
		}
		return fmt.Sprintf("get(%s) -> absent", key)
	}
	return kind + "(" + key + ")"
}
