package main

import (
	"encoding/xml"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// input is benchmark output as the benchmarks module prints it: three systems, two
// runs of NearHit and Coherence, one of Stampede (which has no otter).
const input = `goos: linux
goarch: amd64
pkg: github.com/tieredcache/tiered/benchmarks
cpu: Test CPU
BenchmarkNearHit/sys=tiered-2         	 9000000	       126.0 ns/op	         0 loads/op	       100.0 near-hit-%	   7936508 ops/s	        48 B/op	       1 allocs/op
BenchmarkNearHit/sys=otter-2          	27000000	        42.00 ns/op	         0 loads/op	       100.0 near-hit-%	  23809524 ops/s	        48 B/op	       1 allocs/op
BenchmarkNearHit/sys=go-redis-2       	   28000	     43100 ns/op	         0 loads/op	         0 near-hit-%	     23202 ops/s	       100.0 shared-hit-%	       400 B/op	      19 allocs/op
BenchmarkNearHit/sys=tiered-2         	 9000000	       130.0 ns/op	         0 loads/op	       100.0 near-hit-%	   7692308 ops/s	        48 B/op	       1 allocs/op
BenchmarkNearHit/sys=otter-2          	27000000	        44.00 ns/op	         0 loads/op	       100.0 near-hit-%	  22727273 ops/s	        48 B/op	       1 allocs/op
BenchmarkNearHit/sys=go-redis-2       	   28000	     43900 ns/op	         0 loads/op	         0 near-hit-%	     22779 ops/s	       100.0 shared-hit-%	       400 B/op	      19 allocs/op
BenchmarkStampede/sys=tiered-2        	      50	   5030000 ns/op	         1.000 loads/op	       198.8 ops/s	   4511065 p50-ns	   6061538 p99-ns	    446592 B/op	    3096 allocs/op
BenchmarkStampede/sys=go-redis-2      	      50	  47970000 ns/op	       956.0 loads/op	        20.85 ops/s	  57461896 p50-ns	  68143867 p99-ns	   5934240 B/op	   68427 allocs/op
BenchmarkCoherence/sys=tiered-2       	  200000	     10400 ns/op	         0 loads/op	         6.820 max-stale-ms	    96310 ops/s	    224622 reads	         0 stale-%	         0 stale-reads	       268 stale-reads-1ms	         0 stale-reads-10ms	     1200 B/op	      20 allocs/op
BenchmarkCoherence/sys=otter-2        	  570000	      3600 ns/op	         0 loads/op	      2444 max-stale-ms	   277899 ops/s	    582726 reads	     84.53 stale-%	    492564 stale-reads	    517187 stale-reads-1ms	    515458 stale-reads-10ms	      900 B/op	      12 allocs/op
BenchmarkCoherence/sys=go-redis-2     	   55000	     36300 ns/op	         0 loads/op	         0 max-stale-ms	    27548 ops/s	     71785 reads	         0 stale-%	         0 stale-reads	         0 stale-reads-1ms	         0 stale-reads-10ms	     1500 B/op	      30 allocs/op
BenchmarkCoherence/sys=tiered-2       	  200000	     10600 ns/op	         0 loads/op	         5.100 max-stale-ms	    94340 ops/s	    220012 reads	         0 stale-%	         0 stale-reads	       301 stale-reads-1ms	         0 stale-reads-10ms	     1200 B/op	      20 allocs/op
BenchmarkCoherence/sys=otter-2        	  570000	      3500 ns/op	         0 loads/op	      2301 max-stale-ms	   285714 ops/s	    590001 reads	     84.90 stale-%	    500911 stale-reads	    524002 stale-reads-1ms	    522510 stale-reads-10ms	      900 B/op	      12 allocs/op
BenchmarkCoherence/sys=go-redis-2     	   55000	     36000 ns/op	         0 loads/op	         0 max-stale-ms	    27778 ops/s	     72001 reads	         0 stale-%	         0 stale-reads	         0 stale-reads-1ms	         0 stale-reads-10ms	     1500 B/op	      30 allocs/op
PASS
ok  	github.com/tieredcache/tiered/benchmarks	60.000s
`

// wantMarkdown is the report benchreport printed for input before it drew charts.
const wantMarkdown = `Median time per operation (ns/op over 1-2 runs); in parentheses, the system's time over tiered's: above 1.00, tiered is faster.

| workload | tiered | otter | go-redis |
|---|---|---|---|
| NearHit | 128 ns | 43 ns (0.34) | 43.5 µs (339.84) |
| Stampede | 5.03 ms | – | 47.97 ms (9.54) |
| Coherence | 10.5 µs | 3.5 µs (0.34) | 36.1 µs (3.44) |

- NearHit: fastest median, otter.
- Stampede: fastest median, tiered.
- Coherence: fastest median, otter.

Stale reads in the coherence workload, summed over 2 runs. A read is stale with respect to Δ when the write that replaced the value it returned had been acknowledged more than Δ before the read began; max staleness is the oldest replaced value any read returned, whatever Δ.

| system | reads checked | stale reads, Δ = 100 ms | stale % | stale, Δ = 10 ms | stale, Δ = 1 ms | max staleness | median ops/s |
|---|---|---|---|---|---|---|---|
| tiered | 444634 | 0 | 0.00 | 0 | 569 | 6.82 ms | 95325 |
| otter | 1172727 | 993475 | 84.71 | 1037968 | 1041189 | 2444.00 ms | 281806 |
| go-redis | 143786 | 0 | 0.00 | 0 | 0 | 0 | 27663 |

Zero stale reads at Δ = 100 ms: tiered, go-redis.
`

func parseInput(t *testing.T) []result {
	t.Helper()
	rs, err := parse(strings.NewReader(input))
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

func TestMarkdown(t *testing.T) {
	var b strings.Builder
	if err := write(&b, parseInput(t), ""); err != nil {
		t.Fatal(err)
	}
	if b.String() != wantMarkdown {
		t.Errorf("markdown:\n%s\nwant:\n%s", b.String(), wantMarkdown)
	}
}

// TestCharts checks that -svg draws both charts as SVG naming every system, and that
// the markdown is the same but for the links to them.
func TestCharts(t *testing.T) {
	dir := t.TempDir()
	rs := parseInput(t)
	if err := writeCharts(dir, rs); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{headlineSVG, stalenessSVG} {
		text := svgText(t, filepath.Join(dir, name))
		for _, sys := range []string{"tiered", "otter", "go-redis"} {
			if !strings.Contains(text, sys) {
				t.Errorf("%s does not name %s; its text: %q", name, sys, text)
			}
		}
	}

	var b strings.Builder
	if err := write(&b, rs, "charts"); err != nil {
		t.Fatal(err)
	}
	md := b.String()
	for _, name := range []string{headlineSVG, stalenessSVG} {
		link := "](charts/" + name + ")\n\n"
		i := strings.Index(md, link)
		if i < 0 {
			t.Fatalf("no link to charts/%s in:\n%s", name, md)
		}
		start := strings.LastIndex(md[:i], "![")
		if start < 0 || (start > 0 && md[start-1] != '\n') {
			t.Fatalf("the link to %s is not an image on its own line:\n%s", name, md)
		}
		md = md[:start] + md[i+len(link):]
	}
	if md != wantMarkdown {
		t.Errorf("markdown without the links:\n%s\nwant:\n%s", md, wantMarkdown)
	}
}

// svgText parses the SVG file as XML and returns the text of its <text> elements.
func svgText(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d := xml.NewDecoder(f)
	var text strings.Builder
	root, inText := "", false
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			if root == "" {
				root = tok.Name.Local
			}
			inText = tok.Name.Local == "text"
		case xml.EndElement:
			inText = false
		case xml.CharData:
			if inText {
				text.Write(tok)
				text.WriteByte('\n')
			}
		}
	}
	if root != "svg" {
		t.Fatalf("%s: root element %q, want svg", path, root)
	}
	return text.String()
}

