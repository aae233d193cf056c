package tiered

// Waiting for another process's fill: the waiter marks the holder's placeholder, the
// fill publishes the key on the fill channel, with the value, and the waiter returns
// that value on the notice, without reading it again (a released lease's notice
// carries no value: the waiter reads the key, and takes the lease).

import (
	"context"
	"testing"
	"time"

	"github.com/tieredcache/tiered/internal/redistest"
)

func TestLeaseWaiterWokenByFill(t *testing.T) {
	servers := redistest.Start(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, how := range []string{"fill", "release", "set"} {
		t.Run(how, func(t *testing.T) {
			loading := make(chan struct{})
			release := make(chan struct{})
			oa := ringOpts[string](t, servers)
			oa.Namespace = "notify-" + how
			oa.Loader = LoaderFunc[string](func(ctx context.Context, key string) (string, error) {
				close(loading)
				<-release
				if how == "release" {
					return "", context.DeadlineExceeded // a failed load gives the lease up
				}
				return "from A", nil
			})
			a := newCache(t, oa)
			ob := oa
			ob.Loader = LoaderFunc[string](func(context.Context, string) (string, error) { return "from B", nil })
			ob.Timeout = 2 * time.Second
			ob.LeaseTTL = time.Minute
			b := newCache(t, ob)
			b.leasePoll = time.Minute // only a notice can wake B within the test
			go a.Get(ctx, "k")        //nolint:errcheck // its result is A's, checked through B
			<-loading
			got := make(chan string, 1)
			go func() {
				v, err := b.Get(ctx, "k")
				if err != nil {
					v = "error: " + err.Error()
				}
				got <- v
			}()
			waitFor(t, "B to wait for A's lease", func() bool { return b.Stats().LeaseWaits == 1 })
			// B has marked the placeholder once it waits on the notice; give it the
			// round trip (the notice is only published for a marked placeholder).
			waitFor(t, "B to mark A's placeholder", func() bool {
				v, err := servers[0].Do(ctx, "GET", redisKey(a, "k"))
				s, _ := v.(string)
				return err == nil && len(s) > 2 && s[len(s)-2:] == "|w"
			})
			want := "from A"
			sets := commandCalls(t, servers[0], "set") // SET NX GET: a lease taken, or a key read
			switch how {
			case "set":
				if err := a.Set(ctx, "k", "written"); err != nil {
					t.Fatal(err)
				}
				want = "written"
				close(release)
			case "release":
				want = "from B" // the lease is free again: B takes it and loads
				close(release)
			default:
				close(release)
			}
			select {
			case v := <-got:
				if v != want {
					t.Errorf("B.Get = %q, want %q", v, want)
				}
			case <-ctx.Done():
				t.Fatal("B never returned")
			}
			if st := b.Stats(); st.FillNotices != 1 {
				t.Errorf("B's FillNotices = %d, want 1 (woken by the %s, not by its fallback poll)", st.FillNotices, how)
			}
			// SET calls since A's load was released, those run by scripts included:
			// the fill's own (fill), or A's Set's (set), or B's fill (release, which
			// follows B.Get's return: see announce), plus one for each time B read the
			// key again (SET NX GET).
			waitSettled(t, b)
			switch sets = commandCalls(t, servers[0], "set") - sets; {
			case how == "fill" && sets != 1:
				t.Errorf("%d SETs after the fill; want 1, the fill's own: B read the key again although the notice carried its value", sets)
			case how != "fill" && sets < 2:
				t.Errorf("%d SETs after the %s; want at least 2: B must read the key again (the notice carries no value)", sets, how)
			}
		})
	}
}
