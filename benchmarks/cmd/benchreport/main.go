// Command benchreport reads the output of the benchmarks module's workloads (go test
// -bench, any -count) and prints markdown: the median time per operation of every
// system on every workload with its ratio to the first system's (tiered), the fastest
// system per workload, and the stale reads of the coherence workload summed over all
// runs.
//
//	benchreport results/*.txt
//	benchreport -svg charts results/*.txt
//
// With -svg DIR it also draws the headline table as DIR/headline.svg and the
// stale-reads table as DIR/staleness.svg (see chart.go), and the markdown shows them
// with image links to those paths: DIR as given, so relative to the markdown's
// directory.
//
// The fault workload (BenchmarkFaults/fault=<fault>/sys=<system>) is left out of those;
// with -faults, benchreport prints only its tables instead, one per fault (faults.go).
//
//	benchreport -faults results/*.txt
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
)

func main() {
	svgDir := flag.String("svg", "", "also draw the charts into `DIR` and link them from the markdown")
	faultTables := flag.Bool("faults", false, "print only the fault workload's tables")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: benchreport [-svg DIR] FILE...\n       benchreport -faults FILE...")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	var all []result
	for _, name := range flag.Args() {
		f, err := os.Open(name)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		rs, err := parse(f)
		f.Close()
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
			os.Exit(1)
		}
		all = append(all, rs...)
	}
	if *faultTables {
		if err := writeFaults(os.Stdout, all); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	_, all = splitFaults(all)
	if *svgDir != "" {
		if err := writeCharts(*svgDir, all); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	if err := write(os.Stdout, all, *svgDir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// result is one line of benchmark output: Benchmark<workload>/sys=<system>-P.
type result struct {
	workload, system string
	values           map[string]float64 // by unit
}

func parse(r io.Reader) ([]result, error) {
	var out []result
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") || len(f)%2 != 0 {
			continue
		}
		name := strings.TrimPrefix(f[0], "Benchmark")
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i] // the GOMAXPROCS suffix
			}
		}
		workload, system, ok := strings.Cut(name, "/sys=")
		if !ok {
			continue
		}
		res := result{workload: workload, system: system, values: map[string]float64{}}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return nil, fmt.Errorf("%q: %v", sc.Text(), err)
			}
			res.values[f[i+1]] = v
		}
		out = append(out, res)
	}
	return out, sc.Err()
}

// table groups values by workload and system, both in order of first appearance.
type table struct {
	workloads, systems []string
	vals               map[[2]string][]float64
}

