package service_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/tieredcache/tiered/examples/service"
	"github.com/tieredcache/tiered/examples/service/loadgen"
	"github.com/tieredcache/tiered/internal/redistest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fleet is three replicas of the service in this process, each with its own
// Service (its own tiered.Cache: near-cache, Redis clients, subscriptions) and its
// own HTTP server on a free loopback port, over three throwaway Redis nodes and one
// table of their own.
type fleet struct {
	urls   []string
	client *http.Client
}

// connect opens a pool on the PostgreSQL that USERSVC_DSN names, or on the local
// one (socket, then 127.0.0.1:5432). It fails the test, with how to point it
// elsewhere, if none answers: this test does not skip.
func connect(t *testing.T) (*pgxpool.Pool, string) {
	t.Helper()
	ctx := t.Context()
	pool, dsn, err := service.Connect(ctx, os.Getenv(service.DSNEnv))
	if err != nil {
		t.Fatalf("this test needs PostgreSQL and none answered: %v\n"+
			"Start one, or point the test at one: %s='postgres://user@host:5432/db?sslmode=disable' go test ./...",
			err, service.DSNEnv)
	}
	t.Cleanup(pool.Close)
	table := "users_test_" + randomHex(6)
	store, err := service.NewStore(pool, table)
	if err != nil {
		t.Fatal(err)
	}
	// Registered before the table exists, so that it is dropped whatever fails later.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := store.DropTable(ctx); err != nil {
			t.Errorf("drop table %s: %v", table, err)
		}
	})
	if err := store.CreateTable(ctx); err != nil {
		t.Fatalf("create table %s: %v", table, err)
	}
	t.Logf("PostgreSQL %s, table %s", service.RedactDSN(dsn), table)
	return pool, table
}

func startFleet(t *testing.T, replicas int) *fleet {
	t.Helper()
	pool, table := connect(t)
	var addrs []string
	for _, n := range redistest.Start(t, 3) {
		addrs = append(addrs, n.Addr())
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 8}
	t.Cleanup(tr.CloseIdleConnections)
	f := &fleet{client: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
	for i := range replicas {
		// One Store per replica over the same pool and table: each counts its own queries.
		st, err := service.NewStore(pool, table)
		if err != nil {
			t.Fatal(err)
		}
		svc, err := service.New(service.Config{
			Store: st, RedisAddrs: addrs, Name: fmt.Sprintf("replica-%d", i),
			// A loaded 2-core machine (the race detector) can hold a Redis call past
			// the default 100 ms, and the read would fall through to the database:
			// allowed, but not what this test measures.
			Timeout: time.Second,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := svc.Close(); err != nil {
				t.Errorf("close replica-%d: %v", i, err)
			}
		})
		srv := httptest.NewServer(svc.Handler())
		t.Cleanup(srv.Close) // before svc.Close: cleanups run last-in first-out
		f.urls = append(f.urls, srv.URL)
	}
	for _, u := range f.urls {
		f.waitHealthy(t, u)
	}
	return f
}

// waitHealthy polls /healthz until the replica reports "ok": every Redis node
// answers and every invalidation subscription is confirmed.
func (f *fleet) waitHealthy(t *testing.T, url string) {
	t.Helper()
	var last string
	poll(t, 20*time.Second, func() bool {
		var h service.Health
		code, err := f.do(t.Context(), http.MethodGet, url+"/healthz", nil, &h)
		last = fmt.Sprintf("%d %+v %v", code, h, err)
		return code == http.StatusOK && h.Status == "ok"
	}, func() string { return url + " not healthy: " + last })
}

// do makes a request and decodes a JSON answer into out (if not nil); it returns
// the status.
func (f *fleet) do(ctx context.Context, method, url string, body, out any) (int, error) {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, r)
	if err != nil {
		return 0, err
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if out != nil && resp.StatusCode < 300 && resp.StatusCode != http.StatusNoContent {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return resp.StatusCode, err
		}
	} else {
		_, _ = io.Copy(io.Discard, resp.Body)
	}
	return resp.StatusCode, nil
}

