package remote

import (
	"context"
	"errors"
	"strings"
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
	p := newPipeliner(cl, 5*time.Second, nil)
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

// Sets that queue behind a busy node go out as one script call: every value is
// stored, and one message with one sequence number carries all their keys. A lone
// Set goes out at once, with its own message.
func TestQueuedSetsShareOneMessage(t *testing.T) {
	srv := redistest.Start(t, 1)[0]
	cl := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1})
	t.Cleanup(func() { cl.Close() })
	r, err := New(Config{Nodes: []Node{{Name: "n", Client: cl}}, Namespace: "ns", Timeout: 5 * time.Second, MissedDeletes: 10})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ps := cl.Subscribe(ctx, r.Channel())
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil { // the subscription confirmation
		t.Fatal(err)
	}
	join := func(keys []string) []byte { return []byte(strings.Join(keys, ",")) }
	if err := r.Set(ctx, 0, "lone", []byte("0"), time.Minute, join); err != nil {
		t.Fatal(err)
	}
	p := (*r.nodes.Load())[0].p
	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = p.do(ctx, redis.NewStatusCmd(ctx, "ping")) }) // holds the one slot
	waitInflight(t, p)
	keys := []string{"a", "b", "c"}
	errs := make([]error, len(keys))
	for i, k := range keys {
		wg.Go(func() { errs[i] = r.Set(ctx, 0, k, []byte("v"+k), time.Minute, join) })
		waitQueued(t, p, i+1) // queued in this order
	}
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Set %q: %v", keys[i], err)
		}
	}
	for i, want := range []string{"1|lone", "2|a,b,c"} {
		m, err := ps.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, got, _ := strings.Cut(m.Payload, "|"); got != want {
			t.Fatalf("message %d = %q, want <epoch>|%s", i, m.Payload, want)
		}
	}
	for _, k := range keys {
		if got, err := r.Get(ctx, 0, k); err != nil || string(got) != "v"+k {
			t.Errorf("Get %q = %q, %v; want %q", k, got, err, "v"+k)
		}
	}
}

func waitQueued(t *testing.T, p *pipeliner, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		p.mu.Lock()
		q := len(p.queue)
		p.mu.Unlock()
		if q >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d commands queued, want %d", q, n)
		}
		time.Sleep(time.Millisecond) // poll interval
	}
}
