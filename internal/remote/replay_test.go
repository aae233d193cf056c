package remote_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tieredcache/tiered/internal/redistest"
	"github.com/tieredcache/tiered/internal/remote"
)

// TestReplayClearsOnlyTheNamespace: a dirty node is cleared of the namespace's keys
// (values and leases) by SCAN + UNLINK, even when the namespace holds glob
// characters; keys of other namespaces, and the node's invalidation sequence and
// epoch, stay. Reads fail with ErrNodeUnavailable until the replay.
func TestReplayClearsOnlyTheNamespace(t *testing.T) {
	srv := redistest.Start(t, 1)[0]
	ns := "a*b?[c]"
	r, err := remote.New(remote.Config{Nodes: []remote.Node{{Name: "n", Client: client(t, srv.Addr())}}, Namespace: ns, Timeout: time.Second, MissedDeletes: missed})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Wait) // stops its parked batch workers
	ctx := context.Background()
	cl := client(t, srv.Addr())
	if _, err := cl.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range 2500 { // several SCAN pages
			p.Set(ctx, r.Key(fmt.Sprint(i)), "v", time.Minute)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := r.Set(ctx, 0, "s", []byte("v"), time.Minute, payload); err != nil { // creates seq and epoch
		t.Fatal(err)
	}
	others := []string{"axb:{1}", "ab:{1}", "a*b?[c]x:{1}", "other"}
	for _, k := range others {
		if _, err := srv.Do(ctx, "SET", k, "kept"); err != nil {
			t.Fatal(err)
		}
	}
	r.MarkDirty(0)
	if _, err := r.Get(ctx, 0, "1"); !errors.Is(err, remote.ErrNodeUnavailable) {
		t.Fatalf("Get from a dirty node = %v, want ErrNodeUnavailable", err)
	}
	keys, cleared, err := r.Replay(ctx, 0, []byte("flush"), payload)
	if err != nil || !cleared || keys != 0 {
		t.Fatalf("Replay = %d, %v, %v; want 0, true, nil", keys, cleared, err)
	}
	if r.Unsynced(0) {
		t.Fatal("node still unsynced after a successful replay")
	}
	if _, err := r.Get(ctx, 0, "1"); !errors.Is(err, remote.ErrMiss) {
		t.Fatalf("Get after the clear = %v, want ErrMiss", err)
	}
	n, err := srv.Do(ctx, "DBSIZE")
	if err != nil {
		t.Fatal(err)
	}
	// Left: the other namespaces' keys, the sequence and the epoch.
	if n != int64(len(others)+2) {
		t.Errorf("DBSIZE after the clear = %v, want %d", n, len(others)+2)
	}
	for _, k := range others {
		if v, err := srv.Do(ctx, "GET", k); err != nil || v != "kept" {
			t.Errorf("%q after the clear: %v, %v", k, v, err)
		}
	}
}