// poll calls cond until it reports true, failing the test with msg() after within.
func poll(t *testing.T, within time.Duration, cond func() bool, msg func() string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", within, msg())
		}
		select {
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// TestFleet runs the service as three replicas over three Redis nodes and the
// local PostgreSQL: first a few requests whose answers are known, then the load
// generator for a few seconds, checking every read against the writes.
func TestFleet(t *testing.T) {
	start := time.Now()
	f := startFleet(t, 3)
	ctx := t.Context()
	w, r1, r2 := f.urls[0], f.urls[1], f.urls[2]
	t.Logf("fleet up in %v", time.Since(start).Round(time.Millisecond))

	t.Run("API", func(t *testing.T) {
		// An absent user: 404, and the absence is cached (in r1's near-cache and Redis).
		if code, err := f.do(ctx, http.MethodGet, r1+"/users/7", nil, nil); err != nil || code != http.StatusNotFound {
			t.Fatalf("GET absent user: %d %v, want 404", code, err)
		}
		// Written through w: the write's Delete drops the cached absence everywhere.
		var u service.User
		code, err := f.do(ctx, http.MethodPut, w+"/users/7", service.PutRequest{Name: "Ada", Email: "ada@example.com"}, &u)
		if err != nil || code != http.StatusOK || u.ID != 7 || u.Version != 1 || u.Name != "Ada" || u.UpdatedAt.IsZero() {
			t.Fatalf("PUT new user: %d %v %+v", code, err, u)
		}
		waitUser(t, f, []string{w, r1, r2}, 7, func(u *service.User) bool { return u != nil && u.Version == 1 && u.Name == "Ada" })
		code, err = f.do(ctx, http.MethodPut, w+"/users/7", service.PutRequest{Name: "Ada Lovelace", Email: "ada@example.com"}, &u)
		if err != nil || code != http.StatusOK || u.Version != 2 {
			t.Fatalf("PUT update: %d %v %+v", code, err, u)
		}
		waitUser(t, f, []string{w, r1, r2}, 7, func(u *service.User) bool { return u != nil && u.Version == 2 && u.Name == "Ada Lovelace" })

		// The key is the parsed id: /users/007 is user 7.
		var same service.User
		if code, err := f.do(ctx, http.MethodGet, r2+"/users/007", nil, &same); err != nil || code != http.StatusOK || same.Version != 2 {
			t.Fatalf("GET /users/007: %d %v %+v", code, err, same)
		}
		// GetMany: order kept, duplicates once, absent ids listed.
		var many service.UsersResponse
		if code, err := f.do(ctx, http.MethodGet, r1+"/users?ids=7,8,7", nil, &many); err != nil || code != http.StatusOK {
			t.Fatalf("GET /users?ids=7,8,7: %d %v", code, err)
		}
		if len(many.Users) != 1 || many.Users[0].ID != 7 || many.Users[0].Version != 2 || len(many.Missing) != 1 || many.Missing[0] != 8 {
			t.Fatalf("GET /users?ids=7,8,7 = %+v", many)
		}

		if code, err := f.do(ctx, http.MethodDelete, w+"/users/7", nil, nil); err != nil || code != http.StatusNoContent {
			t.Fatalf("DELETE: %d %v, want 204", code, err)
		}
		waitUser(t, f, []string{w, r1, r2}, 7, func(u *service.User) bool { return u == nil })
		if code, err := f.do(ctx, http.MethodDelete, w+"/users/7", nil, nil); err != nil || code != http.StatusNotFound {
			t.Fatalf("DELETE again: %d %v, want 404", code, err)
		}

		for _, bad := range []string{"/users/abc", "/users/0", "/users/-1", "/users?ids=", "/users?ids=1,x"} {
			if code, err := f.do(ctx, http.MethodGet, r1+bad, nil, nil); err != nil || code != http.StatusBadRequest {
				t.Errorf("GET %s: %d %v, want 400", bad, code, err)
			}
		}
		if code, err := f.do(ctx, http.MethodPut, w+"/users/9", map[string]string{"name": "x"}, nil); err != nil || code != http.StatusBadRequest {
			t.Errorf("PUT without email: %d %v, want 400", code, err)
		}

		var st service.Stats
		if code, err := f.do(ctx, http.MethodGet, r1+"/stats", nil, &st); err != nil || code != http.StatusOK {
			t.Fatalf("GET /stats: %d %v", code, err)
		}
		if st.Replica != "replica-1" || len(st.Nodes) != 3 || st.DB.Selects == 0 || st.Cache.LocalHits+st.Cache.LocalMisses == 0 {
			t.Errorf("GET /stats = %+v", st)
		}
	})
	if t.Failed() {
		return
	}

	t.Run("Load", func(t *testing.T) {
		// Paced below what the machine can serve: staleness is judged at 100 ms, and
		// a machine whose cores are all busy can delay any goroutine (the one applying
		// invalidations too) by more than that. The race detector costs about 20x.
		cfg := loadgen.Config{
			Writer:       w,
			Readers:      []string{r1, r2},
			Users:        100,
			ReadWorkers:  8,
			ReadRate:     2000,
			WriteWorkers: 2,
			WriteRate:    20,
			Duration:     4 * time.Second,
		}
		if raceEnabled {
			cfg.ReadRate, cfg.Duration = 150, 6*time.Second
		}
		var out lineLogger
		cfg.Out = &out
		res, err := loadgen.Run(ctx, cfg)
		out.flush(t)
		if err != nil {
			t.Fatal(err)
		}
		tot := res.Totals
		switch {
		case !tot.Polled:
			t.Errorf("a replica's /stats did not answer")
		case res.Errors > 0 || res.Wrong > 0:
			t.Errorf("%d failed requests, %d reads that did not return what was written", res.Errors, res.Wrong)
		case res.Stale > 0:
			t.Errorf("%d stale reads (a version older than one acknowledged more than 100 ms before the read began)", res.Stale)
		case float64(res.Reads) < cfg.ReadRate*cfg.Duration.Seconds()/2 || res.Writes < 20:
			t.Errorf("too little load to judge: %d reads, %d writes", res.Reads, res.Writes)
		case tot.LocalHits == 0:
			t.Errorf("no near-cache hits")
		case tot.DBSelects*4 > res.KeysRead:
			t.Errorf("%d database queries for %d users read: want at most one per 4", tot.DBSelects, res.KeysRead)
		}
		if res.Pending > 0 {
			t.Logf("%d cache deletes failed with every Redis node up (the machine is slow?)", res.Pending)
		}
	})
	t.Logf("TestFleet took %v", time.Since(start).Round(time.Millisecond))
}

// waitUser polls user id on every replica until ok holds for each (u nil: 404).
func waitUser(t *testing.T, f *fleet, urls []string, id int, ok func(*service.User) bool) {
	t.Helper()
	for _, url := range urls {
		var last string
		poll(t, 5*time.Second, func() bool {
			var u service.User
			code, err := f.do(t.Context(), http.MethodGet, fmt.Sprintf("%s/users/%d", url, id), nil, &u)
			last = fmt.Sprintf("%d %v %+v", code, err, u)
			switch {
			case err != nil:
				return false
			case code == http.StatusNotFound:
				return ok(nil)
			case code == http.StatusOK:
				return ok(&u)
			}
			return false
		}, func() string { return fmt.Sprintf("user %d on %s: last answer %s", id, url, last) })
	}
}

// lineLogger collects the load generator's output, to log it line by line.
type lineLogger struct{ buf bytes.Buffer }

func (l *lineLogger) Write(p []byte) (int, error) { return l.buf.Write(p) }

func (l *lineLogger) flush(t *testing.T) {
	sc := bufio.NewScanner(&l.buf)
	for sc.Scan() {
		t.Log(strings.TrimRight(sc.Text(), " "))
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