// faultInput is the fault workload's output, two faults: blackhole with two runs for
// tiered and go-redis-cache, one for rueidis (no read stale past 100 ms, so no
// last-stale-ms); kill with one run each. Beside them, a NearHit line, which the
// fault tables leave out.
const faultInput = `goos: linux
pkg: github.com/tieredcache/tiered/benchmarks
BenchmarkNearHit/sys=tiered-2         	 9000000	       126.0 ns/op	         0 loads/op	       100.0 near-hit-%	   7936508 ops/s	        48 B/op	       1 allocs/op
BenchmarkFaults/fault=blackhole/sys=tiered-2         	       1	8013027402 ns/op	      3011 after-ms	   1561106 fault-reads	     -2054 last-stale-ms	       947.3 max-stale-ms	         0 read-errors	   7708684 reads	    656850 stale-100ms	         0 stale-1s	         0 write-errors	      2507 writes
BenchmarkFaults/fault=blackhole/sys=tiered-2         	       1	8005489535 ns/op	      3000 after-ms	   4042680 fault-reads	     -2078 last-stale-ms	       938.3 max-stale-ms	         0 read-errors	  14939891 reads	   1415554 stale-100ms	         0 stale-1s	         0 write-errors	      2659 writes
BenchmarkFaults/fault=blackhole/sys=rueidis-2        	       1	8004335555 ns/op	      3000 after-ms	     20690 fault-reads	        19.26 max-stale-ms	         7.000 read-errors	   7451719 reads	         0 stale-100ms	         0 stale-1s	         0 write-errors	      3016 writes
--- BENCH: BenchmarkFaults/fault=blackhole/sys=rueidis-2
    faults_test.go:446: blackhole, rueidis: 7 read errors; the first: connection closed
BenchmarkFaults/fault=blackhole/sys=go-redis-cache-2 	       1	8012357565 ns/op	      3001 after-ms	    930359 fault-reads	      3001 last-stale-ms	      8007 max-stale-ms	         0 read-errors	   4660419 reads	   3242973 stale-100ms	   2914107 stale-1s	         0 write-errors	      2306 writes
BenchmarkFaults/fault=blackhole/sys=go-redis-cache-2 	       1	8012357565 ns/op	      3000 after-ms	    930000 fault-reads	      2999 last-stale-ms	      8010 max-stale-ms	         0 read-errors	   4660000 reads	   3242000 stale-100ms	   2914000 stale-1s	         0 write-errors	      2300 writes
BenchmarkFaults/fault=kill/sys=tiered-2              	       1	8039593504 ns/op	      3012 after-ms	   2150994 fault-reads	      2222 last-stale-ms	       113.5 max-stale-ms	         0 read-errors	  12824810 reads	      1926 stale-100ms	         0 stale-1s	       722.0 write-errors	      1512 writes
BenchmarkFaults/fault=kill/sys=rueidis-2             	       1	8018318899 ns/op	      3000 after-ms	     27378 fault-reads	        0.6400 max-stale-ms	         0 read-errors	   6669550 reads	         0 stale-100ms	         0 stale-1s	      1497 write-errors	      2236 writes
BenchmarkFaults/fault=kill/sys=go-redis-cache-2      	       1	8060179417 ns/op	      3009 after-ms	   2419592 fault-reads	      3009 last-stale-ms	      8051 max-stale-ms	         0 read-errors	   6232109 reads	   3865017 stale-100ms	   3233143 stale-1s	         1.000 write-errors	       981.0 writes
PASS
`

