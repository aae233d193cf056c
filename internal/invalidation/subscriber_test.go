package invalidation_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/tieredcache/tiered/internal/invalidation"
	"github.com/tieredcache/tiered/internal/redistest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recorder is a Handler that records events as strings.
type recorder struct {
	mu       sync.Mutex
	events   []string
	confirms int // not an event: one per pong
}

func (r *recorder) add(e string) { r.mu.Lock(); r.events = append(r.events, e); r.mu.Unlock() }
func (r *recorder) Invalidate(node int, m *invalidation.Message) {
	r.add(fmt.Sprintf("invalidate %v", m.Keys))
}
func (r *recorder) Down(int) { r.add("down") }
func (r *recorder) Confirmed(int, time.Time) {
	r.mu.Lock()
	r.confirms++
	r.mu.Unlock()
}
func (r *recorder) Filled(_ int, key string, value []byte) {
	if value != nil {
		key += "=" + string(value)
	}
	r.add("filled " + key)
}
func (r *recorder) Up(int)                            { r.add("up") }
func (r *recorder) Flush(_ int, c invalidation.Cause) { r.add("flush " + c.String()) }
func (r *recorder) snapshot() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}
func (r *recorder) waitFor(t *testing.T, want ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := r.snapshot()
		if len(got) >= len(want) && slices.Equal(got[len(got)-len(want):], want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("events = %q, want them to end with %q", got, want)
		}
		time.Sleep(time.Millisecond) // poll interval
	}
}

func TestSubscriber(t *testing.T) {
	srv := redistest.Start(t, 1)[0]
	cl := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true})
	defer cl.Close()
	rec := &recorder{}
	s := invalidation.Start(invalidation.Config{Client: cl, Health: 50 * time.Millisecond, Timeout: time.Second})
	defer s.Stop()
	sub := s.Add(invalidation.Topic{Channel: "inv", Origin: "me", Handler: rec})
	select {
	case <-sub.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("subscription never confirmed")
	}
	rec.waitFor(t, "up")

	ctx := context.Background()
	publish := func(epoch string, seq int, origin string, keys ...string) {
		t.Helper()
		msg := fmt.Sprintf("%s|%d|%s", epoch, seq, invalidation.AppendPayload(nil, origin, 1, keys))
		if err := cl.Publish(ctx, "inv", msg).Err(); err != nil {
			t.Fatal(err)
		}
	}
	publish("e1", 1, "other", "a")
	rec.waitFor(t, "invalidate [a]")
	publish("e1", 2, "me", "b") // our own write: tracked, not applied
	publish("e1", 3, "other", "c", "d")
	rec.waitFor(t, "invalidate [a]", "invalidate [c d]")
	publish("e1", 5, "other", "e") // 4 was lost
	rec.waitFor(t, "flush sequence gap", "invalidate [e]")
	publish("e2", 1, "other", "f") // the node restarted
	rec.waitFor(t, "flush new epoch", "invalidate [f]")
	publish("e2", 2, "other", "g") // back in sequence: no flush
	rec.waitFor(t, "invalidate [f]", "invalidate [g]")
	if err := cl.Publish(ctx, "inv", "garbage").Err(); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, "flush sequence gap")

	// A dropped connection: down at once, then up (and flushed) on resubscription.
	if err := srv.KillPubSubClients(ctx); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, "down", "up")
	publish("e2", 3, "other", "h") // the first message after resubscribing sets the baseline
	rec.waitFor(t, "down", "up", "invalidate [h]")

	// A hung node: the silence is noticed by the health check.
	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	rec.waitFor(t, "down")
	t.Logf("hung node noticed after %v (Health 50ms + Timeout 1s)", time.Since(start))
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, "up")
}

