// Package loadgen drives replicas of the users service: it writes through one
// replica and reads through the others, with concurrent workers and a Zipf key
// distribution, and checks every read against the writes it made.
//
// A read is stale if it returns a version older than the newest version whose
// write was acknowledged (its PUT returned) more than Config.StaleAfter before the
// read began. Writes of one key are serialised by the generator, so each key's
// acknowledged versions rise with their acknowledgement times. A read older than a
// write acknowledged less than StaleAfter before it began is counted apart, as
// lagging: the invalidation was still on its way.
package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tieredcache/tiered/examples/service"
)

// Config configures Run. Zero values select the defaults named.
type Config struct {
	Writer  string   // base URL of the replica that takes every write ("http://127.0.0.1:8080")
	Readers []string // base URLs of the replicas that take the reads

	Users        int           // ids 1..Users; default 1000
	ReadWorkers  int           // concurrent readers; default 16
	WriteWorkers int           // concurrent writers; default 2
	WriteRate    float64       // writes per second over all writers; default 100; negative: as fast as they go
	ReadRate     float64       // reads per second over all readers; default 0: as fast as they go
	BatchEvery   int           // one read in BatchEvery is GET /users?ids= of BatchSize ids; default 10; negative: none
	BatchSize    int           // default 10
	ZipfS        float64       // the Zipf exponent of the key distribution (above 1); default 1.1
	Duration     time.Duration // how long to run after seeding; 0: until ctx ends
	StaleAfter   time.Duration // default 100 ms
	SkipSeed     bool          // do not PUT every user before the run
	Out          io.Writer     // one line per second, the events and the totals; nil: discard
	Events       []Event       // things to do during the run (a Redis node killed, ...)
	Client       *http.Client  // default: a client of its own, closed when Run returns
}

// Event is something done at a moment of the run, printed in line with the figures.
type Event struct {
	At   time.Duration // after the start of the run (after seeding)
	Name string
	// Do does it; it may print lines with printf, in line with the figures.
	Do func(ctx context.Context, printf func(format string, args ...any)) error
}

// Result is what a run measured. Cache and database figures are the sums over
// every replica of the differences of their /stats between the start and the end
// of the run.
type Result struct {
	Elapsed  time.Duration
	Reads    uint64 // GET requests answered
	KeysRead uint64 // users those reads checked (a GET /users?ids= checks each)
	Writes   uint64 // PUTs acknowledged
	Stale    uint64 // reads older than a write acknowledged more than StaleAfter before they began
	// StaleUnconfirmed counts the stale reads whose newer write was answered with
	// X-Cache-Invalidation: pending (the write committed, its cache delete failed and
	// waits to be replayed): the staleness a failed delete allows until the replay.
	// Stale - StaleUnconfirmed reads were stale although the write's delete succeeded.
	StaleUnconfirmed uint64
	StaleMaxAge      time.Duration // the longest a stale read began after the write it missed was acknowledged
	Lagging          uint64        // reads older than a write acknowledged less than StaleAfter before they began
	Wrong            uint64        // reads whose content is not what was written for their version
	Errors           uint64        // requests that failed (transport errors, unexpected statuses, bad bodies)
	Pending          uint64        // PUTs answered with X-Cache-Invalidation: pending
	Examples         []string

	Totals Totals // the replicas' counters over the run; Polled false if /stats failed
}

// Requests is the reads and writes made.
func (r Result) Requests() uint64 { return r.Reads + r.Writes }

// Totals sums counters over the replicas' /stats.
type Totals struct {
	Polled            bool
	Requests          uint64 // HTTP requests the replicas served (including /stats)
	DBSelects         uint64 // read queries (Loader and BatchLoader calls)
	DBSelectKeys      uint64
	DBWrites          uint64
	LocalHits         uint64
	LocalMisses       uint64
	RemoteHits        uint64
	RemoteErrors      uint64
	Loads             uint64
	LeaseWaits        uint64
	CacheDeleteErrors uint64
	WritesReplayed    uint64
	DeliveryLagMax    time.Duration // the largest over the replicas (not a difference)
}

