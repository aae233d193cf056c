package tiered

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tieredcache/tiered/internal/redistest"
)

const envHintKey = "TIERED_HINT_KEY"

// hintWriterChild deletes the key in envHintKey, whose node the parent has paused:
// the Delete fails, is remembered, and is hinted on another node. It then marks
// "hinted" in the database and waits to be killed (SIGKILL: no Close, no replay).
func hintWriterChild() error {
	c, db, _, err := leaseChildCache(2*time.Second, func(ctx context.Context, db *redis.Client, key string) (string, error) {
		return db.Get(ctx, "src:"+key).Result()
	})
	if err != nil {
		return err
	}
	ctx := context.Background()
	err = c.Delete(ctx, os.Getenv(envHintKey))
	if err == nil {
		return errors.New("Delete on a paused node succeeded")
	}
	if strings.Contains(err.Error(), "hints for") {
		return fmt.Errorf("the hint was not written: %w", err)
	}
	if err := db.Set(ctx, "hinted", "1", 0).Err(); err != nil {
		return err
	}
	select {} // until killed
}

// TestHintedHandoffSurvivesWriter: a writer process's Delete cannot reach the key's
// node (paused); the writer is killed with SIGKILL, so neither its memory of the
// missed write nor its Close can replay it. The hint it left on another node is
// replayed by another process within a repair interval of the node answering: the
// old value is deleted there, and from then on no replica, nor a new one, reads it.
func TestHintedHandoffSurvivesWriter(t *testing.T) {
	const (
		hc      = 50 * time.Millisecond
		timeout = 200 * time.Millisecond
		margin  = time.Second // -race on a loaded 2-core machine
		ns      = "thint"
	)
	servers := redistest.Start(t, 4) // 3 ring nodes and the "database"
	var addrs []string
	for _, s := range servers[:3] {
		addrs = append(addrs, s.Addr())
	}
	ctx := context.Background()
	db := redis.NewClient(&redis.Options{Addr: servers[3].Addr(), ContextTimeoutEnabled: true})
	defer db.Close()
	reader := func() *Cache[string] {
		nodes, clients := ringNodes(addrs)
		for _, cl := range clients {
			t.Cleanup(func() { cl.Close() })
		}
		return newCache(t, Options[string]{
			Nodes: nodes, Namespace: ns, HealthCheck: hc, Timeout: timeout, MaxStaleness: 2 * hc,
			Loader: LoaderFunc[string](func(ctx context.Context, k string) (string, error) {
				return db.Get(ctx, "src:"+k).Result()
			}),
		})
	}
	r := reader()
	waitFor(t, "the reader subscribed", func() bool { return allUp(r) })
	const x = 1
	k := ownedKeys(r, "h", 1, x)[0]
	if err := db.Set(ctx, "src:"+k, "v1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if v, err := r.Get(ctx, k); err != nil || v != "v1" {
		t.Fatal(v, err)
	}
	waitSettled(t, r) // the fill follows the Get's return: see announce
	if got, _ := servers[x].Do(ctx, "GET", redisKey(r, k)); !holdsFrame(got, "v1") {
		t.Fatalf("v1 not in Redis: %v", got)
	}

	// The source changes; the writer's Delete cannot reach X.
	if err := servers[x].Pause(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { servers[x].Resume() })
	if err := db.Set(ctx, "src:"+k, "v2", 0).Err(); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd, out := startChild(t, cctx, "hint-writer",
		envNodes+"="+strings.Join(addrs, ","), envDB+"="+servers[3].Addr(), envNS+"="+ns, envHintKey+"="+k)
	waitFor(t, "the writer's Delete failed and was hinted", func() bool {
		n, _ := db.Exists(ctx, "hinted").Result()
		return n == 1 || cmd.ProcessState != nil
	})
	if err := cmd.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	cmd.Wait()
	if n, _ := db.Exists(ctx, "hinted").Result(); n != 1 {
		t.Fatalf("the writer did not hint its Delete:\n%s", out)
	}
	holders := 0
	for i, s := range servers[:3] {
		if i == x {
			continue
		}
		m, err := s.Do(ctx, "SMEMBERS", ns+":hints")
		if err == nil && strings.Contains(fmt.Sprint(m), k) {
			holders++
		}
	}
	if holders != 1 {
		t.Fatalf("hint held by %d nodes, want 1", holders)
	}

	resumed := time.Now()
	if err := servers[x].Resume(); err != nil {
		t.Fatal(err)
	}
	replayed := waitFor(t, "the hint replayed by the reader", func() bool {
		for i, s := range servers[:3] {
			if i == x {
				continue
			}
			if m, err := s.Do(ctx, "SMEMBERS", ns+":hints"); err != nil || strings.Contains(fmt.Sprint(m), k) {
				return false
			}
		}
		return true
	})
	t.Logf("the hint was replayed %v after the node answered (repair interval %v)", replayed.Sub(resumed).Round(time.Millisecond), hc)
	if d := replayed.Sub(resumed); d > hc+timeout+margin {
		t.Errorf("the replay took %v after the node answered, more than a repair interval + Timeout + margin", d)
	}
	if got, err := servers[x].Do(ctx, "GET", redisKey(r, k)); err == nil && strings.Contains(fmt.Sprint(got), "v1") {
		t.Errorf("the node still holds v1 after the replay")
	}
	// From now on no replica reads v1: the reader, and a new one (a restarted writer).
	fresh := reader()
	waitFor(t, "the new replica subscribed", func() bool { return allUp(fresh) })
	for range 50 {
		for name, c := range map[string]*Cache[string]{"reader": r, "new replica": fresh} {
			if v, err := c.Get(ctx, k); err != nil || v != "v2" {
				t.Fatalf("%s read %q, %v after the replay; want v2", name, v, err)
			}
		}
	}
	if st := r.Stats(); st.WritesReplayed == 0 {
		t.Errorf("the reader's stats show no replay: %+v", st)
	}
}
