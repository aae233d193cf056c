package tieredotel_test

import (
	"context"
	"errors"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.uber.org/goleak"

	"github.com/tieredcache/tiered"
	"github.com/tieredcache/tiered/tieredotel"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// replica is one process's view: a Cache recording into its own MeterProvider,
// read by a ManualReader.
type replica struct {
	name   string
	cache  *tiered.Cache[string]
	m      *tieredotel.Metrics
	reader *sdkmetric.ManualReader
	src    *source
}

// newReplica creates a Metrics named name on a MeterProvider of its own, a Cache with
// opts recording into it (its Loader is src), and observes the Cache. Everything is
// closed at the end of the test.
func newReplica(t *testing.T, name string, src *source, opts tiered.Options[string]) *replica {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() {
		if err := mp.Shutdown(context.Background()); err != nil {
			t.Errorf("MeterProvider.Shutdown: %v", err)
		}
	})
	m, err := tieredotel.New(mp, tieredotel.Options{Cache: name})
	if err != nil {
		t.Fatalf("tieredotel.New: %v", err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Metrics.Close: %v", err)
		}
	})
	opts.Loader = src
	opts.Recorder = m
	c, err := tiered.New(opts)
	if err != nil {
		t.Fatalf("tiered.New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := m.Observe(c); err != nil {
		t.Fatalf("Observe: %v", err)
	}
	return &replica{name: name, cache: c, m: m, reader: reader, src: src}
}

// ringOpts returns Options over addrs (the Cache dials them itself), in a namespace of
// the test's own.
func ringOpts(t *testing.T, addrs []string) tiered.Options[string] {
	return tiered.Options[string]{
		Addrs:     addrs,
		Namespace: "otel" + strings.ReplaceAll(t.Name(), "/", "_"),
		Timeout:   2 * time.Second, // generous: -race on a loaded 2-core machine
	}
}

// source is a Loader over a map, counting calls; a key in block waits for its channel
// to close (after closing entered[key]).
type source struct {
	mu      sync.Mutex
	m       map[string]string
	block   map[string]chan struct{}
	entered map[string]chan struct{}
	calls   atomic.Int64
}

func newSource(kvs ...string) *source {
	s := &source{m: map[string]string{}, block: map[string]chan struct{}{}, entered: map[string]chan struct{}{}}
	for i := 0; i+1 < len(kvs); i += 2 {
		s.m[kvs[i]] = kvs[i+1]
	}
	return s
}

// blockOn makes loads of key wait until release is called; entered is closed when the
// first such load starts.
func (s *source) blockOn(key string) (entered <-chan struct{}, release func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, e := make(chan struct{}), make(chan struct{})
	s.block[key], s.entered[key] = b, e
	return e, sync.OnceFunc(func() { close(b) })
}

func (s *source) Load(ctx context.Context, key string) (string, error) {
	s.calls.Add(1)
	s.mu.Lock()
	b, e := s.block[key], s.entered[key]
	s.mu.Unlock()
	if b != nil {
		select {
		case <-e:
		default:
			close(e)
		}
		select {
		case <-b:
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.m[key]
	if !ok {
		return "", tiered.ErrNotFound
	}
	return v, nil
}

// waitFor polls cond every millisecond until it holds; it fails the test if it does
// not hold within 10 s (far longer than anything waited for takes, even with -race on
// a loaded 2-core machine).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		<-tick.C
	}
}

// allSubscribed reports whether c follows n nodes, every subscription confirmed.
func allSubscribed(c *tiered.Cache[string], n int) bool {
	nodes := c.Nodes()
	if len(nodes) != n {
		return false
	}
	for _, ns := range nodes {
		if !ns.Subscribed {
			return false
		}
	}
	return true
}

// snapshot is one collection of a replica's instruments, by name.
type snapshot struct {
	t     *testing.T
	cache attribute.KeyValue
	m     map[string]metricdata.Metrics
}

func (r *replica) collect(t *testing.T) snapshot {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatalf("Collect: %v", err)
	}
	s := snapshot{t: t, cache: tieredotel.AttrCache.String(r.name), m: map[string]metricdata.Metrics{}}
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != tieredotel.ScopeName {
			t.Errorf("scope %q, want %q", sm.Scope.Name, tieredotel.ScopeName)
		}
		for _, m := range sm.Metrics {
			if _, dup := s.m[m.Name]; dup {
				t.Errorf("instrument %s collected twice", m.Name)
			}
			s.m[m.Name] = m
		}
	}
	return s
}

