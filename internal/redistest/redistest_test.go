//go:build unix

package redistest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// newClient returns a go-redis client for s without retries, so failures
// surface immediately. The caller must Close it.
func newClient(s *Server, protocol int, readTimeout time.Duration) *redis.Client {
	return redis.NewClient(&redis.Options{
		Addr:            s.Addr(),
		Protocol:        protocol,
		MaxRetries:      -1,
		DialerRetries:   1,
		ReadTimeout:     readTimeout,
		DisableIdentity: true,
		MaintNotificationsConfig: &maintnotifications.Config{
			Mode: maintnotifications.ModeDisabled,
		},
	})
}

// eventually polls cond every 10ms until it returns nil or the deadline
// passes, then fails with cond's last error.
func eventually(t *testing.T, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %v: %v", timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// assertGone checks that no process with pid exists any more.
func assertGone(t *testing.T, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("pid %d: kill(pid, 0) = %v, want ESRCH", pid, err)
	}
}

func TestStartTwoServers(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	servers := Start(t, 2)
	if servers[0].Port() == servers[1].Port() {
		t.Fatalf("both servers on port %d", servers[0].Port())
	}
	for _, s := range servers {
		if want := fmt.Sprintf("127.0.0.1:%d", s.Port()); s.Addr() != want {
			t.Errorf("Addr() = %q, want %q", s.Addr(), want)
		}
		if s.Port() == 6379 {
			t.Errorf("server uses the default port 6379")
		}
		got, err := s.Do(ctx, "PING")
		if err != nil || got != "PONG" {
			t.Errorf("%s: PING = %v, %v; want PONG", s.Addr(), got, err)
		}
		// No persistence.
		for param, want := range map[string]string{"save": "", "appendonly": "no", "bind": "127.0.0.1"} {
			got, err := s.Do(ctx, "CONFIG", "GET", param)
			if err != nil {
				t.Fatalf("CONFIG GET %s: %v", param, err)
			}
			if kv, _ := got.([]any); len(kv) != 2 || kv[1] != want {
				t.Errorf("%s: CONFIG GET %s = %v, want %q", s.Addr(), param, got, want)
			}
		}
	}
}

func TestStopIsIdempotentAndReaps(t *testing.T) {
	t.Parallel()
	s, err := StartServer()
	if err != nil {
		t.Fatal(err)
	}
	pid := s.PID()
	s.mu.Lock()
	dir := s.dir
	s.mu.Unlock()
	if err := s.Pause(); err != nil { // Stop must cope with a stopped process
		t.Fatal(err)
	}
	start := time.Now()
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Stop of a paused server took %v; SIGCONT missing?", d)
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	assertGone(t, pid)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("temp dir %s still exists after Stop: %v", dir, err)
	}
}

func TestPauseResume(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := Start(t, 1)[0]
	c := newClient(s, 3, 200*time.Millisecond)
	defer c.Close()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING before Pause: %v", err)
	}

	if err := s.Pause(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err := c.Ping(ctx).Err()
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("PING on paused server = %v, want a timeout", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("PING on paused server took %v, want about 200ms", d)
	}

	if err := s.Resume(); err != nil {
		t.Fatal(err)
	}
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING after Resume: %v", err)
	}
}

func TestKillRestart(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := Start(t, 1)[0]
	port, pid := s.Port(), s.PID()
	if _, err := s.Do(ctx, "SET", "k", "v"); err != nil {
		t.Fatal(err)
	}

	if err := s.Kill(); err != nil {
		t.Fatal(err)
	}
	assertGone(t, pid)
	if _, err := s.Do(ctx, "PING"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("PING after Kill = %v, want connection refused", err)
	}
	if err := s.Kill(); err != nil {
		t.Fatalf("second Kill: %v", err)
	}
	if err := s.Pause(); err == nil {
		t.Error("Pause of a killed server succeeded")
	}

	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	if s.Port() != port {
		t.Fatalf("Restart changed the port from %d to %d", port, s.Port())
	}
	if s.PID() == pid {
		t.Fatalf("Restart kept pid %d", pid)
	}
	if got, err := s.Do(ctx, "PING"); err != nil || got != "PONG" {
		t.Fatalf("PING after Restart = %v, %v", got, err)
	}
	if got, err := s.Do(ctx, "GET", "k"); !errors.Is(err, redis.Nil) {
		t.Fatalf("GET k after Restart = %v, %v; want redis.Nil (fresh server)", got, err)
	}

	// Restart after Stop works too, and a running server is replaced.
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := s.Restart(); err != nil {
		t.Fatalf("Restart after Stop: %v", err)
	}
	pid = s.PID()
	if err := s.Restart(); err != nil {
		t.Fatalf("Restart of a running server: %v", err)
	}
	assertGone(t, pid)
	if got, err := s.Do(ctx, "PING"); err != nil || got != "PONG" {
		t.Fatalf("PING after second Restart = %v, %v", got, err)
	}
}

