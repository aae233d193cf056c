package tieredprom_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/tieredcache/tiered"
	"github.com/tieredcache/tiered/tieredprom"
)

// The cache here has only a Loader, so that the example runs without Redis; a cache
// with Options.Addrs is wired the same way, and adds the shared tier's and the nodes'
// metrics. A service registers on prometheus.DefaultRegisterer and serves it with
// http.Handle("/metrics", promhttp.Handler()).
func Example() {
	users := map[string]string{"42": "Ada Lovelace", "43": "Grace Hopper"}
	m := tieredprom.New(tieredprom.Options{Cache: "users"})
	c, err := tiered.New(tiered.Options[string]{
		Loader: tiered.LoaderFunc[string](func(ctx context.Context, id string) (string, error) {
			if name, ok := users[id]; ok {
				return name, nil
			}
			return "", tiered.ErrNotFound
		}),
		Recorder: m,
	})
	if err != nil {
		panic(err)
	}
	defer c.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(m.Collector(c))

	ctx := context.Background()
	for _, id := range []string{"42", "43", "7", "42"} { // the second "42" is a near hit
		c.Get(ctx, id)
	}

	families, err := reg.Gather()
	if err != nil {
		panic(err)
	}
	var text bytes.Buffer
	for _, f := range families {
		expfmt.NewEncoder(&text, expfmt.NewFormat(expfmt.TypeTextPlain)).Encode(f)
	}
	for _, line := range strings.Split(text.String(), "\n") {
		for _, prefix := range []string{
			"tiered_near_hits_total",
			"tiered_loads_total",
			"tiered_load_not_found_total",
			"tiered_load_duration_seconds_count",
			"tiered_get_duration_seconds_count{cache=\"users\",tier=\"loader\"}",
		} {
			if strings.HasPrefix(line, prefix) {
				fmt.Println(line)
			}
		}
	}
	// Output:
	// tiered_get_duration_seconds_count{cache="users",tier="loader"} 3
	// tiered_load_duration_seconds_count{cache="users",outcome="error"} 0
	// tiered_load_duration_seconds_count{cache="users",outcome="not_found"} 1
	// tiered_load_duration_seconds_count{cache="users",outcome="ok"} 2
	// tiered_load_not_found_total{cache="users"} 1
	// tiered_loads_total{cache="users"} 3
	// tiered_near_hits_total{cache="users"} 1
}