func (t Totals) sub(o Totals) Totals {
	return Totals{
		Polled:            t.Polled && o.Polled,
		Requests:          t.Requests - o.Requests,
		DBSelects:         t.DBSelects - o.DBSelects,
		DBSelectKeys:      t.DBSelectKeys - o.DBSelectKeys,
		DBWrites:          t.DBWrites - o.DBWrites,
		LocalHits:         t.LocalHits - o.LocalHits,
		LocalMisses:       t.LocalMisses - o.LocalMisses,
		RemoteHits:        t.RemoteHits - o.RemoteHits,
		RemoteErrors:      t.RemoteErrors - o.RemoteErrors,
		Loads:             t.Loads - o.Loads,
		LeaseWaits:        t.LeaseWaits - o.LeaseWaits,
		CacheDeleteErrors: t.CacheDeleteErrors - o.CacheDeleteErrors,
		WritesReplayed:    t.WritesReplayed - o.WritesReplayed,
		DeliveryLagMax:    t.DeliveryLagMax,
	}
}

// NearHitRatio is the share of reads answered by the replicas' near-caches.
func (t Totals) NearHitRatio() float64 { return ratio(t.LocalHits, t.LocalHits+t.LocalMisses) }

// SharedHitRatio is the share of near-cache misses answered by Redis.
func (t Totals) SharedHitRatio() float64 { return ratio(t.RemoteHits, t.LocalMisses) }

func ratio(a, b uint64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func (c *Config) defaults() error {
	if c.Writer == "" || len(c.Readers) == 0 {
		return errors.New("loadgen: Config.Writer and Config.Readers are required")
	}
	def := func(p *int, v int) {
		if *p == 0 {
			*p = v
		}
	}
	def(&c.Users, 1000)
	def(&c.ReadWorkers, 16)
	def(&c.WriteWorkers, 2)
	def(&c.BatchEvery, 10)
	def(&c.BatchSize, 10)
	if c.WriteRate == 0 {
		c.WriteRate = 100
	}
	if c.ZipfS == 0 {
		c.ZipfS = 1.1
	}
	if c.StaleAfter == 0 {
		c.StaleAfter = 100 * time.Millisecond
	}
	if c.Out == nil {
		c.Out = io.Discard
	}
	if c.ZipfS <= 1 || c.Users < 1 || c.ReadWorkers < 0 || c.WriteWorkers < 0 || c.BatchSize < 1 {
		return errors.New("loadgen: want ZipfS > 1, Users >= 1, BatchSize >= 1 and workers >= 0")
	}
	return nil
}

// ack is a write the service acknowledged.
type ack struct {
	version     int32
	at          time.Time // when its PUT returned
	name, email string
	pending     bool // the write committed but its cache delete failed (X-Cache-Invalidation: pending)
}

// keyState is what the generator knows of one user.
type keyState struct {
	wmu    sync.Mutex // serialises the key's writes
	writes int        // writes sent, under wmu: numbers the names

	mu   sync.Mutex // protects acks
	acks []ack      // ascending versions and times
}

// keep bounds the acknowledged writes remembered per key: older ones are dropped
// once the next is older than this (no read runs that long).
const keep = 10 * time.Second

func (k *keyState) record(a ack) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.acks = append(k.acks, a)
	for len(k.acks) > 2 && time.Since(k.acks[1].at) > keep {
		k.acks = k.acks[1:]
	}
}

// verdict is a read's check.
type verdict int

const (
	fresh verdict = iota
	lagging
	stale
	staleUnconfirmed // stale, after a write whose cache delete failed
	wrong
)

