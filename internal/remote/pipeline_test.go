package remote

import (
	"context"
	"errors"
	"fmt"
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

// Commands queued behind a pipeline that is out wait for it while the queue is
// shorter than the recent batches (their moving average, here preset to 12); the
// command that makes it that long sends the whole queue at once as a second
// pipeline. A BLPOP holds each pipeline out (it blocks its
// connection until the test pushes to its list): the second pipeline's GETs answer
// while the first BLPOP still blocks, and with both out a deep queue waits (maxDeep is
// 2) until one returns.
func TestPipelinerDeepQueue(t *testing.T) {
	srv := redistest.Start(t, 1)[0]
	// No read timeout: a BLPOP built by hand blocks for as long as the test needs.
	cl := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1, ReadTimeout: -1})
	t.Cleanup(func() { cl.Close() })
	p := newPipeliner(cl, time.Minute, nil)
	const deep = deepMin + 4
	p.batchAvg = 8 * deep // as if batches of 12 had gone out
	ctx := context.Background()
	if err := cl.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		// Unblock the BLPOPs whatever happened (an extra item is harmless), then
		// wait for every call and pipeline.
		_ = cl.LPush(ctx, "list1", "end").Err()
		_ = cl.LPush(ctx, "list2", "end").Err()
		wg.Wait()
		p.wg.Wait()
	})
	// send runs cmd through the pipeliner in a goroutine; the channel closes when
	// the call returns (cmd may be read from then on).
	send := func(cmd redis.Cmder) <-chan struct{} {
		done := make(chan struct{})
		wg.Go(func() {
			defer close(done)
			_ = p.do(ctx, cmd)
		})
		return done
	}
	type call struct {
		cmd  *redis.StringCmd
		done <-chan struct{}
	}
	queue := func(n, already int) []call {
		calls := make([]call, n)
		for i := range calls {
			calls[i].cmd = redis.NewStringCmd(ctx, "get", "k")
			calls[i].done = send(calls[i].cmd)
			waitQueued(t, p, already+i+1) // queued in this order
		}
		return calls
	}
	state := func() (inflight, queued int) {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.inflight, len(p.queue)
	}
	answered := func(what string, calls []call) {
		t.Helper()
		for i, c := range calls {
			<-c.done
			if v, err := c.cmd.Result(); err != nil || v != "v" {
				t.Fatalf("%s: GET %d = %q, %v; want \"v\"", what, i, v, err)
			}
		}
	}

	first := redis.NewStringSliceCmd(ctx, "blpop", "list1", 0)
	firstDone := send(first) // inline: the one slot
	waitInflight(t, p)

	// A second BLPOP and deep-2 GETs queue behind it: the queue waits.
	second := redis.NewStringSliceCmd(ctx, "blpop", "list2", 0)
	secondDone := send(second)
	waitQueued(t, p, 1)
	behindSecond := queue(deep-2, 1)
	if inflight, queued := state(); inflight != 1 || queued != deep-1 {
		t.Fatalf("%d commands queued: %d pipelines out, %d queued; want 1 and %d", deep-1, inflight, queued, deep-1)
	}
	// The GET that makes the queue deep sends it all as the second pipeline, which
	// blocks on its BLPOP.
	last := call{cmd: redis.NewStringCmd(ctx, "get", "k")}
	last.done = send(last.cmd)
	behindSecond = append(behindSecond, last)
	waitState(t, p, fmt.Sprintf("after a deep queue (want %d out, 0 queued)", maxDeep),
		func(inflight, queued int) bool { return inflight == maxDeep && queued == 0 })

	// Both pipelines out: a deep queue waits.
	third := queue(2*deep, 0)
	if inflight, queued := state(); inflight != maxDeep || queued != len(third) {
		t.Fatalf("both pipelines out: %d out, %d queued; want %d and %d", inflight, queued, maxDeep, len(third))
	}

	// The second BLPOP returns: its pipeline's GETs answer, and the queue goes out
	// after them, while the first BLPOP still blocks.
	if err := cl.LPush(ctx, "list2", "x").Err(); err != nil {
		t.Fatal(err)
	}
	<-secondDone
	if v, err := second.Result(); err != nil || len(v) != 2 || v[1] != "x" {
		t.Fatalf("second BLPOP = %v, %v; want [list2 x]", v, err)
	}
	answered("behind the second BLPOP", behindSecond)
	answered("queued behind both pipelines", third)
	select {
	case <-firstDone:
		t.Fatalf("the first BLPOP returned (%v, %v) before its list had an item", first.Val(), first.Err())
	default:
	}
	if err := cl.LPush(ctx, "list1", "x").Err(); err != nil {
		t.Fatal(err)
	}
	<-firstDone
	if v, err := first.Result(); err != nil || len(v) != 2 || v[1] != "x" {
		t.Fatalf("first BLPOP = %v, %v; want [list1 x]", v, err)
	}
}

