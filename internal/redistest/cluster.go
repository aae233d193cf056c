package redistest

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

const (
	// clusterCreateTimeout bounds `redis-cli --cluster create`.
	clusterCreateTimeout = 60 * time.Second
	// clusterReadyTimeout bounds the wait for cluster_state:ok on all nodes.
	clusterReadyTimeout = 30 * time.Second
)

// Cluster is a Redis Cluster of masters without replicas, every node a
// Server started by this package with cluster-enabled yes.
type Cluster struct {
	Nodes []*Server // one per master, in creation order
}

// StartCluster starts masters cluster-enabled nodes (at least 3, as
// redis-cli requires), joins them with
// `redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes` and
// waits until CLUSTER INFO reports cluster_state:ok, all slots assigned and
// all nodes known on every node. It does not depend on package testing. The
// caller must call Stop. The opts apply to every node (after the cluster's own
// arguments, so WithArgs can override them, such as --cluster-node-timeout).
func StartCluster(masters int, opts ...Option) (*Cluster, error) {
	if masters < 3 {
		return nil, fmt.Errorf("redistest: a cluster needs at least 3 masters, got %d", masters)
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		return nil, fmt.Errorf("%w (redis-cli is missing)", ErrNotInstalled)
	}
	c := &Cluster{}
	for range masters {
		s, err := StartServer(append([]Option{withCluster()}, opts...)...)
		if err != nil {
			return nil, errors.Join(err, c.Stop())
		}
		c.Nodes = append(c.Nodes, s)
	}

	ctx, cancel := context.WithTimeout(context.Background(), clusterCreateTimeout)
	defer cancel()
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	cmd := exec.CommandContext(ctx, cli, args...)
	cmd.SysProcAttr = sysProcAttr()
	cmd.WaitDelay = time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		err = fmt.Errorf("redistest: redis-cli --cluster create: %w\n%s", err, tail(string(out), 30))
		return nil, errors.Join(err, c.Stop())
	}

	if err := c.waitReady(); err != nil {
		return nil, errors.Join(err, c.Stop())
	}
	return c, nil
}

// StartClusterT starts a cluster for a test or benchmark and registers
// tb.Cleanup to Stop it. If redis-server or redis-cli is missing it fails the
// test with ErrNotInstalled's message.
func StartClusterT(tb testing.TB, masters int, opts ...Option) *Cluster {
	tb.Helper()
	c, err := StartCluster(masters, opts...)
	if errors.Is(err, ErrNotInstalled) {
		tb.Fatal(err.Error())
	}
	if err != nil {
		tb.Fatalf("redistest: start cluster: %v", err)
	}
	tb.Cleanup(func() {
		if err := c.Stop(); err != nil {
			tb.Errorf("redistest: stop cluster: %v", err)
		}
	})
	return c
}

// Addrs returns the "127.0.0.1:PORT" address of every node.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.Nodes))
	for i, s := range c.Nodes {
		addrs[i] = s.Addr()
	}
	return addrs
}

// Stop stops every node (see Server.Stop). It is idempotent.
func (c *Cluster) Stop() error {
	var errs []error
	for _, s := range c.Nodes {
		errs = append(errs, s.Stop())
	}
	return errors.Join(errs...)
}

// waitReady polls CLUSTER INFO on every node until each one reports
// cluster_state:ok, 16384 assigned slots and all nodes known.
func (c *Cluster) waitReady() error {
	deadline := time.Now().Add(clusterReadyTimeout)
	want := strconv.Itoa(len(c.Nodes))
	for _, s := range c.Nodes {
		var lastErr error
		for {
			lastErr = clusterNodeReady(s, want)
			if lastErr == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("redistest: cluster not ready after %v: %w", clusterReadyTimeout, lastErr)
			}
			time.Sleep(pollInterval) // poll interval inside the deadline loop
		}
	}
	return nil
}

// clusterNodeReady checks one node's CLUSTER INFO.
func clusterNodeReady(s *Server, wantNodes string) error {
	p, err := dialProbe(s.Addr(), time.Second)
	if err != nil {
		return err
	}
	defer p.Close()
	info, err := p.do("CLUSTER", "INFO")
	if err != nil {
		return err
	}
	state := infoField(info, "cluster_state")
	slots := infoField(info, "cluster_slots_assigned")
	known := infoField(info, "cluster_known_nodes")
	if state != "ok" || slots != "16384" || known != wantNodes {
		return fmt.Errorf("node %s: cluster_state:%s cluster_slots_assigned:%s cluster_known_nodes:%s (want %s)",
			s.Addr(), state, slots, known, wantNodes)
	}
	return nil
}