// check judges a read of the key, begun at start, that returned u (nil: not found).
func (k *keyState) check(u *service.User, start time.Time, staleAfter time.Duration) (v verdict, age time.Duration, why string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var got int32
	if u != nil {
		got = u.Version
	}
	cut := start.Add(-staleAfter)
	var newest int32 // the newest acknowledged before start
	var settled ack  // the newest acknowledged before cut
	for i := len(k.acks) - 1; i >= 0; i-- {
		a := k.acks[i]
		if newest == 0 && a.at.Before(start) {
			newest = a.version
		}
		if a.at.Before(cut) {
			settled = a
			break
		}
	}
	if u != nil {
		for _, a := range k.acks {
			if a.version == got && (a.name != u.Name || a.email != u.Email) {
				return wrong, 0, fmt.Sprintf("version %d read as %q <%s>, written as %q <%s>", got, u.Name, u.Email, a.name, a.email)
			}
		}
	}
	age = start.Sub(settled.at)
	switch {
	case got < settled.version && settled.pending:
		return staleUnconfirmed, age, fmt.Sprintf("read version %d, but version %d was acknowledged %v before the read began, its cache delete pending",
			got, settled.version, age.Round(time.Millisecond))
	case got < settled.version:
		return stale, age, fmt.Sprintf("read version %d, but version %d was acknowledged %v before the read began",
			got, settled.version, age.Round(time.Millisecond))
	case got < newest:
		return lagging, 0, ""
	}
	return fresh, 0, ""
}

// gen is one run.
type gen struct {
	cfg    Config
	client *http.Client
	keys   []keyState // index id-1

	reads, keysRead, writes     atomic.Uint64
	stale, lagging, wrong, errs atomic.Uint64
	staleUnconfirmed, pending   atomic.Uint64

	outMu    sync.Mutex // serialises lines on cfg.Out, and protects the fields below
	examples []string
	exampled map[int]bool  // users with an example already
	maxAge   time.Duration // StaleMaxAge
}

const maxExamples = 6

func (g *gen) example(format string, args ...any) { g.exampleOf(0, format, args...) }

// exampleOf keeps an example of a failure, at most one per user id (0: any).
func (g *gen) exampleOf(id int, format string, args ...any) {
	g.outMu.Lock()
	defer g.outMu.Unlock()
	if len(g.examples) < maxExamples && (id == 0 || !g.exampled[id]) {
		g.examples = append(g.examples, fmt.Sprintf(format, args...))
		g.exampled[id] = true
	}
}

func (g *gen) staleAge(age time.Duration) {
	g.outMu.Lock()
	defer g.outMu.Unlock()
	g.maxAge = max(g.maxAge, age)
}

func (g *gen) printf(format string, args ...any) {
	g.outMu.Lock()
	defer g.outMu.Unlock()
	fmt.Fprintf(g.cfg.Out, format, args...)
}

func (g *gen) fail(format string, args ...any) {
	g.errs.Add(1)
	g.example("error: "+format, args...)
}