func waitInflight(t *testing.T, p *pipeliner) {
	t.Helper()
	waitState(t, p, "the first call never took the pipeline slot", func(inflight, _ int) bool { return inflight >= p.limit })
}

// Sets that queue behind a busy node go out as one script call: every value is
// stored, and one message with one sequence number carries all their keys. A lone
// Set goes out at once, with its own message.
func TestQueuedSetsShareOneMessage(t *testing.T) {
	srv, cl, r := oneNode(t)
	ctx := context.Background()
	ps := subscribed(t, cl, r)
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

// Deletes queue behind a busy node as Sets do, and share the batch's script call and
// message with the Sets queued beside them: each key ends as its own write left it.
func TestQueuedDeletesShareOneMessage(t *testing.T) {
	srv, cl, r := oneNode(t)
	ctx := context.Background()
	join := func(keys []string) []byte { return []byte(strings.Join(keys, ",")) }
	for _, k := range []string{"a", "b", "c", "d"} {
		if err := r.Set(ctx, 0, k, []byte("old"+k), time.Minute, join); err != nil {
			t.Fatal(err)
		}
	}
	ps := subscribed(t, cl, r)
	// A lone Delete goes out at once, as its own script call.
	if err := r.Del(ctx, []Item{{Key: "d"}}, join); err != nil {
		t.Fatal(err)
	}
	p := (*r.nodes.Load())[0].p
	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = p.do(ctx, redis.NewStatusCmd(ctx, "ping")) }) // holds the one slot
	waitInflight(t, p)
	var errs [3]error
	wg.Go(func() { errs[0] = r.Del(ctx, []Item{{Key: "a"}, {Key: "b"}}, join) })
	waitQueued(t, p, 1)
	wg.Go(func() { errs[1] = r.Set(ctx, 0, "b", []byte("newb"), time.Minute, join) }) // after b's delete
	waitQueued(t, p, 2)
	wg.Go(func() { errs[2] = r.Del(ctx, []Item{{Key: "c"}}, join) })
	waitQueued(t, p, 3)
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	seq, err := cl.Get(ctx, r.seqKey).Int()
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"d", "a,b,b,c"} {
		m, err := ps.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, got, _ := strings.Cut(m.Payload, "|"); got != fmt.Sprintf("%d|%s", seq-1+i, want) {
			t.Fatalf("message %d = %q, want <epoch>|%d|%s", i, m.Payload, seq-1+i, want)
		}
	}
	for k, want := range map[string]string{"a": "", "b": "newb", "c": "", "d": ""} {
		got, err := r.Get(ctx, 0, k)
		switch {
		case want == "" && !errors.Is(err, ErrMiss):
			t.Errorf("Get %q = %q, %v; want a miss (deleted)", k, got, err)
		case want != "" && (err != nil || string(got) != want):
			t.Errorf("Get %q = %q, %v; want %q", k, got, err, want)
		}
	}
}

// oneNode is a shared tier of one node on a fresh server.
func oneNode(t *testing.T) (*redistest.Server, *redis.Client, *Redis) {
	t.Helper()
	srv := redistest.Start(t, 1)[0]
	cl := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1})
	t.Cleanup(func() { cl.Close() })
	r, err := New(Config{Nodes: []Node{{Name: "n", Client: cl}}, Namespace: "ns", Timeout: 5 * time.Second, MissedDeletes: 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Wait) // stops its parked batch workers
	return srv, cl, r
}

// subscribed returns a confirmed subscription to r's invalidation channel.
func subscribed(t *testing.T, cl *redis.Client, r *Redis) *redis.PubSub {
	t.Helper()
	ps := cl.Subscribe(context.Background(), r.Channel())
	t.Cleanup(func() { ps.Close() })
	if _, err := ps.Receive(context.Background()); err != nil { // the subscription confirmation
		t.Fatal(err)
	}
	return ps
}

func waitQueued(t *testing.T, p *pipeliner, n int) {
	t.Helper()
	waitState(t, p, fmt.Sprintf("fewer than %d commands queued", n), func(_, queued int) bool { return queued >= n })
}

// waitState polls p's pipelines in flight and queued commands until ok holds of
// them, or fails the test with what, and the state, after 10 s.
func waitState(t *testing.T, p *pipeliner, what string, ok func(inflight, queued int) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		p.mu.Lock()
		inflight, queued := p.inflight, len(p.queue)
		p.mu.Unlock()
		if ok(inflight, queued) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d pipelines out, %d queued", what, inflight, queued)
		}
		time.Sleep(time.Millisecond) // poll interval
	}
}
