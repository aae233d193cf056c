package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// ErrNotInstalled is returned when redis-server (or, for clusters,
// redis-cli) is not on PATH. Its message names the install command.
var ErrNotInstalled = errors.New("redistest: redis-server not found on PATH; " +
	"install it with `apt-get install -y redis-server` (Debian/Ubuntu) or `brew install redis` (macOS)")

const (
	// startTimeout bounds how long a server may take to answer PING.
	startTimeout = 10 * time.Second
	// stopTimeout bounds the graceful SIGTERM shutdown before SIGKILL.
	stopTimeout = 5 * time.Second
	// pollInterval is the pause between readiness probes.
	pollInterval = 10 * time.Millisecond
	// startAttempts is how often StartServer retries with a new port when
	// redis-server lost the race for the one it was given.
	startAttempts = 5
	// maxClusterPort keeps the cluster bus port (port+10000) a valid port.
	maxClusterPort = 65535 - 10000
)

// Option configures StartServer and Start.
type Option func(*config)

// config collects the effect of the Options.
type config struct {
	args    []string // extra redis-server arguments
	cluster bool     // cluster-enabled node (see withCluster)
}

// WithArgs appends extra redis-server command-line arguments, for example
// WithArgs("--maxmemory", "10mb", "--maxmemory-policy", "allkeys-lru").
// They come after the harness's own flags, so they can override them.
func WithArgs(extra ...string) Option {
	return func(c *config) { c.args = append(c.args, extra...) }
}

// withCluster starts the server with cluster-enabled yes on a port whose
// cluster bus port (port+10000) is free too. Used by StartCluster.
func withCluster() Option {
	return func(c *config) { c.cluster = true }
}

// Server is one redis-server process started by this package. Its methods
// are safe for concurrent use; lifecycle operations (Pause, Resume, Kill,
// Restart, Stop) are serialised.
type Server struct {
	bin  string // path of redis-server
	port int    // fixed for the Server's lifetime, reused by Restart
	cfg  config // options the Server was created with

	mu   sync.Mutex    // protects the fields below and serialises lifecycle operations
	cmd  *exec.Cmd     // current (or last) process; never nil after StartServer
	done chan struct{} // closed by the reaper goroutine once cmd has been waited for
	dir  string        // temp dir of the current process ("" once removed by Stop)
}

// StartServer starts a redis-server on a free loopback port and waits until
// it answers PING. It does not depend on package testing. The caller must
// call Stop.
func StartServer(opts ...Option) (*Server, error) {
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, ErrNotInstalled
	}
	var errs []error
	for range startAttempts {
		port, err := freePort(cfg.cluster)
		if err != nil {
			return nil, err
		}
		s := &Server{bin: bin, port: port, cfg: cfg}
		err = s.start()
		if err == nil {
			return s, nil
		}
		errs = append(errs, err)
		if !errors.Is(err, errPortInUse) {
			break
		}
	}
	return nil, errors.Join(errs...)
}

// Start starts n servers for a test or benchmark and registers tb.Cleanup to
// Stop them. It skips nothing: if redis-server is missing it fails the test
// with ErrNotInstalled's message.
func Start(tb testing.TB, n int, opts ...Option) []*Server {
	tb.Helper()
	servers := make([]*Server, 0, n)
	for range n {
		s, err := StartServer(opts...)
		if errors.Is(err, ErrNotInstalled) {
			tb.Fatal(ErrNotInstalled.Error())
		}
		if err != nil {
			tb.Fatalf("redistest: start redis-server: %v", err)
		}
		tb.Cleanup(func() {
			if err := s.Stop(); err != nil {
				tb.Errorf("redistest: stop %s: %v", s.Addr(), err)
			}
		})
		servers = append(servers, s)
	}
	return servers
}

// Addr returns "127.0.0.1:PORT".
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// Port returns the TCP port; it does not change across Restart.
func (s *Server) Port() int { return s.port }

// PID returns the process ID of the current (or, after Kill/Stop, the last)
// redis-server process.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd.Process.Pid
}

// Pause stops the process with SIGSTOP: the node hangs with its sockets open
// and answers nothing until Resume. Stop and Kill still work on a paused
// server.
func (s *Server) Pause() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.signalLocked(sigStop)
}

// Resume continues a paused process with SIGCONT.
func (s *Server) Resume() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.signalLocked(sigCont)
}

// Kill sends SIGKILL (which also works on a paused process) and waits until
// the process has been reaped. The temp dir is kept (for the log) until Stop
// or Restart. Killing a server that is not running is a no-op.
func (s *Server) Kill() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.killLocked()
}