// Run seeds the users (unless SkipSeed), then runs the workers for Duration (or
// until ctx ends), printing a line per second and the totals at the end. It returns
// an error only if the run could not start: failed requests are counted in the
// Result.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if err := cfg.defaults(); err != nil {
		return Result{}, err
	}
	g := &gen{cfg: cfg, client: cfg.Client, keys: make([]keyState, cfg.Users), exampled: map[int]bool{}}
	if g.client == nil {
		tr := &http.Transport{MaxIdleConnsPerHost: cfg.ReadWorkers + cfg.WriteWorkers + 8, IdleConnTimeout: 30 * time.Second}
		defer tr.CloseIdleConnections()
		g.client = &http.Client{Transport: tr, Timeout: 5 * time.Second}
	}
	replicas := append([]string{cfg.Writer}, cfg.Readers...)

	if !cfg.SkipSeed {
		start := time.Now()
		if err := g.seed(ctx); err != nil {
			return Result{}, err
		}
		g.printf("seeded %d users through %s in %v\n", cfg.Users, cfg.Writer, time.Since(start).Round(time.Millisecond))
	}

	first := g.poll(ctx, replicas)
	runCtx, cancel := ctx, context.CancelFunc(func() {})
	if cfg.Duration > 0 {
		runCtx, cancel = context.WithTimeout(ctx, cfg.Duration)
	}
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for i := range cfg.ReadWorkers {
		wg.Go(func() { g.reader(runCtx, uint64(i)) })
	}
	for i := range cfg.WriteWorkers {
		wg.Go(func() { g.writer(runCtx, uint64(i)) })
	}
	for _, ev := range cfg.Events {
		wg.Go(func() { g.event(runCtx, start, ev) })
	}

	g.printf("%6s %8s %8s %7s %9s %10s %7s %6s %8s %6s %6s\n",
		"time", "req/s", "reads/s", "writes/s", "near-hit", "shared-hit", "db-q/s", "stale", "lagging", "wrong", "errors")
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	prev, prevAt := first, start
	var prevReq, prevReads, prevWrites, prevStale, prevLag, prevWrong, prevErr uint64
	for done := false; !done; {
		select {
		case <-runCtx.Done():
			done = true
		case <-tick.C:
		}
		now := time.Now()
		secs := now.Sub(prevAt).Seconds()
		if done && secs < 0.5 { // a sliver of a second at the end: the totals say it
			break
		}
		cur := g.poll(ctx, replicas)
		reads, writes := g.reads.Load(), g.writes.Load()
		req := reads + writes
		st, lag, wr, er := g.stale.Load(), g.lagging.Load(), g.wrong.Load(), g.errs.Load()
		near, shared, dbq := "?", "?", "?"
		if d := cur.sub(prev); d.Polled {
			near = pct(d.NearHitRatio(), d.LocalHits+d.LocalMisses)
			shared = pct(d.SharedHitRatio(), d.LocalMisses)
			dbq = fmt.Sprintf("%.0f", float64(d.DBSelects)/secs)
		}
		g.printf("%5.0fs %8.0f %8.0f %7.0f %9s %10s %7s %6d %8d %6d %6d\n",
			now.Sub(start).Seconds(), float64(req-prevReq)/secs, float64(reads-prevReads)/secs, float64(writes-prevWrites)/secs,
			near, shared, dbq, st-prevStale, lag-prevLag, wr-prevWrong, er-prevErr)
		if cur.Polled {
			prev = cur
		}
		prevAt, prevReq, prevReads, prevWrites, prevStale, prevLag, prevWrong, prevErr = now, req, reads, writes, st, lag, wr, er
	}
	wg.Wait()
	elapsed := time.Since(start)
	last := g.poll(ctx, replicas)

	res := Result{
		Elapsed: elapsed, Reads: g.reads.Load(), KeysRead: g.keysRead.Load(), Writes: g.writes.Load(),
		Stale: g.stale.Load(), StaleUnconfirmed: g.staleUnconfirmed.Load(), Lagging: g.lagging.Load(), Wrong: g.wrong.Load(), Errors: g.errs.Load(),
		Pending: g.pending.Load(), Totals: last.sub(first),
	}
	g.outMu.Lock()
	res.Examples = append([]string(nil), g.examples...)
	res.StaleMaxAge = g.maxAge
	g.outMu.Unlock()
	g.printf("%s", res.Summary(cfg.StaleAfter))
	return res, nil
}

func pct(r float64, n uint64) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f%%", 100*r)
}

