package tiered

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tieredcache/tiered/internal/envelope"
	"github.com/tieredcache/tiered/internal/local"
	"github.com/tieredcache/tiered/internal/redistest"
	"github.com/tieredcache/tiered/internal/remote"
)

// badEnv is one row's world: its own namespace on the shared 3-node ring, its own
// source, and a Cache whose Loader is backed by that source.
type badEnv struct {
	servers []*redistest.Server
	o       Options[string] // c's options, Loader included
	src     *source
	// hook, if set, runs inside the Loader before the source is read: a row can
	// block, fail or panic the load there, or look at the near-cache mid-load.
	hook atomic.Pointer[func(ctx context.Context, key string) error]
	c    *Cache[string]
}

func (e *badEnv) setHook(f func(ctx context.Context, key string) error) { e.hook.Store(&f) }

// redis returns the shared tier, for the namespaced keys and lease keys.
func (e *badEnv) redis() *remote.Redis { return e.c.shared.(*remote.Redis) }

// raw reads key's bytes straight from its owner node with the server's own GET;
// ok is false if Redis holds nothing under key.
func (e *badEnv) raw(t *testing.T, key string) (string, bool) {
	t.Helper()
	v, err := e.servers[e.c.shared.Owner(key)].Do(context.Background(), "GET", e.redis().Key(key))
	if errors.Is(err, redis.Nil) {
		return "", false
	}
	if err != nil {
		t.Fatalf("GET %s: %v", e.redis().Key(key), err)
	}
	return v.(string), true
}

// assertNowhere checks that no node of the ring holds key, and that the near-cache
// has no servable entry for it once ristretto's buffered Sets are applied.
func (e *badEnv) assertNowhere(t *testing.T, c *Cache[string], key string) {
	t.Helper()
	for i, s := range e.servers {
		v, err := s.Do(context.Background(), "GET", e.redis().Key(key))
		if !errors.Is(err, redis.Nil) {
			t.Errorf("node %d holds %.40q (%v) for %.40q; want nothing", i, v, err, key)
		}
	}
	c.local.Wait()
	if v, ok := nearHas(c, key); ok {
		t.Errorf("near-cache holds %.40q for %.40q; want nothing", v, key)
	}
}

// redisCLISet writes val under the Redis key rk with redis-cli, a separate process
// that knows nothing of this library, as an operator or another program would.
func redisCLISet(t *testing.T, s *redistest.Server, rk, val string) {
	t.Helper()
	args := []string{"-h", "127.0.0.1", "-p", strconv.Itoa(s.Port()), "SET", rk}
	cmd := exec.Command("redis-cli", append(args, val)...)
	if strings.IndexByte(val, 0) >= 0 {
		// An argv string cannot carry a NUL byte (envelope headers have several):
		// -x makes redis-cli read the last argument from stdin, byte for byte.
		cmd = exec.Command("redis-cli", append([]string{"-x"}, args...)...)
		cmd.Stdin = strings.NewReader(val)
	}
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "OK" {
		t.Fatalf("redis-cli SET %s: %v: %s", rk, err, out)
	}
	got, err := s.Do(context.Background(), "GET", rk)
	if err != nil || got.(string) != val {
		t.Fatalf("after redis-cli SET, GET %s = %q, %v; want %q", rk, got, err, val)
	}
}