const wantFaults = "### blackhole\n\n" +
	"Summed over 1-2 runs; max staleness and fault end → last stale read: the worst run.\n\n" +
	"| system | reads | reads during the fault | read errors | stale reads, Δ = 100 ms | stale reads, Δ = 1 s | max staleness | fault end → last stale read (Δ = 100 ms) | writes acknowledged | write errors |\n" +
	"|---|---|---|---|---|---|---|---|---|---|\n" +
	"| tiered | 22648575 | 5603786 | 0 | 2072404 | 0 | 947.3 ms | none after the end | 5166 | 0 |\n" +
	"| rueidis | 7451719 | 20690 | 7 | 0 | 0 | 19.3 ms | none at all | 3016 | 0 |\n" +
	"| go-redis-cache | 9320419 | 1860359 | 0 | 6484973 | 5828107 | 8.01 s | 3.00 s (until the end of the run) | 4606 | 0 |\n" +
	"\n### kill\n\n" +
	"Summed over 1 runs; max staleness and fault end → last stale read: the worst run.\n\n" +
	"| system | reads | reads during the fault | read errors | stale reads, Δ = 100 ms | stale reads, Δ = 1 s | max staleness | fault end → last stale read (Δ = 100 ms) | writes acknowledged | write errors |\n" +
	"|---|---|---|---|---|---|---|---|---|---|\n" +
	"| tiered | 12824810 | 2150994 | 0 | 1926 | 0 | 113.5 ms | 2.22 s | 1512 | 722 |\n" +
	"| rueidis | 6669550 | 27378 | 0 | 0 | 0 | 640 µs | none at all | 2236 | 1497 |\n" +
	"| go-redis-cache | 6232109 | 2419592 | 0 | 3865017 | 3233143 | 8.05 s | 3.01 s (until the end of the run) | 981 | 1 |\n"