// Summary is the totals in a few lines.
func (r Result) Summary(staleAfter time.Duration) string {
	var b strings.Builder
	secs := r.Elapsed.Seconds()
	fmt.Fprintf(&b, "\ntotals over %.1fs: %d requests (%.0f/s): %d reads of %d users, %d writes\n",
		secs, r.Requests(), float64(r.Requests())/secs, r.Reads, r.KeysRead, r.Writes)
	fmt.Fprintf(&b, "  stale reads (older than a write acknowledged more than %v before the read began): %d\n", staleAfter, r.Stale)
	if r.Stale > 0 {
		fmt.Fprintf(&b, "    after a write whose cache delete failed (pending replay): %d; after a confirmed delete: %d; the latest began %v after the write's ack\n",
			r.StaleUnconfirmed, r.Stale-r.StaleUnconfirmed, r.StaleMaxAge.Round(time.Millisecond))
	}
	fmt.Fprintf(&b, "  lagging reads (older than a write acknowledged less than %v before): %d\n", staleAfter, r.Lagging)
	fmt.Fprintf(&b, "  wrong reads: %d, failed requests: %d, writes with the cache delete pending: %d\n", r.Wrong, r.Errors, r.Pending)
	if t := r.Totals; t.Polled {
		fmt.Fprintf(&b, "  near-cache hits %s of %d lookups; Redis answered %s of the near misses\n",
			pct(t.NearHitRatio(), t.LocalHits+t.LocalMisses), t.LocalHits+t.LocalMisses, pct(t.SharedHitRatio(), t.LocalMisses))
		perQuery := "-"
		if t.DBSelects > 0 {
			perQuery = fmt.Sprintf("%.0f", float64(r.KeysRead)/float64(t.DBSelects))
		}
		fmt.Fprintf(&b, "  database: %d SELECTs (%.0f/s) for %d users read: one query per %s users read; %d writes\n",
			t.DBSelects, float64(t.DBSelects)/secs, r.KeysRead, perQuery, t.DBWrites)
		fmt.Fprintf(&b, "  cache: %d lease waits, %d Redis errors, %d cache delete errors, %d missed deletes replayed, invalidation delivery max %v\n",
			t.LeaseWaits, t.RemoteErrors, t.CacheDeleteErrors, t.WritesReplayed, t.DeliveryLagMax)
	}
	for _, e := range r.Examples {
		fmt.Fprintf(&b, "  example: %s\n", e)
	}
	return b.String()
}

// seed writes every user once, 16 at a time.
func (g *gen) seed(ctx context.Context) error {
	ids := make(chan int)
	var wg sync.WaitGroup
	var failed atomic.Uint64
	for range 16 {
		wg.Go(func() {
			for id := range ids {
				if !g.write(ctx, id) {
					failed.Add(1)
				}
			}
		})
	}
	for id := 1; id <= g.cfg.Users && ctx.Err() == nil; id++ {
		ids <- id
	}
	close(ids)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	if n := failed.Load(); n > 0 {
		g.outMu.Lock()
		defer g.outMu.Unlock()
		return fmt.Errorf("loadgen: seeding: %d of %d writes failed: %s", n, g.cfg.Users, strings.Join(g.examples, "; "))
	}
	g.writes.Store(0)
	g.pending.Store(0)
	return nil
}

// zipf returns a key picker over ids 1..Users, hottest first.
func (g *gen) zipf(seed uint64) func() int {
	r := rand.New(rand.NewPCG(seed, uint64(time.Now().UnixNano())))
	z := rand.NewZipf(r, g.cfg.ZipfS, 1, uint64(g.cfg.Users-1))
	return func() int { return int(z.Uint64()) + 1 }
}

// pacer spaces one worker's requests so that workers of them make rate requests a
// second in all; a rate of 0 or less does not wait.
type pacer struct {
	interval time.Duration
	next     time.Time
}

func newPacer(rate float64, workers int) *pacer {
	p := &pacer{next: time.Now()}
	if rate > 0 {
		p.interval = time.Duration(float64(workers) / rate * float64(time.Second))
		p.next = p.next.Add(time.Duration(rand.Int64N(int64(p.interval)))) // spread the workers
	}
	return p
}

// wait waits for the next slot, or for ctx to end.
func (p *pacer) wait(ctx context.Context) {
	if p.interval == 0 {
		return
	}
	if d := time.Until(p.next); d > 0 {
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
	} else if d < -time.Second { // far behind (an outage): do not burst to catch up
		p.next = time.Now()
	}
	p.next = p.next.Add(p.interval)
}

