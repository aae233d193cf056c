// Command demo runs the users service as a fleet on this machine and measures it:
// three throwaway redis-server processes and three usersvc replicas on free
// loopback ports, over a table of its own in PostgreSQL; the load generator writes
// through one replica and reads through the other two, printing a line per second;
// midway it kills one Redis node for a few seconds and starts it again (empty),
// so the figures show what an outage costs the database. It stops every process it
// started, by its PID, and drops its table; a Redis or service it did not start
// (the one on port 6379, say) is never touched.
//
//	cd examples/service && go run ./cmd/demo              # or ./run.sh
//	go run ./cmd/demo -duration 10s -outage 0             # shorter, no outage
//
// It exits with status 1 if a read was wrong, or stale although the write's cache
// delete had succeeded.
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tieredcache/tiered/examples/service"
	"github.com/tieredcache/tiered/examples/service/loadgen"
	"github.com/tieredcache/tiered/internal/redistest"
)

func main() {
	code, err := run()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		if code == 0 {
			code = 2
		}
	}
	os.Exit(code)
}

type flags struct {
	duration, outage, outageAt time.Duration
	replicas, nodes            int
	outageNodes                int
	dsn, usersvc               string
	keepLogs                   bool
	lg                         loadgen.Config
}

func run() (int, error) {
	var f flags
	flag.DurationVar(&f.duration, "duration", 20*time.Second, "how long the load runs, after seeding")
	flag.DurationVar(&f.outage, "outage", 4*time.Second, "how long one Redis node is down midway (0: no outage)")
	flag.DurationVar(&f.outageAt, "outage-at", 0, "when the outage starts (default: 40% into the run)")
	flag.IntVar(&f.outageNodes, "outage-nodes", 1, "how many Redis nodes the outage kills")
	flag.IntVar(&f.replicas, "replicas", 3, "service replicas (one takes the writes, the others the reads)")
	flag.IntVar(&f.nodes, "redis-nodes", 3, "Redis nodes on the ring")
	flag.StringVar(&f.dsn, "dsn", os.Getenv(service.DSNEnv), "PostgreSQL connection string ("+service.DSNEnv+"); empty: the local socket, then 127.0.0.1:5432, user postgres, database test")
	flag.StringVar(&f.usersvc, "usersvc", "", "a usersvc binary to run (default: build ./cmd/usersvc)")
	flag.BoolVar(&f.keepLogs, "keep-logs", false, "keep the replicas' logs (they are kept anyway if the run fails)")
	flag.IntVar(&f.lg.Users, "users", 1000, "user ids 1..N")
	flag.IntVar(&f.lg.ReadWorkers, "read-workers", 16, "concurrent readers")
	flag.IntVar(&f.lg.WriteWorkers, "write-workers", 2, "concurrent writers")
	flag.Float64Var(&f.lg.WriteRate, "write-rate", 100, "writes per second")
	flag.Float64Var(&f.lg.ReadRate, "read-rate", 0, "reads per second (0: as fast as the readers go)")
	flag.Parse()
	if f.replicas < 2 || f.nodes < 1 {
		return 2, errors.New("want at least 2 replicas and 1 Redis node")
	}
	if f.outageAt == 0 {
		f.outageAt = f.duration * 4 / 10
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	dir, err := os.MkdirTemp("", "usersvc-demo-")
	if err != nil {
		return 2, err
	}
	keep := f.keepLogs
	defer func() {
		if keep {
			fmt.Printf("logs kept in %s\n", dir)
		} else {
			os.RemoveAll(dir)
		}
	}()

	// The database: checked here, so that a missing PostgreSQL is one clear error
	// rather than three replicas failing.
	pool, dsn, err := service.Connect(ctx, f.dsn)
	if err != nil {
		return 2, fmt.Errorf("%w\n(point it at a server with -dsn or %s=postgres://user@host:5432/db)", err, service.DSNEnv)
	}
	defer pool.Close()
	table := "usersvc_demo_" + randomHex(4)
	store, err := service.NewStore(pool, table)
	if err != nil {
		return 2, err
	}
	// Replica 0 runs with -drop-table; this drop (IF EXISTS) covers a replica that
	// did not exit cleanly. Deferred first, so it runs after the replicas stop.
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := store.DropTable(dctx); err != nil {
			fmt.Fprintf(os.Stderr, "drop table %s: %v\n", table, err)
		}
	}()
	fmt.Printf("database  %s, table %s (dropped at the end)\n", service.RedactDSN(dsn), table)

	bin := f.usersvc
	if bin == "" {
		bin = filepath.Join(dir, "usersvc")
		if err := build(ctx, bin); err != nil {
			return 2, err
		}
	}

	// Redis: throwaway nodes on free loopback ports (never 6379), no persistence.
	var nodes []*redistest.Server
	defer func() {
		for _, n := range nodes {
			if err := n.Stop(); err != nil {
				fmt.Fprintf(os.Stderr, "stop redis %s: %v\n", n.Addr(), err)
			}
		}
	}()
	var addrs []string
	for range f.nodes {
		n, err := redistest.StartServer()
		if err != nil {
			return 2, err
		}
		nodes = append(nodes, n)
		addrs = append(addrs, n.Addr())
	}
	fmt.Printf("redis     %s (pids %s)\n", strings.Join(addrs, " "), pids(nodes))

	// The replicas. Replica 0 drops the table when it exits, and it is stopped last.
	var reps []*replica
	defer func() {
		for i := len(reps) - 1; i >= 0; i-- {
			if err := reps[i].stop(); err != nil {
				fmt.Fprintf(os.Stderr, "stop %s: %v\n", reps[i].name, err)
			}
		}
	}()
	for i := range f.replicas {
		args := []string{"-redis", strings.Join(addrs, ","), "-table", table, "-dsn", dsn}
		if i == 0 {
			args = append(args, "-drop-table")
		}
		r, err := startReplica(ctx, bin, dir, fmt.Sprintf("replica-%d", i), args)
		if err != nil {
			keep = true
			return 2, err
		}
		reps = append(reps, r)
	}
	for _, r := range reps {
		if err := r.waitReady(ctx, 30*time.Second); err != nil {
			keep = true
			return 2, err
		}
	}
	fmt.Printf("replicas  writes: %s (pid %d); reads:", reps[0].url, reps[0].cmd.Process.Pid)
	for _, r := range reps[1:] {
		fmt.Printf(" %s (pid %d)", r.url, r.cmd.Process.Pid)
	}
	fmt.Println()

	cfg := f.lg
	cfg.Writer = reps[0].url
	for _, r := range reps[1:] {
		cfg.Readers = append(cfg.Readers, r.url)
	}
	cfg.Duration = f.duration
	cfg.Out = os.Stdout
	if f.outage > 0 && f.outageNodes > 0 {
		victims := nodes[len(nodes)/2:][:1] // one node: the middle one
		if f.outageNodes > 1 {
			victims = nodes[:min(f.outageNodes, len(nodes))]
		}
		var names []string
		for _, v := range victims {
			names = append(names, v.Addr())
		}
		which := "redis " + strings.Join(names, " ")
		cfg.Events = []loadgen.Event{{
			At: f.outageAt, Name: which + " killed (SIGKILL)",
			Do: func(context.Context, func(string, ...any)) error {
				var errs []error
				for _, v := range victims {
					errs = append(errs, v.Kill())
				}
				return errors.Join(errs...)
			},
		}, {
			At: f.outageAt + f.outage, Name: which + " restarting, empty",
			Do: func(ctx context.Context, printf func(string, ...any)) error {
				for _, v := range victims {
					if err := v.Restart(); err != nil {
						return err
					}
				}
				watchRecovery(ctx, reps, names, time.Now(), printf)
				return nil
			},
		}}
	}
	fmt.Printf("load      %d readers, %d writers at %.0f writes/s, Zipf over %d users, for %v\n\n",
		cfg.ReadWorkers, cfg.WriteWorkers, cfg.WriteRate, cfg.Users, cfg.Duration)
	res, err := loadgen.Run(ctx, cfg)
	if err != nil {
		keep = true
		return 2, err
	}

	fmt.Println()
	for _, r := range reps {
		r.summarize()
	}
	// Stale reads after a write whose cache delete failed are the window a failed
	// delete allows until it is replayed (see the README); any other stale or wrong
	// read is a failure.
	if res.Stale > res.StaleUnconfirmed || res.Wrong > 0 {
		keep = true
		return 1, nil
	}
	return 0, ctx.Err()
}

