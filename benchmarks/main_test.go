package benchmarks

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tieredcache/tiered/internal/redistest"
)

// TestMain stops the Redis nodes after every benchmark has run, then fails the run if
// any goroutine outlived its system's Close.
func TestMain(m *testing.M) {
	code := m.Run()
	scratchNodes.stop()
	zipfNodes.stop()
	faultNodes.stop()
	if err := goleak.Find(); err != nil {
		fmt.Fprintf(os.Stderr, "goroutines left running after Close: %v\n", err)
		code = 1
	}
	os.Exit(code)
}

// nodeGroup is a set of throwaway redis-server processes started on first use and
// shared by every benchmark of the test binary, so that -count 6 does not start
// servers six times.
type nodeGroup struct {
	once    sync.Once
	servers []*redistest.Server
	err     error
}

// The workloads that need an empty Redis (near hit, shared hit, miss, stampede) use
// scratchNodes and flush them first; the Zipf workloads keep their populated keyspaces
// on zipfNodes for the whole run.
var scratchNodes, zipfNodes nodeGroup

const ringNodes = 3

func (g *nodeGroup) addrs(b *testing.B) []string {
	g.once.Do(func() {
		for range ringNodes {
			s, err := redistest.StartServer()
			if err != nil {
				g.err = err
				return
			}
			g.servers = append(g.servers, s)
		}
	})
	if g.err != nil {
		b.Fatalf("start redis-server: %v", g.err)
	}
	addrs := make([]string, len(g.servers))
	for i, s := range g.servers {
		addrs[i] = s.Addr()
	}
	return addrs
}

// flushed returns the group's addresses after emptying its servers (which this test
// binary started itself).
func (g *nodeGroup) flushed(b *testing.B) []string {
	addrs := g.addrs(b)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, s := range g.servers {
		if _, err := s.Do(ctx, "FLUSHALL"); err != nil {
			b.Fatalf("FLUSHALL %s: %v", s.Addr(), err)
		}
	}
	return addrs
}

func (g *nodeGroup) stop() {
	for _, s := range g.servers {
		if err := s.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "stop redis-server %s: %v\n", s.Addr(), err)
		}
	}
}