// TestFaultTables checks the fault workload's tables, and that the other tables leave
// the fault workload out.
func TestFaultTables(t *testing.T) {
	rs, err := parse(strings.NewReader(faultInput))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := writeFaults(&b, rs); err != nil {
		t.Fatal(err)
	}
	if b.String() != wantFaults {
		t.Errorf("fault tables:\n%s\nwant:\n%s", b.String(), wantFaults)
	}

	faults, others := splitFaults(rs)
	if len(faults) != 8 || len(others) != 1 || others[0].workload != "NearHit" {
		t.Errorf("split: %d fault results, others %v", len(faults), others)
	}
	if err := writeFaults(&b, others); err == nil {
		t.Error("fault tables of results without the fault workload: no error")
	}
}

func TestLastStale(t *testing.T) {
	for _, tc := range []struct {
		last, after []float64
		want        string
	}{
		{nil, []float64{3000}, "none at all"},
		{[]float64{-5, -1}, []float64{3000}, "none after the end"},
		{[]float64{-5, 120.5}, []float64{3000, 3000}, "120.5 ms"},
		{[]float64{2950}, []float64{3000}, "2.95 s (until the end of the run)"},
		{[]float64{2899}, []float64{3000}, "2.90 s"},
	} {
		if got := lastStale(tc.last, tc.after); got != tc.want {
			t.Errorf("lastStale(%v, %v) = %q, want %q", tc.last, tc.after, got, tc.want)
		}
	}
}

// TestCPUTable checks the CPU table: each run's process and server CPU added up
// before the median is taken, the parts' own medians beside it, and the ratio of the
// totals' medians to the base's.
func TestCPUTable(t *testing.T) {
	const in = `BenchmarkZipf50/sys=tiered-2    	  100000	     16000 ns/op	     16000 cpu-ns/op	      8000 redis-cpu-ns/op
BenchmarkZipf50/sys=rueidis-2   	  100000	      9000 ns/op	      9000 cpu-ns/op	      6000 redis-cpu-ns/op
BenchmarkZipf50/sys=tiered-2    	  100000	     15000 ns/op	     14000 cpu-ns/op	      9000 redis-cpu-ns/op
BenchmarkZipf50/sys=rueidis-2   	  100000	      8000 ns/op	      8000 cpu-ns/op	      5000 redis-cpu-ns/op
BenchmarkZipf50/sys=tiered-2    	  100000	     15000 ns/op	     15000 cpu-ns/op	      9000 redis-cpu-ns/op
BenchmarkZipf50/sys=rueidis-2   	  100000	      8000 ns/op	      9000 cpu-ns/op	      5000 redis-cpu-ns/op
BenchmarkNearHit/sys=tiered-2   	  100000	        70 ns/op
`
	rs, err := parse(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	writeCPU(&b, rs, "tiered")
	// tiered's totals 24000, 23000, 24000: median 24.0 µs; rueidis's 15000, 13000,
	// 14000: median 14.0 µs, 14/24 = 0.58.
	for _, want := range []string{
		"| workload | tiered | rueidis |",
		"| Zipf50 | 24.0 µs = 15.0 µs + 9.0 µs | 14.0 µs = 9.0 µs + 5.0 µs (0.58) |",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("CPU table lacks %q:\n%s", want, b.String())
		}
	}
	if strings.Contains(b.String(), "NearHit") {
		t.Errorf("CPU table has a row for a workload without CPU figures:\n%s", b.String())
	}
	b.Reset()
	writeCPU(&b, parseInput(t), "tiered")
	if b.Len() != 0 {
		t.Errorf("CPU table written for runs without CPU figures:\n%s", b.String())
	}
}
