package tiered

// One flight per key (flight.go): Get, GetMany and refresh-ahead join the same flight,
// so the Loader contract (one load per key at a time in a process, one in the fleet
// with leases) holds whichever entry point asked; and a batch fill is fenced by its
// leases like a Get's (invariant C3: a value loaded before a Delete is never written
// to Redis after it).

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tieredcache/tiered/internal/redistest"
)

// countingLoads counts loads per key, from a Loader and from a BatchLoader.
type countingLoads struct {
	mu      sync.Mutex
	perKey  map[string]int
	batches int
	gate    chan struct{} // loads wait for it to close, if set
}

func (l *countingLoads) count(keys ...string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.perKey == nil {
		l.perKey = make(map[string]int)
	}
	for _, k := range keys {
		l.perKey[k]++
	}
}

func (l *countingLoads) wait(ctx context.Context) error {
	if l.gate == nil {
		return nil
	}
	select {
	case <-l.gate:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l *countingLoads) Load(ctx context.Context, key string) (string, error) {
	l.count(key)
	if err := l.wait(ctx); err != nil {
		return "", err
	}
	return "v:" + key, nil
}

func (l *countingLoads) LoadMany(ctx context.Context, keys []string) (map[string]string, error) {
	l.count(keys...)
	l.mu.Lock()
	l.batches++
	l.mu.Unlock()
	if err := l.wait(ctx); err != nil {
		return nil, err
	}
	m := make(map[string]string, len(keys))
	for _, k := range keys {
		m[k] = "v:" + k
	}
	return m, nil
}

// check fails the test unless every key of keys was loaded exactly once.
func (l *countingLoads) check(t *testing.T, keys []string) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	total := 0
	for _, k := range keys {
		if n := l.perKey[k]; n != 1 {
			t.Errorf("key %s loaded %d times, want 1", k, n)
		}
		total += l.perKey[k]
	}
	t.Logf("%d keys, %d loads, %d batch calls", len(keys), total, l.batches)
}

func coldKeys(prefix string, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("%s:%d", prefix, i)
	}
	return keys
}

// Concurrent Get and GetMany of N cold keys in one process: N loads, whether the
// loads go through the Loader or the BatchLoader. 8 goroutines start together, half
// calling GetMany of all the keys and half Get of each key; the loads are held until
// every goroutine has asked, so that every flight is joined while it runs.
func TestGetAndGetManyShareFlights(t *testing.T) {
	servers := redistest.Start(t, 3)
	for _, batch := range []bool{false, true} {
		t.Run(fmt.Sprintf("batch=%v", batch), func(t *testing.T) {
			const n, goroutines = 20, 8
			loads := &countingLoads{gate: make(chan struct{})}
			o := ringOpts[string](t, servers)
			o.Loader = loads
			o.LoadConcurrency = n // every key's load can start while the gate is shut
			if batch {
				o.BatchLoader = loads
			}
			c := newCache(t, o)
			keys := coldKeys("cold", n)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()

			var asked atomic.Int64 // calls that have started
			var wg sync.WaitGroup
			errs := make(chan error, goroutines*n)
			start := make(chan struct{})
			for g := range goroutines {
				wg.Go(func() {
					<-start
					if g%2 == 0 {
						asked.Add(1)
						m, err := c.GetMany(ctx, keys)
						if err != nil || len(m) != n {
							errs <- fmt.Errorf("GetMany = %d values, %v", len(m), err)
						}
						for k, v := range m {
							if v != "v:"+k {
								errs <- fmt.Errorf("GetMany[%s] = %q", k, v)
							}
						}
						return
					}
					var kwg sync.WaitGroup
					for _, k := range keys {
						kwg.Go(func() {
							asked.Add(1)
							if v, err := c.Get(ctx, k); err != nil || v != "v:"+k {
								errs <- fmt.Errorf("Get(%s) = %q, %v", k, v, err)
							}
						})
					}
					kwg.Wait()
				})
			}
			close(start)
			// Release the loads once every call has asked and every key's load
			// has started (the leaders' reads are done by then).
			waitFor(t, "every call to ask and every key to start loading", func() bool {
				loads.mu.Lock()
				defer loads.mu.Unlock()
				return asked.Load() == goroutines/2*(1+n) && len(loads.perKey) == n
			})
			close(loads.gate)
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			loads.check(t, keys)
		})
	}
}