func group(rs []result, unit string, keep func(result) bool) table {
	t := table{vals: map[[2]string][]float64{}}
	for _, r := range rs {
		v, ok := r.values[unit]
		if !ok || !keep(r) {
			continue
		}
		if !slices.Contains(t.workloads, r.workload) {
			t.workloads = append(t.workloads, r.workload)
		}
		if !slices.Contains(t.systems, r.system) {
			t.systems = append(t.systems, r.system)
		}
		k := [2]string{r.workload, r.system}
		t.vals[k] = append(t.vals[k], v)
	}
	return t
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func duration(ns float64) string {
	switch {
	case ns == 0:
		return "0"
	case ns >= 1e6:
		return fmt.Sprintf("%.2f ms", ns/1e6)
	case ns >= 1e3:
		return fmt.Sprintf("%.1f µs", ns/1e3)
	default:
		return fmt.Sprintf("%.0f ns", ns)
	}
}

// write prints the markdown; if charts is not "", with links to the charts that
// writeCharts drew there.
func write(w io.Writer, rs []result, charts string) error {
	bw := bufio.NewWriter(w)
	t := group(rs, "ns/op", func(result) bool { return true })
	if len(t.systems) == 0 {
		return fmt.Errorf("no benchmark results")
	}
	base := t.systems[0]
	if charts != "" {
		fmt.Fprintf(bw, "![Median time per operation of each system over %s's, per workload](%s)\n\n", base, path.Join(charts, headlineSVG))
	}
	fmt.Fprintf(bw, "Median time per operation (ns/op over %s runs); in parentheses, the system's time over %s's: above 1.00, %s is faster.\n\n",
		runs(t), base, base)
	fmt.Fprintf(bw, "| workload | %s |\n|---|%s\n", strings.Join(t.systems, " | "), strings.Repeat("---|", len(t.systems)))
	for _, wl := range t.workloads {
		fmt.Fprintf(bw, "| %s |", wl)
		b, hasBase := t.vals[[2]string{wl, base}]
		for _, sys := range t.systems {
			v, ok := t.vals[[2]string{wl, sys}]
			switch {
			case !ok:
				fmt.Fprint(bw, " – |")
			case sys == base || !hasBase:
				fmt.Fprintf(bw, " %s |", duration(median(v)))
			default:
				fmt.Fprintf(bw, " %s (%.2f) |", duration(median(v)), median(v)/median(b))
			}
		}
		fmt.Fprintln(bw)
	}

	fmt.Fprintln(bw)
	for _, wl := range t.workloads {
		best, bestSys := 0.0, ""
		for _, sys := range t.systems {
			if v, ok := t.vals[[2]string{wl, sys}]; ok && (bestSys == "" || median(v) < best) {
				best, bestSys = median(v), sys
			}
		}
		fmt.Fprintf(bw, "- %s: fastest median, %s.\n", wl, bestSys)
	}

	writeCPU(bw, rs, base)

	coh := func(r result) bool { return r.workload == "Coherence" }
	reads := group(rs, "reads", coh)
	if len(reads.systems) == 0 {
		return bw.Flush()
	}
	stale, stale10, stale1 := group(rs, "stale-reads", coh), group(rs, "stale-reads-10ms", coh), group(rs, "stale-reads-1ms", coh)
	age, ops := group(rs, "max-stale-ms", coh), group(rs, "ops/s", coh)
	fmt.Fprintf(bw, "\nStale reads in the coherence workload, summed over %s runs. A read is stale with respect to Δ when the write that replaced the value it returned had been acknowledged more than Δ before the read began; max staleness is the oldest replaced value any read returned, whatever Δ.\n\n", runs(reads))
	if charts != "" {
		fmt.Fprintf(bw, "![Stale reads in the coherence workload, %% of the reads checked, per system and Δ](%s)\n\n", path.Join(charts, stalenessSVG))
	}
	fmt.Fprintln(bw, "| system | reads checked | stale reads, Δ = 100 ms | stale % | stale, Δ = 10 ms | stale, Δ = 1 ms | max staleness | median ops/s |")
	fmt.Fprintln(bw, "|---|---|---|---|---|---|---|---|")
	var zero []string
	for _, sys := range reads.systems {
		n, s := sum(reads, "Coherence", sys), sum(stale, "Coherence", sys)
		pct := 0.0
		if n > 0 {
			pct = 100 * s / n
		}
		if s == 0 {
			zero = append(zero, sys)
		}
		maxAge := slices.Max(append([]float64{0}, age.vals[[2]string{"Coherence", sys}]...))
		fmt.Fprintf(bw, "| %s | %.0f | %.0f | %.2f | %.0f | %.0f | %s | %.0f |\n",
			sys, n, s, pct, sum(stale10, "Coherence", sys), sum(stale1, "Coherence", sys), duration(1e6*maxAge), median(ops.vals[[2]string{"Coherence", sys}]))
	}
	fmt.Fprintf(bw, "\nZero stale reads at Δ = 100 ms: %s.\n", strings.Join(zero, ", "))
	return bw.Flush()
}

// writeCPU prints the CPU time per operation of the runs that report it (cpu-ns/op,
// the benchmark process; redis-cpu-ns/op, the Redis servers): the median of each
// run's sum, then the medians of each part, and the sum's ratio to base's.
func writeCPU(w io.Writer, rs []result, base string) {
	self, redis := group(rs, "cpu-ns/op", func(result) bool { return true }), group(rs, "redis-cpu-ns/op", func(result) bool { return true })
	if len(self.systems) == 0 {
		return
	}
	fmt.Fprintf(w, "\nCPU time per operation (median over %s runs of the benchmark process's CPU time plus the Redis servers', in the timed region), then the process's and the servers' medians; in parentheses, the total over %s's. It moves less than the time per operation with what else the shared machine is doing.\n\n", runs(self), base)
	fmt.Fprintf(w, "| workload | %s |\n|---|%s\n", strings.Join(self.systems, " | "), strings.Repeat("---|", len(self.systems)))
	total := func(wl, sys string) ([]float64, bool) {
		k := [2]string{wl, sys}
		s, r := self.vals[k], redis.vals[k]
		if len(s) == 0 || len(s) != len(r) {
			return nil, false
		}
		t := make([]float64, len(s))
		for i := range s {
			t[i] = s[i] + r[i]
		}
		return t, true
	}
	for _, wl := range self.workloads {
		fmt.Fprintf(w, "| %s |", wl)
		b, hasBase := total(wl, base)
		for _, sys := range self.systems {
			t, ok := total(wl, sys)
			switch {
			case !ok:
				fmt.Fprint(w, " – |")
			case sys == base || !hasBase:
				fmt.Fprintf(w, " %s = %s + %s |", duration(median(t)), duration(median(self.vals[[2]string{wl, sys}])), duration(median(redis.vals[[2]string{wl, sys}])))
			default:
				fmt.Fprintf(w, " %s = %s + %s (%.2f) |", duration(median(t)), duration(median(self.vals[[2]string{wl, sys}])), duration(median(redis.vals[[2]string{wl, sys}])), median(t)/median(b))
			}
		}
		fmt.Fprintln(w)
	}
}

// sum adds up the values of one cell of t.
func sum(t table, workload, system string) float64 {
	var n float64
	for _, v := range t.vals[[2]string{workload, system}] {
		n += v
	}
	return n
}

// runs describes how many runs each cell has ("6", or "4-6" if they differ).
func runs(t table) string {
	lo, hi := -1, 0
	for _, v := range t.vals {
		if lo < 0 || len(v) < lo {
			lo = len(v)
		}
		hi = max(hi, len(v))
	}
	if lo == hi {
		return strconv.Itoa(hi)
	}
	return fmt.Sprintf("%d-%d", lo, hi)
}
