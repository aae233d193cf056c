package benchmarks

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// CPU per operation. On two shared cores the time per operation moves by a fifth from
// one run to the next with the machine's other load, where the CPU an operation costs
// moves much less: the workloads that touch Redis therefore also report the CPU time
// the benchmark process spent per operation (cpu-ns/op: every goroutine of the
// process, the systems' background ones included) and the CPU time the Redis servers
// this binary started spent (redis-cpu-ns/op), both measured over the timed region
// only. Linux only (getrusage and /proc/<pid>/task/*/schedstat); elsewhere they are
// not reported.

// cpuMark is the CPU time used so far by this process and by the Redis servers.
type cpuMark struct {
	self, redis time.Duration
	ok          bool
}

// cpuNow reads both clocks; ok is false where they cannot be read.
func cpuNow() cpuMark {
	self, ok := processCPU()
	if !ok {
		return cpuMark{}
	}
	var redis time.Duration
	for _, pid := range redisPIDs() {
		d, ok := pidCPU(pid)
		if !ok {
			return cpuMark{}
		}
		redis += d
	}
	return cpuMark{self: self, redis: redis, ok: true}
}

// cpuSpent accumulates the CPU time of timed regions: add(start, cpuNow()) after each.
type cpuSpent struct {
	self, redis time.Duration
	ok          bool
}

func (c *cpuSpent) add(start, end cpuMark) {
	if !start.ok || !end.ok {
		return
	}
	c.self += end.self - start.self
	c.redis += end.redis - start.redis
	c.ok = true
}

// redisPIDs are the process IDs of the Redis servers this binary started and has not
// stopped.
func redisPIDs() []int {
	var pids []int
	for _, g := range []*nodeGroup{&scratchNodes, &zipfNodes, &faultNodes} {
		for _, s := range g.servers {
			pids = append(pids, s.PID())
		}
	}
	return pids
}

// pidCPU is the time process pid's threads have spent on a CPU, from the first field
// of each thread's schedstat (nanoseconds).
func pidCPU(pid int) (time.Duration, bool) {
	stats, err := filepath.Glob(filepath.Join("/proc", strconv.Itoa(pid), "task", "*", "schedstat"))
	if err != nil || len(stats) == 0 {
		return 0, false
	}
	var total time.Duration
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // the thread ended since the glob
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			return 0, false
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, false
		}
		total += time.Duration(ns)
	}
	return total, true
}

// timedProfileDir, if set (-timed.cpuprofile DIR), receives a CPU profile of each
// timed region of the workloads run by runParallel (not Stampede, whose timed
// regions are one stampede each), DIR/<benchmark>.<n>.prof: unlike -test.cpuprofile, it leaves out the
// setup (populating a keyspace, warming near-caches), which in the shorter workloads
// costs as much as the measured operations.
var timedProfileDir = flag.String("timed.cpuprofile", "", "write a CPU profile of each benchmark's timed region into this directory")

var timedProfiles atomic.Int64

// startTimedProfile starts a CPU profile of a timed region if -timed.cpuprofile is
// set, and returns the function that ends it.
func startTimedProfile(b *testing.B) func() {
	if *timedProfileDir == "" {
		return func() {}
	}
	name := strings.NewReplacer("/", "_", "=", "-").Replace(b.Name())
	f, err := os.Create(filepath.Join(*timedProfileDir, fmt.Sprintf("%s.%d.prof", name, timedProfiles.Add(1))))
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		b.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			b.Error(err)
		}
	}
}