func (g *gen) writer(ctx context.Context, worker uint64) {
	pick := g.zipf(1000 + worker)
	pace := newPacer(g.cfg.WriteRate, g.cfg.WriteWorkers)
	for pace.wait(ctx); ctx.Err() == nil; pace.wait(ctx) {
		g.write(ctx, pick())
	}
}

// write PUTs a new name and email for id, records the acknowledged version and
// reports whether it was acknowledged.
func (g *gen) write(ctx context.Context, id int) bool {
	k := &g.keys[id-1]
	k.wmu.Lock()
	defer k.wmu.Unlock()
	k.writes++
	req := service.PutRequest{Name: fmt.Sprintf("user %d #%d", id, k.writes), Email: fmt.Sprintf("u%d.%d@example.com", id, k.writes)}
	body, _ := json.Marshal(req)
	hr, err := http.NewRequestWithContext(ctx, http.MethodPut, g.cfg.Writer+"/users/"+strconv.Itoa(id), bytes.NewReader(body))
	if err != nil {
		g.fail("PUT %d: %v", id, err)
		return false
	}
	hr.Header.Set("Content-Type", "application/json")
	resp, err := g.client.Do(hr)
	if err != nil {
		if ctx.Err() == nil {
			g.fail("PUT %d: %v", id, err)
		}
		return false
	}
	defer resp.Body.Close()
	var u service.User
	if err := decode(resp, &u); err != nil {
		g.fail("PUT %d: %v", id, err)
		return false
	}
	at := time.Now()
	if u.ID != int64(id) || u.Name != req.Name || u.Email != req.Email {
		g.wrong.Add(1)
		g.example("PUT %d answered %+v", id, u)
	}
	pending := resp.Header.Get(service.InvalidationHeader) == "pending"
	if pending {
		g.pending.Add(1)
	}
	k.record(ack{version: u.Version, at: at, name: req.Name, email: req.Email, pending: pending})
	g.writes.Add(1)
	return true
}

func (g *gen) reader(ctx context.Context, worker uint64) {
	pick := g.zipf(worker)
	r := rand.New(rand.NewPCG(worker, 7))
	pace := newPacer(g.cfg.ReadRate, g.cfg.ReadWorkers)
	for n := 1; ; n++ {
		if pace.wait(ctx); ctx.Err() != nil {
			return
		}
		base := g.cfg.Readers[r.IntN(len(g.cfg.Readers))]
		if g.cfg.BatchEvery > 0 && n%g.cfg.BatchEvery == 0 {
			ids := make([]int, g.cfg.BatchSize)
			for i := range ids {
				ids[i] = pick()
			}
			g.readMany(ctx, base, ids)
		} else {
			g.readOne(ctx, base, pick())
		}
	}
}

func (g *gen) readOne(ctx context.Context, base string, id int) {
	start := time.Now()
	resp, err := g.get(ctx, base+"/users/"+strconv.Itoa(id))
	if err != nil {
		if ctx.Err() == nil {
			g.fail("GET %d from %s: %v", id, base, err)
		}
		return
	}
	defer resp.Body.Close()
	var u *service.User
	switch resp.StatusCode {
	case http.StatusNotFound:
		_, _ = io.Copy(io.Discard, resp.Body)
	default:
		u = new(service.User)
		if err := decode(resp, u); err != nil {
			g.fail("GET %d from %s: %v", id, base, err)
			return
		}
		if u.ID != int64(id) {
			g.wrong.Add(1)
			g.example("GET %d from %s answered user %d", id, base, u.ID)
			return
		}
	}
	g.reads.Add(1)
	g.judge(id, u, start, base)
}

