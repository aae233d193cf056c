package tieredprom_test

// TestMain, and the helpers that read metrics back: over HTTP from promhttp, parsed
// by expfmt (scrape), or from a Gatherer (gather).

import (
	"errors"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// families are metric families by name.
type families map[string]*dto.MetricFamily

const (
	counter   = dto.MetricType_COUNTER
	gauge     = dto.MetricType_GAUGE
	histogram = dto.MetricType_HISTOGRAM
)

// scrape serves g with promhttp on a test server, GETs /metrics over HTTP and parses
// the exposition the handler chose.
func scrape(t testing.TB, g prometheus.Gatherer) families {
	t.Helper()
	srv := httptest.NewServer(promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorHandling: promhttp.HTTPErrorOnError}))
	defer srv.Close() // closes the client's idle connections too
	resp, err := srv.Client().Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /metrics: %s\n%s", resp.Status, body)
	}
	format := expfmt.ResponseFormat(resp.Header)
	if format.FormatType() != expfmt.TypeTextPlain {
		t.Fatalf("GET /metrics: Content-Type %q, want the text format", resp.Header.Get("Content-Type"))
	}
	dec := expfmt.NewDecoder(resp.Body, format)
	fams := families{}
	for {
		var f dto.MetricFamily
		if err := dec.Decode(&f); errors.Is(err, io.EOF) {
			return fams
		} else if err != nil {
			t.Fatalf("parse /metrics: %v", err)
		}
		fams[f.GetName()] = &f
	}
}

// gather gathers g directly.
func gather(t testing.TB, g prometheus.Gatherer) families {
	t.Helper()
	got, err := g.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	fams := families{}
	for _, f := range got {
		fams[f.GetName()] = f
	}
	return fams
}

// lint fails the test on any problem promlint finds in c's metrics.
func lint(t testing.TB, c prometheus.Collector) {
	t.Helper()
	problems, err := testutil.CollectAndLint(c)
	if err != nil {
		t.Fatalf("CollectAndLint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// checkType fails the test unless family name exists with type typ.
func (fs families) checkType(t testing.TB, name string, typ dto.MetricType) {
	t.Helper()
	f, ok := fs[name]
	if !ok {
		t.Errorf("%s: no such family", name)
		return
	}
	if f.GetType() != typ {
		t.Errorf("%s: type %v, want %v", name, f.GetType(), typ)
	}
}

// checkCacheLabel fails the test unless every metric carries cache="cache".
func (fs families) checkCacheLabel(t testing.TB, cache string) {
	t.Helper()
	for name, f := range fs {
		for _, m := range f.GetMetric() {
			if got, ok := label(m, "cache"); !ok || got != cache {
				t.Errorf("%s%v: cache label %q, want %q", name, m.GetLabel(), got, cache)
			}
		}
	}
}

func label(m *dto.Metric, name string) (string, bool) {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue(), true
		}
	}
	return "", false
}

// metrics returns the metrics of family name whose labels include the pairs
// (name, value, name, value...).
func (fs families) metrics(name string, pairs ...string) []*dto.Metric {
	var out []*dto.Metric
	f := fs[name]
	if f == nil {
		return nil
	}
next:
	for _, m := range f.GetMetric() {
		for i := 0; i+1 < len(pairs); i += 2 {
			if v, ok := label(m, pairs[i]); !ok || v != pairs[i+1] {
				continue next
			}
		}
		out = append(out, m)
	}
	return out
}

// count returns how many series of family name match pairs.
func (fs families) count(t testing.TB, name string, pairs ...string) int {
	t.Helper()
	return len(fs.metrics(name, pairs...))
}

// value returns the sum of the counters or gauges of family name that match pairs;
// it fails the test if none does.
func (fs families) value(t testing.TB, name string, pairs ...string) float64 {
	t.Helper()
	ms := fs.metrics(name, pairs...)
	if len(ms) == 0 {
		t.Fatalf("%s%v: no such series", name, pairs)
	}
	var sum float64
	for _, m := range ms {
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		default:
			t.Fatalf("%s%v: not a counter or gauge", name, pairs)
		}
	}
	return sum
}

// histCount returns the summed sample count of the histograms of family name that
// match pairs; it fails the test if none does.
func (fs families) histCount(t testing.TB, name string, pairs ...string) uint64 {
	t.Helper()
	var n uint64
	for _, m := range fs.hists(t, name, pairs...) {
		n += m.GetHistogram().GetSampleCount()
	}
	return n
}

// histSum returns the summed sample sum of the matching histograms.
func (fs families) histSum(t testing.TB, name string, pairs ...string) float64 {
	t.Helper()
	var sum float64
	for _, m := range fs.hists(t, name, pairs...) {
		sum += m.GetHistogram().GetSampleSum()
	}
	return sum
}

// histBucket returns the summed cumulative count of the bucket le of the matching
// histograms.
func (fs families) histBucket(t testing.TB, name string, le float64, pairs ...string) float64 {
	t.Helper()
	var n uint64
	for _, m := range fs.hists(t, name, pairs...) {
		found := false
		for _, b := range m.GetHistogram().GetBucket() {
			if math.Abs(b.GetUpperBound()-le) < 1e-12 {
				n += b.GetCumulativeCount()
				found = true
			}
		}
		if !found {
			t.Fatalf("%s%v: no bucket le=%v", name, pairs, le)
		}
	}
	return float64(n)
}

func (fs families) hists(t testing.TB, name string, pairs ...string) []*dto.Metric {
	t.Helper()
	ms := fs.metrics(name, pairs...)
	if len(ms) == 0 {
		t.Fatalf("%s%v: no such series", name, pairs)
	}
	for _, m := range ms {
		if m.Histogram == nil {
			t.Fatalf("%s%v: not a histogram", name, pairs)
		}
	}
	return ms
}