// Restart starts a fresh, empty redis-server on the same port, typically
// after Kill or Stop, and waits until it answers PING. A server that is still
// running (or paused) is killed first. A restarted cluster node comes back
// with an empty nodes.conf, i.e. it is no longer part of the cluster.
func (s *Server) Restart() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.killLocked(); err != nil {
		return err
	}
	if err := s.removeDirLocked(); err != nil {
		return err
	}
	return s.startLocked()
}

// Stop terminates the server gracefully (SIGCONT, then SIGTERM, then SIGKILL
// if it has not exited after a short bound), reaps it and removes its temp
// dir. It is idempotent and may be called after Kill.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.terminateLocked()
	return errors.Join(err, s.removeDirLocked())
}

// KillPubSubClients disconnects every client connected in pub/sub mode
// (CLIENT KILL TYPE pubsub), e.g. to test how subscribers recover.
func (s *Server) KillPubSubClients(ctx context.Context) error {
	_, err := s.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub")
	return err
}

// Do runs one command on a fresh, short-lived go-redis connection to this
// node and returns the reply (RESP2, so string, int64, []any; a nil reply
// is returned as redis.Nil). It has no retries and honours ctx's deadline.
// On a cluster node, MOVED redirects are returned as errors, not followed.
func (s *Server) Do(ctx context.Context, args ...any) (any, error) {
	// Dial here rather than in the go-redis pool: a failed pool dial starts
	// a retry goroutine that outlives Close by up to a second (and logs),
	// which would trip goleak in tests that Do against a killed node.
	d := net.Dialer{Timeout: 5 * time.Second} // ctx may shorten it
	conn, err := d.DialContext(ctx, "tcp", s.Addr())
	if err != nil {
		return nil, err
	}
	var used sync.Once // hand conn to the pool at most once
	c := redis.NewClient(&redis.Options{
		Addr: s.Addr(),
		Dialer: func(context.Context, string, string) (net.Conn, error) {
			var handed net.Conn
			used.Do(func() { handed = conn })
			if handed == nil {
				return nil, errors.New("redistest: Do needs a single connection")
			}
			return handed, nil
		},
		Protocol:              2,
		PoolSize:              1,
		MaxRetries:            -1,
		DialerRetries:         1,
		ContextTimeoutEnabled: true,
		DisableIdentity:       true,
		MaintNotificationsConfig: &maintnotifications.Config{
			Mode: maintnotifications.ModeDisabled,
		},
	})
	defer func() {
		_ = c.Close()
		used.Do(func() { _ = conn.Close() }) // the pool never took it
	}()
	return c.Do(ctx, args...).Result()
}

// errPortInUse marks a start failure caused by losing the race for a port.
var errPortInUse = errors.New("address already in use")

// start launches the first process of a new Server.
func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.startLocked()
}

// startLocked creates a temp dir, launches redis-server on s.port and waits
// until it answers PING. On failure the process is killed and the temp dir
// removed. s.mu must be held and no process may be running.
func (s *Server) startLocked() error {
	dir, err := os.MkdirTemp("", "redistest-"+strconv.Itoa(s.port)+"-")
	if err != nil {
		return fmt.Errorf("redistest: %w", err)
	}
	args := []string{
		"--port", strconv.Itoa(s.port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--daemonize", "no",
		"--dir", dir,
		"--logfile", filepath.Join(dir, "redis.log"),
		"--protected-mode", "no",
	}
	if s.cfg.cluster {
		args = append(args,
			"--cluster-enabled", "yes",
			"--cluster-config-file", filepath.Join(dir, "nodes.conf"),
			"--cluster-node-timeout", "2000",
		)
	}
	args = append(args, s.cfg.args...)

	// Errors before the log file is opened (bad arguments) go to stdio.
	stdio, err := os.Create(filepath.Join(dir, "stdio.log"))
	if err != nil {
		os.RemoveAll(dir)
		return fmt.Errorf("redistest: %w", err)
	}
	defer stdio.Close() // the child has its own copy
	cmd := exec.Command(s.bin, args...)
	cmd.Dir = dir
	cmd.Stdout = stdio
	cmd.Stderr = stdio
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return fmt.Errorf("redistest: start %s: %w", s.bin, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait() // reap; the exit status is of no interest
		close(done)
	}()
	s.cmd, s.done, s.dir = cmd, done, dir

	if err := s.waitReadyLocked(); err != nil {
		_ = s.killLocked()
		_ = s.removeDirLocked()
		return err
	}
	return nil
}

// waitReadyLocked polls PING until the server answers, verifying via INFO
// that the answer comes from our process and not from a stranger that took
// the port. On failure the error includes the tail of the server's logs.
func (s *Server) waitReadyLocked() error {
	deadline := time.Now().Add(startTimeout)
	timer := time.NewTimer(0)
	defer timer.Stop()
	var lastErr error
	for {
		select {
		case <-s.done:
			logs := s.logTailLocked()
			err := fmt.Errorf("redistest: redis-server on port %d exited during startup\n%s", s.port, logs)
			if strings.Contains(logs, "Address already in use") {
				err = fmt.Errorf("%w: %w", errPortInUse, err)
			}
			return err
		case <-timer.C:
		}
		if lastErr = s.probeReady(); lastErr == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redistest: redis-server on port %d not ready after %v: %v\n%s",
				s.port, startTimeout, lastErr, s.logTailLocked())
		}
		timer.Reset(pollInterval)
	}
}