// names returns the names of the instruments collected, sorted.
func (s snapshot) names() []string {
	var out []string
	for n := range s.m {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// get returns the instrument name; it fails the test if it was not collected.
func (s snapshot) get(name string) metricdata.Metrics {
	s.t.Helper()
	m, ok := s.m[name]
	if !ok {
		s.t.Fatalf("instrument %s not collected (have %v)", name, s.names())
	}
	return m
}

// attrs is the attribute set of a point: the cache's and kvs.
func (s snapshot) attrs(kvs ...attribute.KeyValue) attribute.Set {
	return attribute.NewSet(append([]attribute.KeyValue{s.cache}, kvs...)...)
}

// int64Points returns the points of a counter or gauge, checking that each carries
// the tiered.cache attribute.
func (s snapshot) int64Points(name string) []metricdata.DataPoint[int64] {
	s.t.Helper()
	var pts []metricdata.DataPoint[int64]
	switch d := s.get(name).Data.(type) {
	case metricdata.Sum[int64]:
		pts = d.DataPoints
	case metricdata.Gauge[int64]:
		pts = d.DataPoints
	default:
		s.t.Fatalf("%s: %T, want an int64 Sum or Gauge", name, d)
	}
	for _, p := range pts {
		if v, _ := p.Attributes.Value(tieredotel.AttrCache); v != s.cache.Value {
			s.t.Errorf("%s: point %v without %v", name, p.Attributes.ToSlice(), s.cache)
		}
	}
	return pts
}

// value returns the value of name's point whose attributes are exactly the cache's
// and kvs; it fails the test if there is none.
func (s snapshot) value(name string, kvs ...attribute.KeyValue) int64 {
	s.t.Helper()
	want := s.attrs(kvs...)
	for _, p := range s.int64Points(name) {
		if p.Attributes.Equals(&want) {
			return p.Value
		}
	}
	s.t.Fatalf("%s: no point with %v", name, want.ToSlice())
	return 0
}

// floatValue returns the value of the float64 gauge name's point whose attributes are
// exactly the cache's and kvs; it fails the test if there is none.
func (s snapshot) floatValue(name string, kvs ...attribute.KeyValue) float64 {
	s.t.Helper()
	g, ok := s.get(name).Data.(metricdata.Gauge[float64])
	if !ok {
		s.t.Fatalf("%s: %T, want a float64 Gauge", name, s.get(name).Data)
	}
	want := s.attrs(kvs...)
	for _, p := range g.DataPoints {
		if p.Attributes.Equals(&want) {
			return p.Value
		}
	}
	s.t.Fatalf("%s: no point with %v", name, want.ToSlice())
	return 0
}

// total returns the sum of name's points (0 if name was not collected: a synchronous
// instrument that recorded nothing is not).
func (s snapshot) total(name string) int64 {
	s.t.Helper()
	if _, ok := s.m[name]; !ok {
		return 0
	}
	var n int64
	for _, p := range s.int64Points(name) {
		n += p.Value
	}
	return n
}

// histPoints returns the points of a histogram.
func (s snapshot) histPoints(name string) []metricdata.HistogramDataPoint[float64] {
	s.t.Helper()
	h, ok := s.get(name).Data.(metricdata.Histogram[float64])
	if !ok {
		s.t.Fatalf("%s: %T, want a float64 Histogram", name, s.get(name).Data)
	}
	return h.DataPoints
}

// count returns the count of name's histogram point with the cache's attributes and
// kvs (0 if there is none).
func (s snapshot) count(name string, kvs ...attribute.KeyValue) uint64 {
	s.t.Helper()
	want := s.attrs(kvs...)
	for _, p := range s.histPoints(name) {
		if p.Attributes.Equals(&want) {
			return p.Count
		}
	}
	return 0
}

// countAll returns the total count of name's histogram points (0 if not collected).
func (s snapshot) countAll(name string) uint64 {
	s.t.Helper()
	if _, ok := s.m[name]; !ok {
		return 0
	}
	var n uint64
	for _, p := range s.histPoints(name) {
		n += p.Count
	}
	return n
}

// get is Get that fails the test on an error other than ErrNotFound.
func get(t *testing.T, c *tiered.Cache[string], key string) string {
	t.Helper()
	v, err := c.Get(context.Background(), key)
	if err != nil && !errors.Is(err, tiered.ErrNotFound) {
		t.Fatalf("Get(%q): %v", key, err)
	}
	return v
}
