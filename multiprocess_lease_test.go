package tiered

// Leases across OS processes (C3, no stale set in Redis after a write, and C6, one
// Loader call per stampede across processes): 4 processes x 250 goroutines
// stampede one cold key per round, and a lease holder killed mid-load. The children
// are this test binary re-executed (see runChild); Redis coordinates them.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tieredcache/tiered/internal/redistest"
)

const (
	envLeaseRounds = "TIERED_LEASE_ROUNDS"
	envLeaseGs     = "TIERED_LEASE_GOROUTINES"
	envLeaseTTL    = "TIERED_LEASE_TTL"
)

// leaseChildCache is a child's Cache on the ring in envNodes, whose Loader counts its
// calls in the "database" (envDB) and takes hold to answer.
func leaseChildCache(leaseTTL time.Duration, load func(ctx context.Context, db *redis.Client, key string) (string, error)) (*Cache[string], *redis.Client, func(), error) {
	nodes, clients := ringNodes(strings.Split(os.Getenv(envNodes), ","))
	closeAll := func() {
		for _, cl := range clients {
			cl.Close()
		}
	}
	db := redis.NewClient(&redis.Options{Addr: os.Getenv(envDB), ContextTimeoutEnabled: true})
	clients = append(clients, db)
	c, err := New(Options[string]{
		Nodes: nodes, Namespace: os.Getenv(envNS), Timeout: 2 * time.Second, LeaseTTL: leaseTTL,
		Loader: LoaderFunc[string](func(ctx context.Context, key string) (string, error) { return load(ctx, db, key) }),
	})
	if err != nil {
		closeAll()
		return nil, nil, nil, err
	}
	return c, db, func() { c.Close(); closeAll() }, nil
}

// waitKey polls the database until key exists.
func waitKey(ctx context.Context, db *redis.Client, key string) error {
	for {
		n, err := db.Exists(ctx, key).Result()
		if err != nil || n == 1 {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Microsecond): // poll interval
		}
	}
}

// stampedeChild: per round r, report ready, wait for "go:r", run the goroutines' Gets
// of "cold:r" at once, report done.
func stampedeChild() error {
	rounds, _ := strconv.Atoi(os.Getenv(envLeaseRounds))
	gs, _ := strconv.Atoi(os.Getenv(envLeaseGs))
	c, db, closeAll, err := leaseChildCache(5*time.Second, func(ctx context.Context, db *redis.Client, key string) (string, error) {
		if err := db.Incr(ctx, "loads:"+key).Err(); err != nil {
			return "", err
		}
		time.Sleep(20 * time.Millisecond) // a database query
		return "v:" + key, nil
	})
	if err != nil {
		return err
	}
	defer closeAll()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for r := range rounds {
		if err := db.Incr(ctx, fmt.Sprint("ready:", r)).Err(); err != nil {
			return err
		}
		if err := waitKey(ctx, db, fmt.Sprint("go:", r)); err != nil {
			return err
		}
		key := fmt.Sprint("cold:", r)
		var wg sync.WaitGroup
		errs := make(chan error, gs)
		for range gs {
			wg.Go(func() {
				if v, err := c.Get(ctx, key); err != nil || v != "v:"+key {
					errs <- fmt.Errorf("Get(%s) = %q, %v", key, v, err)
				}
			})
		}
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			return err
		}
		if err := db.Incr(ctx, fmt.Sprint("done:", r)).Err(); err != nil {
			return err
		}
	}
	return nil
}

// leaseHolderChild takes the lease of "k" (its Get misses everywhere) and hangs in
// its Loader until it is killed.
func leaseHolderChild() error {
	ttl, err := time.ParseDuration(os.Getenv(envLeaseTTL))
	if err != nil {
		return err
	}
	c, _, closeAll, err := leaseChildCache(ttl, func(ctx context.Context, db *redis.Client, key string) (string, error) {
		if err := db.Set(ctx, "holder:loading", "1", 0).Err(); err != nil {
			return "", err
		}
		select {} // hang, holding the lease, until killed
	})
	if err != nil {
		return err
	}
	defer closeAll()
	_, err = c.Get(context.Background(), "k")
	return err
}

