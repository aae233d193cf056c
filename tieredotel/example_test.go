package tieredotel_test

import (
	"context"
	"fmt"
	"log"
	"slices"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/tieredcache/tiered"
	"github.com/tieredcache/tiered/tieredotel"
)

// A Cache without a shared tier (a near-cache in front of its Loader) recording into
// an OpenTelemetry SDK MeterProvider; a ManualReader stands in for the exporter.
func Example() {
	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer provider.Shutdown(context.Background())

	metrics, err := tieredotel.New(provider, tieredotel.Options{Cache: "users"})
	if err != nil {
		log.Fatal(err)
	}
	defer metrics.Close()
	cache, err := tiered.New(tiered.Options[string]{
		Loader: tiered.LoaderFunc[string](func(_ context.Context, id string) (string, error) {
			if id == "0" {
				return "", tiered.ErrNotFound
			}
			return "user " + id, nil
		}),
		Recorder: metrics,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()
	if _, err := metrics.Observe(cache); err != nil {
		log.Fatal(err)
	}

	ctx := context.Background()
	cache.Get(ctx, "42") // loaded
	cache.Get(ctx, "42") // a near-cache hit
	cache.Get(ctx, "0")  // absent at the source

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		log.Fatal(err)
	}
	printMetrics(rm, "tiered.near.hits", "tiered.near.misses", "tiered.load.keys", "tiered.get.duration")
	// Output:
	// tiered.get.duration{tiered.cache=users,tiered.get.outcome=not_found,tiered.tier=loader} count 1
	// tiered.get.duration{tiered.cache=users,tiered.get.outcome=ok,tiered.tier=loader} count 1
	// tiered.load.keys{tiered.cache=users} 2 {key}
	// tiered.near.hits{tiered.cache=users} 1 {get}
	// tiered.near.misses{tiered.cache=users} 2 {get}
}

// printMetrics prints the points of the named instruments, one line each, sorted.
func printMetrics(rm metricdata.ResourceMetrics, names ...string) {
	var lines []string
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if !slices.Contains(names, m.Name) {
				continue
			}
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					lines = append(lines, fmt.Sprintf("%s{%s} %d %s", m.Name, p.Attributes.Encoded(attribute.DefaultEncoder()), p.Value, m.Unit))
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					lines = append(lines, fmt.Sprintf("%s{%s} count %d", m.Name, p.Attributes.Encoded(attribute.DefaultEncoder()), p.Count))
				}
			}
		}
	}
	slices.Sort(lines)
	for _, l := range lines {
		fmt.Println(l)
	}
}