// C3 for batches: a Delete while a GetMany's BatchLoader runs keeps the batch's
// values out of Redis, so a replica that starts afterwards reads the source's new
// state, not the deleted one. 5 rounds.
func TestGetManyDeleteDuringBatchLoad(t *testing.T) {
	servers := redistest.Start(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for round := range 5 {
		var mu sync.Mutex
		db := map[string]string{}
		keys := coldKeys(fmt.Sprint("row", round), 10)
		for _, k := range keys {
			db[k] = "old"
		}
		read := make(chan struct{})    // the batch has read the old rows
		release := make(chan struct{}) // the delete is done
		batch := BatchLoaderFunc[string](func(ctx context.Context, ks []string) (map[string]string, error) {
			mu.Lock()
			m := make(map[string]string)
			for _, k := range ks {
				if v, ok := db[k]; ok {
					m[k] = v
				}
			}
			mu.Unlock()
			close(read)
			<-release
			return m, nil
		})
		o := ringOpts[string](t, servers)
		o.BatchLoader = batch
		a := newCache(t, o)
		done := make(chan error, 1)
		go func() {
			m, err := a.GetMany(ctx, keys)
			if err == nil && len(m) != len(keys) {
				err = fmt.Errorf("GetMany = %d values, want %d (the old ones)", len(m), len(keys))
			}
			done <- err
		}()
		<-read
		// The rows change at the source, then the writer deletes the keys.
		mu.Lock()
		for _, k := range keys {
			db[k] = "new"
		}
		mu.Unlock()
		w := newCache(t, ringOpts[string](t, servers))
		if err := w.Delete(ctx, keys...); err != nil {
			t.Fatal(err)
		}
		close(release)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		waitSettled(t, a) // the batch's fills, and LeasesLost, follow its return
		// A replica started now must load the new rows: nothing old is in Redis.
		o2 := ringOpts[string](t, servers)
		o2.Loader = LoaderFunc[string](func(_ context.Context, k string) (string, error) {
			mu.Lock()
			defer mu.Unlock()
			return db[k], nil
		})
		b := newCache(t, o2)
		m, err := b.GetMany(ctx, keys)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			if m[k] != "new" {
				t.Errorf("round %d: a replica started after the Delete read %s = %q, want \"new\"", round, k, m[k])
			}
		}
		if st := a.Stats(); st.LeasesLost != uint64(len(keys)) {
			t.Errorf("round %d: LeasesLost = %d, want %d (every fill refused)", round, st.LeasesLost, len(keys))
		}
	}
}

// A cold key asked by GetMany while a Get of it is loading joins the Get's load.
func TestGetManyJoinsRunningGet(t *testing.T) {
	servers := redistest.Start(t, 3)
	loads := &countingLoads{gate: make(chan struct{})}
	o := ringOpts[string](t, servers)
	o.Loader = loads
	c := newCache(t, o)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	got := make(chan error, 1)
	go func() {
		v, err := c.Get(ctx, "k")
		if err == nil && v != "v:k" {
			err = fmt.Errorf("Get = %q", v)
		}
		got <- err
	}()
	waitFor(t, "the Get's load to start", func() bool {
		loads.mu.Lock()
		defer loads.mu.Unlock()
		return loads.perKey["k"] == 1
	})
	many := make(chan error, 1)
	go func() {
		m, err := c.GetMany(ctx, []string{"k", "other"})
		if err == nil && (m["k"] != "v:k" || m["other"] != "v:other") {
			err = fmt.Errorf("GetMany = %v", m)
		}
		many <- err
	}()
	waitFor(t, "GetMany's own key to start loading", func() bool {
		loads.mu.Lock()
		defer loads.mu.Unlock()
		return loads.perKey["other"] == 1
	})
	close(loads.gate)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if err := <-many; err != nil {
		t.Fatal(err)
	}
	loads.check(t, []string{"k", "other"})
}

// Across processes: 2 and 4 OS processes GetMany the same 30 cold keys at once, with a
// BatchLoader and with a per-key Loader: each key is loaded once in the fleet (the
// batches take the keys' leases, and wait for the keys other processes hold).
func TestMultiProcessGetManyOneLoadPerKey(t *testing.T) {
	servers := redistest.Start(t, 4) // 3 ring nodes and the "database"
	var addrs []string
	for _, s := range servers[:3] {
		addrs = append(addrs, s.Addr())
	}
	db := redis.NewClient(&redis.Options{Addr: servers[3].Addr(), ContextTimeoutEnabled: true})
	defer db.Close()
	for _, procs := range []int{2, 4} {
		for _, batch := range []bool{true, false} {
			t.Run(fmt.Sprintf("procs=%d/batch=%v", procs, batch), func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				ns := fmt.Sprintf("gm%d%v", procs, batch)
				var cmds []*exec.Cmd
				var outs []fmt.Stringer
				for range procs {
					cmd, out := startChild(t, ctx, "getmany",
						envNodes+"="+strings.Join(addrs, ","), envDB+"="+servers[3].Addr(), envNS+"="+ns,
						envBatch+"="+strconv.FormatBool(batch), envProcs+"="+strconv.Itoa(procs))
					cmds, outs = append(cmds, cmd), append(outs, out)
				}
				for i, cmd := range cmds {
					if err := cmd.Wait(); err != nil {
						t.Fatalf("child %d: %v\n%s", i, err, outs[i])
					}
				}
				loads := 0
				for _, k := range coldKeys("cold", getManyKeys) {
					n, err := db.Get(ctx, ns+":loads:"+k).Int()
					if err != nil {
						t.Fatalf("loads of %s: %v", k, err)
					}
					if n != 1 {
						t.Errorf("key %s loaded %d times in the fleet, want 1", k, n)
					}
					loads += n
				}
				t.Logf("%d processes: %d keys, %d loads in the fleet", procs, getManyKeys, loads)
			})
		}
	}
}

