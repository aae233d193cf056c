// Package benchmarks puts tiered beside its peers on the same workloads, the same
// Redis nodes and the same machine, and measures which of them serve stale reads.
//
// It is its own Go module (replace github.com/tieredcache/tiered => ../), so the
// peers never enter the library's go.mod. Each system under test is one adapter file
// (sys_*.go) behind the System interface; every workload (bench_test.go) runs the
// same code against each of them as Benchmark<Workload>/sys=<name>, so benchstat
// puts them side by side:
//
//	go test -run '^$' -bench . -count 6 | go tool benchstat -col /sys -
//
// BenchmarkFaults takes about 4 minutes a count: each of its runs is one fault episode of
// about 10 s, so b.N stays 1 (run.sh says -benchtime 1x). run.sh runs everything with
// -count 6, the fault workload with -count 3, and writes BENCHMARKS.md. The Redis nodes are
// throwaway redis-server processes on loopback ports, started once per test binary
// (internal/redistest) and stopped by TestMain.
package benchmarks