func (g *gen) readMany(ctx context.Context, base string, ids []int) {
	start := time.Now()
	q := make([]string, len(ids))
	for i, id := range ids {
		q[i] = strconv.Itoa(id)
	}
	resp, err := g.get(ctx, base+"/users?ids="+strings.Join(q, ","))
	if err != nil {
		if ctx.Err() == nil {
			g.fail("GET ids=%v from %s: %v", ids, base, err)
		}
		return
	}
	defer resp.Body.Close()
	var body service.UsersResponse
	if err := decode(resp, &body); err != nil {
		g.fail("GET ids=%v from %s: %v", ids, base, err)
		return
	}
	got := make(map[int]*service.User, len(body.Users))
	for i := range body.Users {
		got[int(body.Users[i].ID)] = &body.Users[i]
	}
	missing := make(map[int]bool, len(body.Missing))
	for _, id := range body.Missing {
		missing[int(id)] = true
	}
	g.reads.Add(1)
	seen := make(map[int]bool, len(ids))
	for _, id := range ids {
		if seen[id] {
			continue
		}
		seen[id] = true
		u, ok := got[id]
		if !ok && !missing[id] {
			g.wrong.Add(1)
			g.example("GET ids=%v from %s: user %d neither returned nor missing", ids, base, id)
			continue
		}
		g.judge(id, u, start, base)
	}
}

func (g *gen) judge(id int, u *service.User, start time.Time, base string) {
	g.keysRead.Add(1)
	switch v, age, why := g.keys[id-1].check(u, start, g.cfg.StaleAfter); v {
	case stale, staleUnconfirmed:
		g.stale.Add(1)
		if v == staleUnconfirmed {
			g.staleUnconfirmed.Add(1)
		}
		g.staleAge(age)
		g.exampleOf(id, "stale read of user %d from %s: %s", id, base, why)
	case lagging:
		g.lagging.Add(1)
	case wrong:
		g.wrong.Add(1)
		g.exampleOf(id, "wrong read of user %d from %s: %s", id, base, why)
	}
}

func (g *gen) get(ctx context.Context, url string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	return g.client.Do(req)
}

// decode reads a 200 response's JSON body into v, or returns an error naming the
// status and the body's start.
func decode(resp *http.Response, v any) error {
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(b))
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

func (g *gen) event(ctx context.Context, start time.Time, ev Event) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(time.Until(start.Add(ev.At))):
	}
	g.printf("  ---- %4.1fs %s\n", time.Since(start).Seconds(), ev.Name)
	if ev.Do == nil {
		return
	}
	if err := ev.Do(ctx, g.printf); err != nil {
		g.printf("  ---- %s failed: %v\n", ev.Name, err)
	}
}

// poll sums the replicas' /stats.
func (g *gen) poll(ctx context.Context, replicas []string) Totals {
	sts := make([]*service.Stats, len(replicas))
	var wg sync.WaitGroup
	for i, base := range replicas {
		wg.Go(func() {
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			resp, err := g.get(pctx, base+"/stats")
			if err != nil {
				return
			}
			defer resp.Body.Close()
			var st service.Stats
			if decode(resp, &st) == nil {
				sts[i] = &st
			}
		})
	}
	wg.Wait()
	t := Totals{Polled: true}
	for _, st := range sts {
		if st == nil {
			t.Polled = false
			continue
		}
		c := st.Cache
		t.Requests += st.Requests
		t.DBSelects += st.DB.Selects
		t.DBSelectKeys += st.DB.SelectKeys
		t.DBWrites += st.DB.Writes
		t.LocalHits += c.LocalHits
		t.LocalMisses += c.LocalMisses
		t.RemoteHits += c.RemoteHits
		t.RemoteErrors += c.RemoteErrors
		t.Loads += c.Loads
		t.LeaseWaits += c.LeaseWaits
		t.CacheDeleteErrors += st.CacheDeleteErrors
		t.WritesReplayed += c.WritesReplayed
		t.DeliveryLagMax = max(t.DeliveryLagMax, c.DeliveryLagMax)
	}
	return t
}