const (
	getManyKeys = 30
	envBatch    = "TIERED_GETMANY_BATCH" // "true": the child loads with a BatchLoader
	envProcs    = "TIERED_GETMANY_PROCS" // how many children run together
)

// getManyChild waits until every process of its run is ready, then GetMany's the cold
// keys; its loads count each key in the database.
func getManyChild() error {
	ns := os.Getenv(envNS)
	batch, _ := strconv.ParseBool(os.Getenv(envBatch))
	procs, err := strconv.Atoi(os.Getenv(envProcs))
	if err != nil {
		return fmt.Errorf("%s: %w", envProcs, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db := redis.NewClient(&redis.Options{Addr: os.Getenv(envDB), ContextTimeoutEnabled: true})
	defer db.Close()
	count := func(ctx context.Context, keys ...string) error {
		_, err := db.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, k := range keys {
				p.Incr(ctx, ns+":loads:"+k)
			}
			return nil
		})
		return err
	}
	var nodes []Node
	for i, addr := range strings.Split(os.Getenv(envNodes), ",") {
		cl := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true, MaxRetries: -1})
		defer cl.Close()
		nodes = append(nodes, Node{Name: fmt.Sprintf("node-%d", i), Client: cl})
	}
	o := Options[string]{Nodes: nodes, Namespace: ns, Timeout: 2 * time.Second, LeaseTTL: 5 * time.Second}
	if batch {
		o.BatchLoader = BatchLoaderFunc[string](func(ctx context.Context, keys []string) (map[string]string, error) {
			if err := count(ctx, keys...); err != nil {
				return nil, err
			}
			m := make(map[string]string, len(keys))
			for _, k := range keys {
				m[k] = "v:" + k
			}
			return m, nil
		})
	} else {
		o.Loader = LoaderFunc[string](func(ctx context.Context, key string) (string, error) {
			if err := count(ctx, key); err != nil {
				return "", err
			}
			return "v:" + key, nil
		})
	}
	c, err := New(o)
	if err != nil {
		return err
	}
	defer c.Close()
	// A barrier: every process counts itself in, then waits for the others.
	if err := db.Incr(ctx, ns+":ready").Err(); err != nil {
		return err
	}
	for {
		ready, err := db.Get(ctx, ns+":ready").Int()
		if err != nil {
			return err
		}
		if ready >= procs {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Microsecond): // poll interval
		}
	}
	keys := coldKeys("cold", getManyKeys)
	m, err := c.GetMany(ctx, keys)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if m[k] != "v:"+k {
			return fmt.Errorf("GetMany[%s] = %q", k, m[k])
		}
	}
	return nil
}

// Close ends the flights in progress: the callers waiting on them return ErrClosed at
// once, while their load is still running (Close waits for the load, not they), and a
// load that ends after Close leaves their outcome alone.
func TestCloseEndsWaitingCalls(t *testing.T) {
	for _, mode := range []string{"ring", "local-only"} {
		t.Run(mode, func(t *testing.T) {
			var o Options[string]
			if mode == "ring" {
				o = ringOpts[string](t, redistest.Start(t, 1))
			}
			started, release := make(chan struct{}), make(chan struct{})
			var loads atomic.Int32
			o.Loader = LoaderFunc[string](func(context.Context, string) (string, error) {
				if loads.Add(1) == 1 {
					close(started)
				}
				<-release // deaf to its ctx: it ends when the test says so
				return "v", nil
			})
			c, err := New(o)
			if err != nil {
				t.Fatal(err)
			}
			const callers = 20
			errs := make(chan error, callers+1)
			var wg sync.WaitGroup
			for range callers {
				wg.Go(func() {
					_, err := c.Get(context.Background(), "k")
					errs <- err
				})
			}
			wg.Go(func() {
				_, err := c.GetMany(context.Background(), []string{"k"})
				errs <- err
			})
			<-started
			closed := make(chan error, 1)
			go func() { closed <- c.Close() }()
			for range callers + 1 {
				select {
				case err := <-errs:
					if !errors.Is(err, ErrClosed) {
						t.Errorf("a call waiting on the load when Close began = %v, want ErrClosed", err)
					}
				case <-time.After(waitForWithin):
					t.Fatal("calls waiting on a running load did not return at Close")
				}
			}
			select {
			case err := <-closed:
				t.Fatalf("Close returned (%v) before the load ended", err)
			default:
			}
			close(release)
			if err := <-closed; err != nil {
				t.Fatal(err)
			}
			wg.Wait()
			if n := loads.Load(); n != 1 {
				t.Errorf("%d loads, want 1", n)
			}
			if _, err := c.Get(context.Background(), "k"); !errors.Is(err, ErrClosed) {
				t.Errorf("Get after Close = %v, want ErrClosed", err)
			}
		})
	}
}