func TestKillPubSubClients(t *testing.T) {
	t.Parallel()
	s := Start(t, 1)[0]
	for _, protocol := range []int{2, 3} {
		t.Run(fmt.Sprintf("RESP%d", protocol), func(t *testing.T) {
			ctx := t.Context()
			c := newClient(s, protocol, 5*time.Second)
			defer c.Close()
			ps := c.Subscribe(ctx, "invalidate")
			defer ps.Close()
			if _, err := ps.Receive(ctx); err != nil { // subscription confirmation
				t.Fatal(err)
			}
			if n := pubsubClients(t, s); n != 1 {
				t.Fatalf("pubsub clients before kill = %d, want 1", n)
			}

			if err := s.KillPubSubClients(ctx); err != nil {
				t.Fatal(err)
			}
			eventually(t, 5*time.Second, func() error {
				if n := pubsubClients(t, s); n != 0 {
					return fmt.Errorf("%d pubsub clients left", n)
				}
				return nil
			})
			// The subscriber notices; go-redis would resubscribe on the next call.
			if _, err := ps.ReceiveTimeout(ctx, 2*time.Second); err == nil {
				t.Fatal("Receive after KillPubSubClients succeeded, want a connection error")
			}
		})
	}
}

// pubsubClients counts the clients with subscriptions according to CLIENT LIST.
func pubsubClients(t *testing.T, s *Server) int {
	t.Helper()
	out, err := s.Do(t.Context(), "CLIENT", "LIST", "TYPE", "pubsub")
	if err != nil {
		t.Fatal(err)
	}
	list, _ := out.(string)
	return strings.Count(list, "\n")
}

func TestCluster(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	start := time.Now()
	c, err := StartCluster(3)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("StartCluster(3) took %v", time.Since(start))
	if len(c.Nodes) != 3 || len(c.Addrs()) != 3 {
		t.Fatalf("got %d nodes, %d addrs; want 3", len(c.Nodes), len(c.Addrs()))
	}

	cc := redis.NewClusterClient(&redis.ClusterOptions{
		Addrs:           c.Addrs(),
		DisableIdentity: true,
		MaintNotificationsConfig: &maintnotifications.Config{
			Mode: maintnotifications.ModeDisabled,
		},
	})
	for i := range 100 {
		key := fmt.Sprintf("key:%d", i)
		if err := cc.Set(ctx, key, i, 0).Err(); err != nil {
			t.Fatalf("SET %s: %v", key, err)
		}
	}
	for i := range 100 {
		key := fmt.Sprintf("key:%d", i)
		if got, err := cc.Get(ctx, key).Int(); err != nil || got != i {
			t.Fatalf("GET %s = %d, %v; want %d", key, got, err, i)
		}
	}
	if err := cc.Close(); err != nil {
		t.Fatal(err)
	}

	var pids []int
	for _, s := range c.Nodes {
		pids = append(pids, s.PID())
		info, err := s.Do(ctx, "CLUSTER", "INFO")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(info.(string), "cluster_state:ok") {
			t.Errorf("%s: CLUSTER INFO:\n%s", s.Addr(), info)
		}
		// The keys are spread over the slots, hence over all masters.
		if n, err := s.Do(ctx, "DBSIZE"); err != nil || n.(int64) == 0 {
			t.Errorf("%s: DBSIZE = %v, %v; want > 0", s.Addr(), n, err)
		}
		if s.Port() > maxClusterPort {
			t.Errorf("cluster node on port %d, whose bus port would be > 65535", s.Port())
		}
	}

	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	for _, pid := range pids {
		assertGone(t, pid)
	}
}

func TestStartClusterT(t *testing.T) {
	t.Parallel()
	c := StartClusterT(t, 3)
	for _, s := range c.Nodes {
		if got, err := s.Do(t.Context(), "PING"); err != nil || got != "PONG" {
			t.Errorf("%s: PING = %v, %v", s.Addr(), got, err)
		}
	}
}

func TestWithArgs(t *testing.T) {
	t.Parallel()
	s := Start(t, 1, WithArgs("--maxmemory", "10mb", "--maxmemory-policy", "allkeys-lru"))[0]
	got, err := s.Do(t.Context(), "CONFIG", "GET", "maxmemory-policy")
	if err != nil {
		t.Fatal(err)
	}
	if kv, _ := got.([]any); len(kv) != 2 || kv[1] != "allkeys-lru" {
		t.Errorf("CONFIG GET maxmemory-policy = %v", got)
	}
}

func TestStartFailureIncludesLog(t *testing.T) {
	t.Parallel()
	_, err := StartServer(WithArgs("--no-such-option", "x"))
	if err == nil {
		t.Fatal("StartServer with a bad option succeeded")
	}
	if !strings.Contains(err.Error(), "no-such-option") {
		t.Errorf("error does not include the server's log:\n%v", err)
	}
}

func TestNotInstalled(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	if _, err := StartServer(); !errors.Is(err, ErrNotInstalled) {
		t.Fatalf("StartServer without redis-server = %v, want ErrNotInstalled", err)
	}
	if _, err := StartCluster(3); !errors.Is(err, ErrNotInstalled) {
		t.Fatalf("StartCluster without redis-cli = %v, want ErrNotInstalled", err)
	}
	for _, want := range []string{"apt-get install -y redis-server", "brew install redis"} {
		if !strings.Contains(ErrNotInstalled.Error(), want) {
			t.Errorf("ErrNotInstalled = %q, does not mention %q", ErrNotInstalled, want)
		}
	}
}
