package remote

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tieredcache/tiered/internal/redistest"
)

// A caller whose ctx ends while its command waits behind a pipeline to a hung node
// gets its ctx's error at once, and a command it may read (evalsha hands back a
// failed copy): the queued command itself still belongs to the pipeline, which sends
// it when the node answers (under -race, reading it would be a data race).
func TestPipelinerAbandonedCall(t *testing.T) {
	srv := redistest.Start(t, 1)[0]
	cl := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1})
	t.Cleanup(func() { cl.Close() })
	p := newPipeliner(cl, 5*time.Second)
	ctx := context.Background()
	if err := p.do(ctx, redis.NewStatusCmd(ctx, "ping")); err != nil { // warm a connection
		t.Fatal(err)
	}
	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = p.do(ctx, redis.NewStatusCmd(ctx, "ping")) }) // holds the one slot
	waitInflight(t, p)
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	start := time.Now()
	cmd := p.evalsha(short, casScript, []string{"k"}, "a", "b", 1000, "ch", "k")
	if err := cmd.Err(); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("queued call after its ctx ended: %v, want DeadlineExceeded", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("queued call returned after %v; its ctx ended after 20ms", took)
	}
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	// The pipeline drains: the next call goes through.
	if err := p.do(ctx, redis.NewStatusCmd(ctx, "ping")); err != nil {
		t.Fatal(err)
	}
}

func waitInflight(t *testing.T, p *pipeliner) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		p.mu.Lock()
		n := p.inflight
		p.mu.Unlock()
		if n >= p.limit {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the first call never took the pipeline slot")
		}
		time.Sleep(time.Millisecond) // poll interval
	}
}