func startChild(t *testing.T, ctx context.Context, role string, env ...string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append(env, envRole+"="+role, "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, &out
}

// C6 (stampede) across processes: 4 OS processes x 250 goroutines Get one cold key at once,
// 20 rounds; the lease lets one Loader call per round through.
func TestMultiProcessStampede(t *testing.T) {
	const procs, goroutines, rounds = 4, 250, 20
	servers := redistest.Start(t, 4) // 3 ring nodes and the "database"
	var addrs []string
	for _, s := range servers[:3] {
		addrs = append(addrs, s.Addr())
	}
	db := redis.NewClient(&redis.Options{Addr: servers[3].Addr(), ContextTimeoutEnabled: true})
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var cmds []*exec.Cmd
	var outs []*bytes.Buffer
	for range procs {
		cmd, out := startChild(t, ctx, "stampede",
			envNodes+"="+strings.Join(addrs, ","), envDB+"="+servers[3].Addr(), envNS+"=stampede",
			envLeaseRounds+"="+strconv.Itoa(rounds), envLeaseGs+"="+strconv.Itoa(goroutines))
		cmds, outs = append(cmds, cmd), append(outs, out)
	}
	waitCount := func(key string) {
		t.Helper()
		for {
			n, err := db.Get(ctx, key).Int()
			if err == nil && n == procs {
				return
			}
			if err != nil && !errors.Is(err, redis.Nil) || ctx.Err() != nil {
				for i, out := range outs {
					t.Logf("child %d: %s", i, out)
				}
				t.Fatalf("waiting for %s: %v %v", key, err, ctx.Err())
			}
			time.Sleep(time.Millisecond) // poll interval
		}
	}
	perRound := make([]int, rounds)
	total := 0
	for r := range rounds {
		waitCount(fmt.Sprint("ready:", r))
		if err := db.Set(ctx, fmt.Sprint("go:", r), "1", 0).Err(); err != nil {
			t.Fatal(err)
		}
		waitCount(fmt.Sprint("done:", r))
		n, err := db.Get(ctx, fmt.Sprint("loads:cold:", r)).Int()
		if err != nil {
			t.Fatal(err)
		}
		perRound[r], total = n, total+n
	}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("child %d: %v\n%s", i, err, outs[i])
		}
	}
	t.Logf("%d processes x %d goroutines, %d rounds: loader calls per round %v (total %d)", procs, goroutines, rounds, perRound, total)
	if total != rounds {
		t.Fatalf("%d loader calls over %d rounds, want 1 per round", total, rounds)
	}
}

// Liveness of the lease behind C3 (no stale set) and C6 (stampede): a lease holder killed mid-load delays the others by at most the
// lease TTL; then one of them takes the lease over and loads.
func TestLeaseHolderProcessKilled(t *testing.T) {
	const leaseTTL = time.Second
	servers := redistest.Start(t, 4)
	var addrs []string
	for _, s := range servers[:3] {
		addrs = append(addrs, s.Addr())
	}
	db := redis.NewClient(&redis.Options{Addr: servers[3].Addr(), ContextTimeoutEnabled: true})
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	o := ringOpts[string](t, servers[:3])
	o.Namespace = "holder"
	o.LeaseTTL = leaseTTL
	o.Loader = LoaderFunc[string](func(context.Context, string) (string, error) { return "loaded", nil })
	c := newCache(t, o)
	cmd, out := startChild(t, ctx, "lease-holder",
		envNodes+"="+strings.Join(addrs, ","), envDB+"="+servers[3].Addr(), envNS+"=holder",
		envLeaseTTL+"="+leaseTTL.String())
	if err := waitKey(ctx, db, "holder:loading"); err != nil {
		t.Fatalf("the holder never started loading: %v\n%s", err, out)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	killed := time.Now()

	v, err := c.Get(ctx, "k")
	took := time.Since(killed)
	if err != nil || v != "loaded" {
		t.Fatalf("Get = %q, %v", v, err)
	}
	bound := leaseTTL + leasePollMax + 500*time.Millisecond // scheduling margin: -race on a loaded 2-core machine
	t.Logf("loaded %v after the holder was killed (lease TTL %v); stats %+v", took, leaseTTL, c.Stats())
	if took > bound {
		t.Fatalf("waited %v behind a dead holder, bound %v", took, bound)
	}
	if s := c.Stats(); s.LeaseWaits != 1 || s.LeaseTimeouts != 0 {
		t.Fatalf("stats = %+v: want one wait ending with the lease taken over", s)
	}
}