// TestBadInputTable: bad input is an error or a miss, never a panic, a hang or a lost
// or corrupted value. Every row runs against real redis-server processes (a 3-node
// ring), each row in its own namespace with its own Cache and source.
//
// The envelope decoder itself is fuzzed by FuzzDecode in internal/envelope
// (go test -fuzz FuzzDecode ./internal/envelope); the "undecodable bytes" row checks
// what the cache does with the frames it rejects.
func TestBadInputTable(t *testing.T) {
	servers := redistest.Start(t, 3)
	const (
		maxKey   = 40
		maxValue = 1024
	)
	ctx := context.Background()

	rows := []struct {
		name string
		opts func(o *Options[string]) // changes to the row's options, or nil
		run  func(t *testing.T, e *badEnv)
	}{
		{"empty key", nil, func(t *testing.T, e *badEnv) {
			c := e.c
			e.src.put("", "never") // a Loader would find something: it must not be asked
			e.src.put("a", "va")
			if err := c.Set(ctx, "a", "va"); err != nil {
				t.Fatal(err)
			}
			before, calls := c.Stats(), e.src.calls.Load()
			for name, call := range map[string]func() error{
				"Get":                      func() error { _, err := c.Get(ctx, ""); return err },
				"Set":                      func() error { return c.Set(ctx, "", "v") },
				"Delete":                   func() error { return c.Delete(ctx, "") },
				"Delete with a valid key":  func() error { return c.Delete(ctx, "a", "") },
				"GetMany":                  func() error { _, err := c.GetMany(ctx, []string{""}); return err },
				"GetMany with a valid key": func() error { _, err := c.GetMany(ctx, []string{"a", ""}); return err },
			} {
				if err := call(); !errors.Is(err, ErrInvalidKey) {
					t.Errorf("%s(\"\") = %v, want ErrInvalidKey", name, err)
				}
			}
			if n := e.src.calls.Load() - calls; n != 0 {
				t.Errorf("Loader called %d times for an empty key", n)
			}
			if s := c.Stats(); s.Loads != before.Loads || s.LocalMisses != before.LocalMisses || s.LocalHits != before.LocalHits ||
				s.RemoteHits+s.RemoteMisses != before.RemoteHits+before.RemoteMisses || s.InvalidationsSent != before.InvalidationsSent {
				t.Errorf("stats moved: %+v, before %+v", s, before)
			}
			e.assertNowhere(t, c, "")
			// The whole call was refused: Delete("a", "") deleted nothing.
			if raw, ok := e.raw(t, "a"); !ok || !strings.HasSuffix(raw, "va") {
				t.Errorf("Redis holds %q, %v for a after Delete(a, \"\"); want its value", raw, ok)
			}
		}},

		{"key over MaxKeySize", nil, func(t *testing.T, e *badEnv) {
			c := e.c
			long, limit := strings.Repeat("k", maxKey+1), strings.Repeat("k", maxKey)
			e.src.put(long, "never")
			e.src.put(limit, "at the limit")
			calls := e.src.calls.Load()
			for name, call := range map[string]func() error{
				"Get":     func() error { _, err := c.Get(ctx, long); return err },
				"Set":     func() error { return c.Set(ctx, long, "v") },
				"Delete":  func() error { return c.Delete(ctx, limit, long) },
				"GetMany": func() error { _, err := c.GetMany(ctx, []string{limit, long}); return err },
			} {
				if err := call(); !errors.Is(err, ErrInvalidKey) {
					t.Errorf("%s(%d-byte key) = %v, want ErrInvalidKey", name, maxKey+1, err)
				}
			}
			if n := e.src.calls.Load() - calls; n != 0 {
				t.Errorf("Loader called %d times for an over-long key", n)
			}
			e.assertNowhere(t, c, long)
			// MaxKeySize itself is allowed.
			if v, err := c.Get(ctx, limit); err != nil || v != "at the limit" {
				t.Errorf("Get(%d-byte key) = %q, %v", maxKey, v, err)
			}
		}},

		{"miss without a Loader", func(o *Options[string]) { o.Loader = nil }, func(t *testing.T, e *badEnv) {
			c := e.c
			if err := c.Set(ctx, "there", "v"); err != nil {
				t.Fatal(err)
			}
			if v, err := c.Get(ctx, "nothing"); !errors.Is(err, ErrNotFound) || v != "" {
				t.Errorf("Get(nothing) = %q, %v; want ErrNotFound", v, err)
			}
			m, err := c.GetMany(ctx, []string{"nothing", "there"})
			if err != nil || len(m) != 1 || m["there"] != "v" {
				t.Errorf("GetMany = %v, %v; want only there", m, err)
			}
			if _, in := m["nothing"]; in {
				t.Error("GetMany's map has a key nothing holds")
			}
			// Without a Loader nothing is negative-cached: the next Get asks Redis again.
			e.assertNowhere(t, c, "nothing")
			if s := c.Stats(); s.Loads != 0 || s.NotFound != 0 || s.RemoteMisses != 2 {
				t.Errorf("stats = %+v; want 2 remote misses, no loads", s)
			}
		}},

		{"values over MaxValueSize", func(o *Options[string]) {
			o.LocalMaxCost = 32 << 10
		}, func(t *testing.T, e *badEnv) {
			c := e.c
			big := strings.Repeat("x", maxValue+1)

			// Set: refused, stored nowhere; a cached copy stays as it was.
			if err := c.Set(ctx, "big", big); !errors.Is(err, ErrValueTooLarge) {
				t.Fatalf("Set(%d bytes) = %v, want ErrValueTooLarge", len(big), err)
			}
			e.assertNowhere(t, c, "big")
			if err := c.Set(ctx, "kept", "small"); err != nil {
				t.Fatal(err)
			}
			if err := c.Set(ctx, "kept", big); !errors.Is(err, ErrValueTooLarge) {
				t.Fatalf("Set(kept, %d bytes) = %v, want ErrValueTooLarge", len(big), err)
			}
			if raw, _ := e.raw(t, "kept"); !strings.HasSuffix(raw, "small") || strings.Contains(raw, "xx") {
				t.Errorf("Redis holds %.40q for kept; want the earlier value", raw)
			}
			if v, err := c.Get(ctx, "kept"); err != nil || v != "small" {
				t.Errorf("Get(kept) = %.40q, %v; want the earlier value", v, err)
			}
			if err := c.Set(ctx, "limit", big[:maxValue]); err != nil {
				t.Errorf("Set(MaxValueSize bytes) = %v", err)
			}

			// A Loader's oversized value: returned, counted, cached in neither tier.
			e.src.put("loaded", big)
			for i := range 2 {
				calls, before := e.src.calls.Load(), c.Stats()
				start := time.Now()
				v, err := c.Get(ctx, "loaded")
				took := time.Since(start)
				if err != nil || v != big {
					t.Fatalf("Get of an oversized load = %d bytes, %v; want the value", len(v), err)
				}
				s := c.Stats()
				if s.Oversize != before.Oversize+1 || e.src.calls.Load() != calls+1 {
					t.Errorf("Get %d: Oversize +%d, Loader calls +%d; want +1, +1 (not cached)", i, s.Oversize-before.Oversize, e.src.calls.Load()-calls)
				}
				e.assertNowhere(t, c, "loaded")
				// The load cached nothing and released its lease: the next Get
				// loads at once instead of waiting for the lease to expire.
				if s.LeaseWaits != before.LeaseWaits {
					t.Errorf("Get %d of an oversized key waited for a lease (%v): the previous load kept it", i, took)
				}
			}
			before := c.Stats()
			m, err := c.GetMany(ctx, []string{"loaded"})
			if err != nil || m["loaded"] != big || c.Stats().Oversize != before.Oversize+1 {
				t.Errorf("GetMany of an oversized load = %d bytes, %v, Oversize +%d", len(m["loaded"]), err, c.Stats().Oversize-before.Oversize)
			}
			e.assertNowhere(t, c, "loaded")

			// The near-cache stays within LocalMaxCost however many large values pass.
			// Neither package local nor ristretto (whose Metrics local leaves off)
			// exposes the cost in use, so count the servable entries instead: each
			// costs at least its frame, key and local.EntryOverhead, so their count times
			// that is a lower bound on the cost held, and must fit in LocalMaxCost.
			// Charging less per entry would let far more of them in.
			const n = 60
			keys := make([]string, n)
			for i := range keys {
				keys[i] = fmt.Sprintf("large:%02d", i)
				val := strings.Repeat(strconv.Itoa(i%10), maxValue-20)
				e.src.put(keys[i], val)
				var err error
				if i%2 == 0 {
					err = c.Set(ctx, keys[i], val)
				} else {
					_, err = c.Get(ctx, keys[i])
				}
				if err != nil {
					t.Fatal(err)
				}
				e.src.put(fmt.Sprint("huge:", i), big+big) // and oversized loads between them
				if _, err := c.Get(ctx, fmt.Sprint("huge:", i)); err != nil {
					t.Fatal(err)
				}
			}
			waitLocal(t, c, keys[n-1]) // the near-cache is in use, not empty
			resident := 0
			for _, k := range keys {
				if _, ok := nearHas(c, k); ok {
					resident++
				}
			}
			for i := range n {
				if _, ok := nearHas(c, fmt.Sprint("huge:", i)); ok {
					t.Errorf("near-cache holds huge:%d", i)
				}
			}
			perEntry := int64(envelope.HeaderSize + maxValue - 20 + len(keys[0]) + local.EntryOverhead)
			if int64(resident)*perEntry > c.opts.LocalMaxCost || resident == 0 {
				t.Errorf("%d of %d large values resident at >= %d bytes each: >= %d bytes, LocalMaxCost %d",
					resident, n, perEntry, int64(resident)*perEntry, c.opts.LocalMaxCost)
			}
			t.Logf("%d of %d large values resident (>= %d bytes of %d)", resident, n, int64(resident)*perEntry, c.opts.LocalMaxCost)
		}},

		{"undecodable bytes in Redis", nil, func(t *testing.T, e *badEnv) {
			c := e.c
			// bare shares the namespace and has no Loader: what it reads comes from
			// Redis, and a miss is ErrNotFound.
			bo := e.o
			bo.Loader = nil
			bare := newCache(t, bo)
			other := newCache(t, e.o) // another process, with a Loader
			exp := time.Now().Add(time.Hour).UnixMilli()
			valid := envelope.Encode(envelope.Header{Kind: envelope.KindValue, CodecTag: c.tag, ExpireMs: exp}, []byte("payload"))
			patch := func(i int, b byte) string { f := []byte(string(valid)); f[i] = b; return string(f) }
			cborPayload, err := CBOR[string]{}.Marshal("x")
			if err != nil {
				t.Fatal(err)
			}
			otherCodec := envelope.Encode(envelope.Header{Kind: envelope.KindValue, CodecTag: envelope.Tag(CBOR[string]{}.Name()), ExpireMs: exp}, cborPayload)
			absentWithPayload := envelope.Encode(envelope.Header{Kind: envelope.KindAbsent, CodecTag: c.tag, ExpireMs: exp}, []byte("p"))

			// Control: a valid frame written the same way is read as a value, so the
			// rows below fail for the reason they name, not because of redis-cli.
			rk := e.redis().Key("ctl")
			redisCLISet(t, servers[c.shared.Owner("ctl")], rk, string(valid))
			if v, err := bare.Get(ctx, "ctl"); err != nil || v != "payload" {
				t.Fatalf("valid frame via redis-cli: Get = %q, %v", v, err)
			}

			for i, bad := range []struct{ name, raw, why string }{
				{"garbage", "hello", "shorter than"},
				{"garbage over a header long", "not an envelope, only some text", "bad magic"},
				{"empty", "", "shorter than"},
				{"truncated envelope", string(valid[:envelope.HeaderSize-3]), "shorter than"},
				{"unknown version", patch(2, envelope.Version+1), "format version"},
				{"unknown kind", patch(3, 0x7f), "unknown kind"},
				{"absent marker with a payload", string(absentWithPayload), "absent marker"},
				{"another codec's tag", string(otherCodec), "another codec"},
			} {
				t.Run(bad.name, func(t *testing.T) {
					if _, _, _, err := c.decode([]byte(bad.raw)); err == nil || !strings.Contains(err.Error(), bad.why) {
						t.Fatalf("decode(%q) = %v; want an error about %q", bad.raw, err, bad.why)
					}
					key, good := fmt.Sprint("get:", i), "good:"+bad.name
					e.src.put(key, good)
					node := c.shared.Owner(key)
					rk := e.redis().Key(key)
					redisCLISet(t, servers[node], rk, bad.raw)

					// Not a value, and not copied into a near-cache: a Cache without a
					// Loader misses on it, twice, counting it each time.
					for i := range 2 {
						before := bare.Stats()
						if v, err := bare.Get(ctx, key); !errors.Is(err, ErrNotFound) {
							t.Fatalf("bare Get %d = %q, %v; want ErrNotFound (a miss)", i, v, err)
						}
						s := bare.Stats()
						if s.DecodeErrors != before.DecodeErrors+1 || s.LocalHits != before.LocalHits || s.RemoteHits != before.RemoteHits {
							t.Errorf("bare Get %d: stats %+v, before %+v; want one more DecodeError only", i, s, before)
						}
						bare.local.Wait()
						if _, ok := nearHas(bare, key); ok {
							t.Errorf("bare's near-cache holds %q after reading undecodable bytes", key)
						}
					}

					// Get reloads once, and the near-cache has nothing while it does.
					var nearMidLoad atomic.Bool
					e.setHook(func(_ context.Context, k string) error {
						if k == key {
							c.local.Wait()
							_, ok := nearHas(c, key)
							nearMidLoad.Store(ok)
						}
						return nil
					})
					defer e.setHook(nil)
					before, calls := c.Stats(), e.src.calls.Load()
					if v, err := c.Get(ctx, key); err != nil || v != good {
						t.Fatalf("Get over undecodable bytes = %q, %v; want the loaded value", v, err)
					}
					if n := e.src.calls.Load() - calls; n != 1 {
						t.Errorf("Loader calls +%d, want +1", n)
					}
					if nearMidLoad.Load() {
						t.Error("the near-cache held the key while it was being reloaded")
					}
					if s := c.Stats(); s.DecodeErrors != before.DecodeErrors+1 || s.RemoteHits != before.RemoteHits {
						t.Errorf("stats %+v, before %+v; want one more DecodeError, no remote hit", s, before)
					}
					// Repaired in Redis: a valid frame of the loaded value, with a TTL
					// (the repair follows the Get's return: see announce).
					waitSettled(t, c)
					raw, ok := e.raw(t, key)
					h, payload, err := envelope.Decode([]byte(raw))
					if !ok || err != nil || h.CodecTag != c.tag || string(payload) != good {
						t.Errorf("Redis holds %q, %v after the reload; want a frame of %q", raw, err, good)
					}
					if ttl, err := servers[node].Do(ctx, "PTTL", rk); err != nil || ttl.(int64) <= 0 {
						t.Errorf("PTTL after the repair = %v, %v; want a TTL", ttl, err)
					}
					// From now on: a near hit here, a shared hit elsewhere, no load.
					waitLocal(t, c, key)
					before, calls = c.Stats(), e.src.calls.Load()
					if v, err := c.Get(ctx, key); err != nil || v != good || c.Stats().LocalHits != before.LocalHits+1 {
						t.Errorf("next Get = %q, %v, local hits +%d; want a near hit", v, err, c.Stats().LocalHits-before.LocalHits)
					}
					bb := bare.Stats()
					if v, err := bare.Get(ctx, key); err != nil || v != good || bare.Stats().RemoteHits != bb.RemoteHits+1 {
						t.Errorf("bare Get after the repair = %q, %v; want the repaired value from Redis", v, err)
					}
					if e.src.calls.Load() != calls || c.Stats().DecodeErrors != before.DecodeErrors {
						t.Error("the repaired value was loaded or failed to decode again")
					}

					// GetMany: also a miss, reloaded once, counted; the value returned
					// and put in this process's near-cache, and the bytes in Redis
					// replaced (a plain SET for undecodable bytes, where a batch fill is
					// otherwise SET NX): the other process then hits in Redis.
					key = fmt.Sprint("many:", i)
					e.src.put(key, good)
					rk = e.redis().Key(key)
					redisCLISet(t, servers[c.shared.Owner(key)], rk, bad.raw)
					for j, cc := range []*Cache[string]{c, other} {
						before, calls := cc.Stats(), e.src.calls.Load()
						m, err := cc.GetMany(ctx, []string{key})
						if err != nil || len(m) != 1 || m[key] != good {
							t.Fatalf("GetMany over undecodable bytes = %q, %v; want the loaded value", m, err)
						}
						wantCalls, wantDecodeErrs, wantHits := int64(1), uint64(1), uint64(0)
						if j == 1 { // after the repair
							wantCalls, wantDecodeErrs, wantHits = 0, 0, 1
						}
						if n := e.src.calls.Load() - calls; n != wantCalls {
							t.Errorf("GetMany %d: Loader calls +%d, want +%d", j, n, wantCalls)
						}
						if s := cc.Stats(); s.DecodeErrors != before.DecodeErrors+wantDecodeErrs || s.RemoteHits != before.RemoteHits+wantHits {
							t.Errorf("GetMany %d: stats %+v, before %+v; want DecodeErrors +%d, RemoteHits +%d", j, s, before, wantDecodeErrs, wantHits)
						}
						// The repair and the near-cache store follow the call's return
						// (see announce); no waitLocal here, whose retry Get would repair
						// the bytes.
						waitSettled(t, cc)
						if raw, _ := e.raw(t, key); raw == bad.raw {
							t.Errorf("after GetMany %d Redis still holds the undecodable bytes %q", j, raw)
						}
						if v, _ := nearHas(cc, key); v != good {
							t.Errorf("near-cache holds %q after GetMany; want the loaded value", v)
						}
					}
				})
			}
		}},

		{"Loader panic", func(o *Options[string]) {
			// See "Loader error": the panicked load releases its lease.
			o.LeaseTTL = 300 * time.Millisecond
		}, func(t *testing.T, e *badEnv) {
			c := e.c
			e.src.put("k", "v")
			release := make(chan struct{})
			var panicking atomic.Bool
			panicking.Store(true)
			var loads atomic.Int64
			e.setHook(func(context.Context, string) error {
				loads.Add(1)
				if panicking.Load() {
					<-release // callers arriving meanwhile join this load
					panic("kaboom")
				}
				return nil
			})
			const waiters = 8
			errs := make(chan error, waiters)
			for range waiters {
				go func() { _, err := c.Get(ctx, "k"); errs <- err }()
			}
			waitFor(t, "the load and its waiters", func() bool { return loads.Load() >= 1 && c.Stats().LocalMisses >= waiters })
			close(release)
			for range waiters {
				err := <-errs
				var pe *PanicError
				if !errors.As(err, &pe) || pe.Value != "kaboom" || !strings.Contains(string(pe.Stack), "TestBadInputTable") {
					t.Fatalf("waiter got %v; want a *PanicError with the Loader's stack", err)
				}
			}
			t.Logf("%d waiters, %d panicking loads", waiters, loads.Load())
			if s := c.Stats(); s.LoadErrors != uint64(loads.Load()) {
				t.Errorf("LoadErrors = %d, want %d", s.LoadErrors, loads.Load())
			}
			e.assertNowhere(t, c, "k")
			panicking.Store(false)
			calls := e.src.calls.Load()
			if v, err := c.Get(ctx, "k"); err != nil || v != "v" {
				t.Fatalf("Get after the panic = %q, %v; the panic must not be cached", v, err)
			}
			if e.src.calls.Load() != calls+1 {
				t.Error("the Get after the panic did not call the Loader")
			}
		}},

		{"Loader error", func(o *Options[string]) { o.LeaseTTL = 300 * time.Millisecond }, func(t *testing.T, e *badEnv) {
			c := e.c
			e.src.put("k", "v")
			boom := errors.New("db down")
			e.src.err = boom
			if _, err := c.Get(ctx, "k"); !errors.Is(err, boom) {
				t.Fatalf("Get = %v, want the Loader's error", err)
			}
			if m, err := c.GetMany(ctx, []string{"k"}); !errors.Is(err, boom) || len(m) != 0 {
				t.Fatalf("GetMany = %v, %v; want the Loader's error", m, err)
			}
			e.assertNowhere(t, c, "k")
			if s := c.Stats(); s.LoadErrors != 2 {
				t.Errorf("LoadErrors = %d, want 2", s.LoadErrors)
			}
			// The failed load released the lease it took: the next Get of the key,
			// here or in any process, loads at once rather than waiting LeaseTTL.
			if l, err := e.servers[c.shared.Owner("k")].Do(ctx, "GET", e.redis().Key("k")); err == nil {
				t.Errorf("the failed load left its lease %v in Redis", l)
			}
			e.src.mu.Lock()
			e.src.err = nil
			e.src.mu.Unlock()
			calls, before := e.src.calls.Load(), c.Stats()
			start := time.Now()
			if v, err := c.Get(ctx, "k"); err != nil || v != "v" {
				t.Fatalf("Get after the error = %q, %v", v, err)
			}
			if e.src.calls.Load() != calls+1 {
				t.Error("the error was cached: the next Get did not call the Loader")
			}
			if w := c.Stats().LeaseWaits - before.LeaseWaits; w != 0 {
				t.Errorf("the Get after a failed load waited for a lease (%v)", time.Since(start))
			}
		}},

		{"cancelled ctx", nil, func(t *testing.T, e *badEnv) {
			c := e.c
			e.src.put("k", "v")
			cancelled, cancel := context.WithCancel(ctx)
			cancel()
			expired, cancel2 := context.WithDeadline(ctx, time.Now().Add(-time.Second))
			defer cancel2()
			before, calls := c.Stats(), e.src.calls.Load()
			for _, cx := range []context.Context{cancelled, expired} {
				if _, err := c.Get(cx, "k"); !errors.Is(err, cx.Err()) {
					t.Errorf("Get = %v, want %v", err, cx.Err())
				}
				if _, err := c.GetMany(cx, []string{"k"}); !errors.Is(err, cx.Err()) {
					t.Errorf("GetMany = %v, want %v", err, cx.Err())
				}
			}
			if s := c.Stats(); e.src.calls.Load() != calls || s.Loads != before.Loads || s.RemoteMisses != before.RemoteMisses {
				t.Errorf("a load started: Loader calls +%d, stats %+v", e.src.calls.Load()-calls, s)
			}
			e.assertNowhere(t, c, "k")
		}},

		{"Close twice, then every call", nil, func(t *testing.T, e *badEnv) {
			c := e.c
			e.src.put("k", "v")
			if _, err := c.Get(ctx, "k"); err != nil {
				t.Fatal(err)
			}
			waitLocal(t, c, "k") // a near-cache hit must not outlive Close either
			err1 := c.Close()
			err2 := c.Close()
			if err1 != nil || err2 != err1 {
				t.Fatalf("Close, Close = %v, %v; want nil twice", err1, err2)
			}
			calls := e.src.calls.Load()
			for name, call := range map[string]func() error{
				"Get (near-cached key)": func() error { _, err := c.Get(ctx, "k"); return err },
				"Get (cold key)":        func() error { _, err := c.Get(ctx, "cold"); return err },
				"Set":                   func() error { return c.Set(ctx, "k", "w") },
				"Delete":                func() error { return c.Delete(ctx, "k") },
				"GetMany":               func() error { _, err := c.GetMany(ctx, []string{"k", "cold"}); return err },
			} {
				if err := call(); !errors.Is(err, ErrClosed) {
					t.Errorf("%s after Close = %v, want ErrClosed", name, err)
				}
			}
			if s := c.Stats(); s.Loads != 1 || e.src.calls.Load() != calls {
				t.Errorf("after Close: stats %+v, Loader calls +%d", s, e.src.calls.Load()-calls)
			}
			if raw, _ := e.raw(t, "k"); !strings.HasSuffix(raw, "v") {
				t.Errorf("Redis holds %q for k after a Set and Delete on a closed Cache", raw)
			}
		}},

		{"Close while calls are in flight", nil, func(t *testing.T, e *badEnv) {
			c := e.c
			// A source with latency, cancelled by Close like a database call.
			e.setHook(func(ctx context.Context, _ string) error {
				tm := time.NewTimer(time.Millisecond)
				defer tm.Stop()
				select {
				case <-tm.C:
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			})
			const workers = 8
			var calls atomic.Int64
			var closed atomic.Bool
			var mu sync.Mutex
			outcomes := map[string]int{}
			note := func(op, k, v string, err error) {
				calls.Add(1)
				var o string
				switch {
				case err == nil:
					o = "value"
					if v != "v:"+k && v != "w:"+k {
						t.Errorf("%s(%s) = %q: not a value of the key", op, k, v)
					}
				case errors.Is(err, ErrNotFound):
					o = "ErrNotFound"
				case errors.Is(err, ErrClosed):
					o = "ErrClosed"
				case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
					o = "ctx error"
				default:
					t.Errorf("%s(%s) during Close = %v", op, k, err)
					o = "other"
				}
				mu.Lock()
				outcomes[o]++
				mu.Unlock()
			}
			var wg sync.WaitGroup
			for w := range workers {
				wg.Go(func() {
					for i := 0; ; i++ {
						k := fmt.Sprint("w", w, ":", i%40)
						if i%40 < 30 {
							e.src.put(k, "v:"+k) // the rest are absent at the source
						}
						after := closed.Load() // Close had returned before this call began
						var err error
						switch i % 4 {
						case 0, 1:
							var v string
							v, err = c.Get(ctx, k)
							note("Get", k, v, err)
						case 2:
							err = c.Set(ctx, k, "w:"+k)
							note("Set", k, "w:"+k, err)
						case 3:
							var m map[string]string
							m, err = c.GetMany(ctx, []string{k, k + "x"})
							if v, ok := m[k]; ok || err != nil {
								note("GetMany", k, v, err)
							} else {
								note("GetMany", k, "", ErrNotFound)
							}
						}
						if after {
							if !errors.Is(err, ErrClosed) {
								t.Errorf("call after Close = %v, want ErrClosed", err)
							}
							return
						}
					}
				})
			}
			waitFor(t, "calls in flight", func() bool { return calls.Load() > 300 })
			deadline := time.NewTimer(10 * time.Second)
			defer deadline.Stop()
			closeErr := make(chan error, 1)
			go func() { closeErr <- c.Close() }()
			select {
			case err := <-closeErr:
				if err != nil {
					t.Fatal(err)
				}
			case <-deadline.C:
				t.Fatal("Close hung with calls in flight")
			}
			closed.Store(true)
			done := make(chan struct{})
			go func() { wg.Wait(); close(done) }()
			select {
			case <-done:
			case <-deadline.C:
				t.Fatal("calls still running 10 s after Close began")
			}
			t.Logf("%d calls: %v", calls.Load(), outcomes)
		}},
	}

	for _, row := range rows {
		t.Run(row.name, func(t *testing.T) {
			e := &badEnv{servers: servers, src: newSource()}
			e.o = ringOpts[string](t, servers)
			// The ring's balance is beside the point here, and building it at the
			// default RingReplicas costs about 0.5 s per Cache under -race.
			e.o.RingReplicas = 400
			e.o.MaxKeySize = maxKey
			e.o.MaxValueSize = maxValue
			e.o.Loader = LoaderFunc[string](func(ctx context.Context, k string) (string, error) {
				if h := e.hook.Load(); h != nil && *h != nil {
					if err := (*h)(ctx, k); err != nil {
						return "", err
					}
				}
				return e.src.Load(ctx, k)
			})
			if row.opts != nil {
				row.opts(&e.o)
			}
			e.c = newCache(t, e.o)
			row.run(t, e)
		})
	}
}
