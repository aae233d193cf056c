package invalidation_test

import (
	"context"
	"fmt"
	"slices"
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
	mu     sync.Mutex
	events []string
}

func (r *recorder) add(e string) { r.mu.Lock(); r.events = append(r.events, e); r.mu.Unlock() }
func (r *recorder) Invalidate(node int, m *invalidation.Message) {
	r.add(fmt.Sprintf("invalidate %v", m.Keys))
}
func (r *recorder) Down(int)                          { r.add("down") }
func (r *recorder) Filled(_ int, key string)          { r.add("filled " + key) }
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
	s := invalidation.Start(invalidation.Config{
		Client: cl, Channel: "inv", Origin: "me", Handler: rec,
		Health: 50 * time.Millisecond, Timeout: time.Second,
	})
	defer s.Stop()
	select {
	case <-s.Ready():
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