// probeReady checks that PING works and INFO reports our PID.
func (s *Server) probeReady() error {
	p, err := dialProbe(s.Addr(), time.Second)
	if err != nil {
		return err
	}
	defer p.Close()
	if pong, err := p.do("PING"); err != nil {
		return err
	} else if pong != "PONG" {
		return fmt.Errorf("unexpected PING reply %q", pong)
	}
	info, err := p.do("INFO", "server")
	if err != nil {
		return err
	}
	if pid := infoField(info, "process_id"); pid != strconv.Itoa(s.cmd.Process.Pid) {
		return fmt.Errorf("port %d is served by another process (pid %s)", s.port, pid)
	}
	return nil
}

// signalLocked sends sig to the running process.
func (s *Server) signalLocked(sig os.Signal) error {
	if s.exitedLocked() {
		return fmt.Errorf("redistest: redis-server on port %d is not running", s.port)
	}
	if err := s.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("redistest: signal %v to pid %d: %w", sig, s.cmd.Process.Pid, err)
	}
	return nil
}

// killLocked sends SIGKILL and waits for the reaper.
func (s *Server) killLocked() error {
	if s.exitedLocked() {
		return nil
	}
	if err := s.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("redistest: kill pid %d: %w", s.cmd.Process.Pid, err)
	}
	<-s.done
	return nil
}

// terminateLocked stops the process gracefully, falling back to SIGKILL.
func (s *Server) terminateLocked() error {
	if s.exitedLocked() {
		return nil
	}
	// A SIGSTOPped process does not act on SIGTERM until it is continued.
	_ = s.cmd.Process.Signal(sigCont)
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return s.killLocked() // e.g. no SIGTERM on this OS
	}
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-s.done:
		return nil
	case <-timer.C:
		return s.killLocked()
	}
}

// exitedLocked reports whether the process has been reaped.
func (s *Server) exitedLocked() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// removeDirLocked removes the temp dir of the last process, if any.
func (s *Server) removeDirLocked() error {
	if s.dir == "" {
		return nil
	}
	err := os.RemoveAll(s.dir)
	s.dir = ""
	return err
}

// logTailLocked returns the last lines of the server's log files.
func (s *Server) logTailLocked() string {
	var b strings.Builder
	for _, name := range []string{"stdio.log", "redis.log"} {
		data, err := os.ReadFile(filepath.Join(s.dir, name))
		if err != nil || len(data) == 0 {
			continue
		}
		fmt.Fprintf(&b, "--- tail of %s ---\n%s\n", name, tail(string(data), 20))
	}
	return b.String()
}

// tail returns the last n lines of text.
func tail(text string, n int) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// portsMu protects usedPorts.
var portsMu sync.Mutex

// usedPorts holds every port (and cluster bus port) handed out by this
// process, so concurrent StartServer calls never pick the same one; the
// default Redis ports are in it from the start so they are never used.
var usedPorts = map[int]bool{6379: true, 16379: true}

// freePort returns a loopback port that was free a moment ago: bind
// 127.0.0.1:0, read the port, close. For cluster nodes the port must be
// at most maxClusterPort and port+10000 must be free as well.
func freePort(cluster bool) (int, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 200 {
		port, err := bindAndRelease(0)
		if err != nil {
			return 0, err
		}
		if usedPorts[port] {
			continue
		}
		if cluster {
			if port > maxClusterPort || usedPorts[port+10000] {
				continue
			}
			if _, err := bindAndRelease(port + 10000); err != nil {
				continue
			}
			usedPorts[port+10000] = true
		}
		usedPorts[port] = true
		return port, nil
	}
	return 0, errors.New("redistest: no free loopback port found")
}

// bindAndRelease listens on 127.0.0.1:port, closes the listener and returns
// the port that was bound.
func bindAndRelease(port int) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return 0, fmt.Errorf("redistest: find free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
