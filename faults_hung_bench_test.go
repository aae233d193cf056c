package tiered

import (
	"testing"
	"time"
)

// BenchmarkHungNodeGetLatency measures what TestHungNodeGetLatency leaves out: the
// latency of Gets while one node of three is SIGSTOPped (see hungNode). Each iteration
// is a round: Gets with no node hung (the baseline, in the same process and on the
// same Cache), then the node hung until a second after its breaker opened, then
// resumed. Reported (milliseconds): p50 and p99 of the hung node's keys before its
// breaker opened (goal: p99 <= Timeout + 10 ms) and after (goal: well under Timeout),
// of the other nodes' keys meanwhile, and of every key with no node hung; and
// closed-p99/Timeout.
//
//	go test -run '^$' -bench HungNodeGetLatency -benchtime 3x .
func BenchmarkHungNodeGetLatency(b *testing.B) {
	const timeout = 100 * time.Millisecond
	h := newHungNode(b, timeout)
	for b.Loop() {
		h.baseline(300 * time.Millisecond)
		h.round(b, time.Second)
	}
	b.StopTimer()
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	for _, m := range []struct{ phase, unit string }{
		{phaseNoFault, "nofault"},
		{phaseClosed, "closed"},
		{phaseOpen, "open"},
		{phaseHealthy + phaseClosed, "healthy-closed"},
		{phaseHealthy + phaseOpen, "healthy-open"},
	} {
		ds := h.lat.get(m.phase)
		b.ReportMetric(ms(pct(ds, 50)), m.unit+"-p50-ms")
		b.ReportMetric(ms(pct(ds, 99)), m.unit+"-p99-ms")
	}
	b.ReportMetric(float64(pct(h.lat.get(phaseClosed), 99))/float64(timeout), "closed-p99/Timeout")
	h.errs.Range(func(k, v any) bool {
		b.Errorf("Get(%q) = %v", k, v)
		return true
	})
}