// TestTopicsShareOneConnection: topics added to one Subscriber, before and after its
// connection is up, each get their own messages, sequence tracking and Up; a removed
// topic gets nothing more; the node sees one pub/sub connection.
func TestTopicsShareOneConnection(t *testing.T) {
	srv := redistest.Start(t, 1)[0]
	cl := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true})
	defer cl.Close()
	ctx := context.Background()
	s := invalidation.Start(invalidation.Config{Client: cl, Health: 50 * time.Millisecond, Timeout: time.Second})
	defer s.Stop()
	a, b := &recorder{}, &recorder{}
	subA := s.Add(invalidation.Topic{Channel: "a:inv", FillChannel: "a:fill", Origin: "x", Handler: a})
	<-subA.Ready()
	subB := s.Add(invalidation.Topic{Channel: "b:inv", Origin: "x", Handler: b}) // joins the live connection
	select {
	case <-subB.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("a topic added to a live connection was never confirmed")
	}
	a.waitFor(t, "up")
	b.waitFor(t, "up")
	publish := func(ch, epoch string, seq int, keys ...string) {
		t.Helper()
		msg := fmt.Sprintf("%s|%d|%s", epoch, seq, invalidation.AppendPayload(nil, "other", 1, keys))
		if err := cl.Publish(ctx, ch, msg).Err(); err != nil {
			t.Fatal(err)
		}
	}
	publish("a:inv", "e", 1, "k1")
	publish("b:inv", "e", 7, "k2") // b's sequence is its own: no gap for either
	publish("a:inv", "e", 2, "k3")
	cl.Publish(ctx, "a:fill", "k9")    // malformed (not "<len>:<key>"): ignored
	cl.Publish(ctx, "a:fill", "2:k4v") // k4, filled with "v"
	cl.Publish(ctx, "a:fill", "2:k5")  // k5, value not sent
	a.waitFor(t, "up", "invalidate [k1]", "invalidate [k3]", "filled k4=v", "filled k5")
	b.waitFor(t, "up", "invalidate [k2]")
	if st := subA.Status(); !st.Up || st.Epoch != "e" || st.Seq != 2 {
		t.Errorf("a's status %+v", st)
	}
	if n, err := srv.Do(ctx, "PUBSUB", "NUMSUB", "a:inv", "b:inv"); err != nil || fmt.Sprint(n) != "[a:inv 1 b:inv 1]" {
		t.Errorf("PUBSUB NUMSUB = %v, %v", n, err)
	}
	clients, err := srv.Do(ctx, "CLIENT", "LIST", "TYPE", "pubsub")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(fmt.Sprint(clients), "id="); n != 1 {
		t.Errorf("%d pub/sub connections, want 1:\n%s", n, clients)
	}

	s.Remove(subB)
	publish("b:inv", "e", 8, "k5")
	publish("a:inv", "e", 3, "k6")
	a.waitFor(t, "invalidate [k6]")
	for _, e := range b.snapshot() {
		if e == "invalidate [k5]" {
			t.Fatal("a removed topic's handler was called")
		}
	}
	if s.Len() != 1 {
		t.Errorf("Len = %d", s.Len())
	}
}

// TestConfirmedUnderTraffic: pings go out every Health even while messages arrive
// faster than that, so a busy channel keeps being confirmed (a Subscriber that pinged
// only after a silence would confirm nothing while the node is busy).
func TestConfirmedUnderTraffic(t *testing.T) {
	srv := redistest.Start(t, 1)[0]
	cl := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true})
	defer cl.Close()
	s := invalidation.Start(invalidation.Config{Client: cl, Health: 20 * time.Millisecond, Timeout: 5 * time.Second})
	defer s.Stop()
	rec := &recorder{}
	<-s.Add(invalidation.Topic{Channel: "busy", Origin: "me", Handler: rec}).Ready()
	confirms := func() int { rec.mu.Lock(); defer rec.mu.Unlock(); return rec.confirms }
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	// Untracked messages (sequence 0), in pipelined bursts: they arrive back to back,
	// never 1 ms apart.
	msg := fmt.Sprintf("e|0|%s", invalidation.AppendPayload(nil, "other", 1, []string{"k"}))
	for range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				p := cl.Pipeline()
				for range 200 {
					p.Publish(context.Background(), "busy", msg)
				}
				p.Exec(context.Background())
			}
		})
	}
	defer func() { stop(); wg.Wait() }()
	start := confirms()
	deadline := time.Now().Add(10 * time.Second)
	for confirms() < start+5 {
		if time.Now().After(deadline) {
			t.Fatalf("%d confirmations in 10 s of traffic, want pings answered every 20 ms", confirms()-start)
		}
		time.Sleep(time.Millisecond) // poll interval
	}
}
