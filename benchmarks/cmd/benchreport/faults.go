package main

import (
	"bufio"
	"fmt"
	"io"
	"slices"
	"strings"
)

// faultPrefix begins the workload name of the fault workload's results:
// BenchmarkFaults/fault=<fault>/sys=<system>.
const faultPrefix = "Faults/fault="

func isFault(r result) bool { return strings.HasPrefix(r.workload, faultPrefix) }

// splitFaults returns the fault workload's results and the others.
func splitFaults(rs []result) (faults, others []result) {
	for _, r := range rs {
		if isFault(r) {
			faults = append(faults, r)
		} else {
			others = append(others, r)
		}
	}
	return faults, others
}

// staleTail is how close to the end of its run a last stale read must be for the
// table to say that stale reads went on until the end.
const staleTail = 100 // ms

// writeFaults prints one table per fault of the fault workload, in the order of
// the results: per system, the reads, errors and stale reads summed over the runs,
// and the worst run's max staleness and time from the fault's end to the last read
// stale past 100 ms.
func writeFaults(w io.Writer, rs []result) error {
	rs, _ = splitFaults(rs)
	if len(rs) == 0 {
		return fmt.Errorf("no results of the fault workload")
	}
	bw := bufio.NewWriter(w)
	var faults []string
	for _, r := range rs {
		if !slices.Contains(faults, r.workload) {
			faults = append(faults, r.workload)
		}
	}
	for i, wl := range faults {
		of := func(r result) bool { return r.workload == wl }
		reads := group(rs, "reads", of)
		if i > 0 {
			fmt.Fprintln(bw)
		}
		fmt.Fprintf(bw, "### %s\n\n", strings.TrimPrefix(wl, faultPrefix))
		fmt.Fprintf(bw, "Summed over %s runs; max staleness and fault end → last stale read: the worst run.\n\n", runs(reads))
		fmt.Fprintln(bw, "| system | reads | reads during the fault | read errors | stale reads, Δ = 100 ms | stale reads, Δ = 1 s | max staleness | fault end → last stale read (Δ = 100 ms) | writes acknowledged | write errors |")
		fmt.Fprintln(bw, "|---|---|---|---|---|---|---|---|---|---|")
		total := func(unit, sys string) string {
			return fmt.Sprintf("%.0f", sum(group(rs, unit, of), wl, sys))
		}
		for _, sys := range reads.systems {
			vals := func(unit string) []float64 { return group(rs, unit, of).vals[[2]string{wl, sys}] }
			maxAge := slices.Max(append([]float64{0}, vals("max-stale-ms")...))
			fmt.Fprintf(bw, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", sys,
				total("reads", sys), total("fault-reads", sys), total("read-errors", sys),
				total("stale-100ms", sys), total("stale-1s", sys), msDuration(maxAge),
				lastStale(vals("last-stale-ms"), vals("after-ms")),
				total("writes", sys), total("write-errors", sys))
		}
	}
	return bw.Flush()
}

// lastStale describes the latest of the runs' times from the fault's end to the last
// read stale past 100 ms (last; a run with none has no value), given how long each
// run went on after the fault's end (after).
func lastStale(last, after []float64) string {
	if len(last) == 0 {
		return "none at all"
	}
	worst := slices.Max(last)
	switch {
	case worst <= 0:
		return "none after the end"
	case len(after) > 0 && worst >= slices.Min(after)-staleTail:
		return fmt.Sprintf("%s (until the end of the run)", msDuration(worst))
	default:
		return msDuration(worst)
	}
}

// msDuration formats a duration given in milliseconds.
func msDuration(ms float64) string {
	switch {
	case ms == 0:
		return "0"
	case ms >= 1000:
		return fmt.Sprintf("%.2f s", ms/1000)
	case ms >= 1:
		return fmt.Sprintf("%.1f ms", ms)
	default:
		return fmt.Sprintf("%.0f µs", ms*1000)
	}
}