// watchRecovery polls the replicas' /stats after nodes came back at since, and
// prints when each replica had its invalidation subscriptions to them confirmed,
// their breakers closed and no missed writes left for them (up to 5 s).
func watchRecovery(ctx context.Context, reps []*replica, nodes []string, since time.Time, printf func(string, ...any)) {
	type times struct{ subscribed, closed, synced time.Duration }
	seen := make([]times, len(reps))
	done := make([]bool, len(reps))
	client := &http.Client{Timeout: time.Second}
	defer client.CloseIdleConnections()
	deadline := since.Add(5 * time.Second)
	for left := len(reps); left > 0 && time.Now().Before(deadline); {
		for i, r := range reps {
			if done[i] {
				continue
			}
			resp, err := client.Get(r.url + "/stats")
			if err != nil {
				continue
			}
			var st service.Stats
			err = json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			if err != nil {
				continue
			}
			at := time.Since(since)
			subscribed, closed, synced := true, true, true
			for _, n := range st.Nodes {
				if slices.Contains(nodes, n.Name) {
					subscribed = subscribed && n.Subscribed
					closed = closed && n.Breaker == "closed"
					synced = synced && n.MissedWrites == 0
				}
			}
			t := &seen[i]
			if subscribed && t.subscribed == 0 {
				t.subscribed = at
			}
			if closed && t.closed == 0 {
				t.closed = at
			}
			if synced && t.synced == 0 {
				t.synced = at
			}
			if t.subscribed > 0 && t.closed > 0 && t.synced > 0 {
				done[i] = true
				left--
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
	show := func(d time.Duration) string {
		if d == 0 {
			return "not yet"
		}
		return "+" + d.Round(10*time.Millisecond).String()
	}
	for i, r := range reps {
		printf("  ---- %s: subscribed %s, breaker closed %s, no missed writes %s\n",
			r.name, show(seen[i].subscribed), show(seen[i].closed), show(seen[i].synced))
	}
}

// build compiles cmd/usersvc of this module into bin.
func build(ctx context.Context, bin string) error {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	data, err := os.ReadFile(gomod)
	if err != nil || !strings.Contains(string(data), "module github.com/tieredcache/tiered/examples/service\n") {
		return errors.New("run the demo from examples/service (./run.sh does), or pass -usersvc with a built binary")
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/usersvc")
	cmd.Dir = filepath.Dir(gomod)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build ./cmd/usersvc: %w", err)
	}
	return nil
}

// replica is one usersvc process this demo started.
type replica struct {
	name, url, log string
	cmd            *exec.Cmd
	exited         chan struct{} // closed once cmd has been waited for
}

// startReplica starts usersvc on a free loopback port, trying another port if the
// one picked was taken meanwhile.
func startReplica(ctx context.Context, bin, dir, name string, args []string) (*replica, error) {
	var lastErr error
	for range 3 {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		r := &replica{name: name, url: "http://" + addr, log: filepath.Join(dir, name+".log"), exited: make(chan struct{})}
		logf, err := os.Create(r.log)
		if err != nil {
			return nil, err
		}
		r.cmd = exec.Command(bin, append([]string{"-addr", addr, "-name", name}, args...)...)
		r.cmd.Stdout, r.cmd.Stderr = logf, logf
		r.cmd.SysProcAttr = sysProcAttr()
		err = r.cmd.Start()
		logf.Close() // the child has its own copy
		if err != nil {
			return nil, fmt.Errorf("start %s: %w", bin, err)
		}
		go func() {
			_ = r.cmd.Wait()
			close(r.exited)
		}()
		// Listening fails at once if the port was taken: give it a moment to say so.
		select {
		case <-r.exited:
			lastErr = fmt.Errorf("%s exited at start:\n%s", name, tail(r.log, 10))
			if strings.Contains(lastErr.Error(), "address already in use") {
				continue
			}
			return nil, lastErr
		case <-ctx.Done():
			_ = r.stop()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		return r, nil
	}
	return nil, lastErr
}

// waitReady polls /healthz until the replica reports "ok" (database and every
// Redis node answer, every invalidation subscription confirmed).
func (r *replica) waitReady(ctx context.Context, within time.Duration) error {
	deadline := time.Now().Add(within)
	client := &http.Client{Timeout: time.Second}
	defer client.CloseIdleConnections()
	last := "no answer"
	for {
		select {
		case <-r.exited:
			return fmt.Errorf("%s exited:\n%s", r.name, tail(r.log, 10))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if resp, err := client.Get(r.url + "/healthz"); err == nil {
			var h service.Health
			_ = json.NewDecoder(resp.Body).Decode(&h)
			resp.Body.Close()
			if h.Status == "ok" {
				return nil
			}
			last = fmt.Sprintf("%+v", h)
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v: %s\n%s", r.name, within, last, tail(r.log, 10))
		}
	}
}

// stop sends the replica SIGTERM (a graceful shutdown) and SIGKILL if it has not
// exited within 10 s; it only ever signals the PID it started.
func (r *replica) stop() error {
	select {
	case <-r.exited:
		return nil
	default:
	}
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-r.exited:
		return nil
	case <-time.After(10 * time.Second):
		return r.cmd.Process.Kill()
	}
}

// summarize prints how many warnings and errors the replica logged, and the first
// of each distinct error message.
func (r *replica) summarize() {
	f, err := os.Open(r.log)
	if err != nil {
		return
	}
	defer f.Close()
	var warns, errs int
	first := map[string]string{}
	var order []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.Contains(line, "level=WARN"):
			warns++
		case strings.Contains(line, "level=ERROR"):
			errs++
		default:
			continue
		}
		msg := logField(line, "msg")
		if _, ok := first[msg]; !ok {
			first[msg] = line
			order = append(order, msg)
		}
	}
	fmt.Printf("%s logged %d warnings and %d errors\n", r.name, warns, errs)
	for i, msg := range order {
		if i == 4 {
			fmt.Printf("    ... and %d other messages\n", len(order)-i)
			break
		}
		fmt.Printf("    %s\n", shorten(first[msg], 220))
	}
}

// logField returns the value of key=... in a slog text line.
func logField(line, key string) string {
	i := strings.Index(line, " "+key+"=")
	if i < 0 {
		return ""
	}
	v := line[i+len(key)+2:]
	if strings.HasPrefix(v, `"`) {
		if s, err := strconv.QuotedPrefix(v); err == nil {
			return s
		}
	}
	if j := strings.IndexByte(v, ' '); j >= 0 {
		v = v[:j]
	}
	return v
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

func tail(path string, n int) string {
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// freePort returns a loopback port that was free a moment ago (bound to :0, then
// released); never 6379.
func freePort() (int, error) {
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if port != 6379 {
			return port, nil
		}
	}
}

func pids(nodes []*redistest.Server) string {
	var s []string
	for _, n := range nodes {
		s = append(s, strconv.Itoa(n.PID()))
	}
	return strings.Join(s, " ")
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
