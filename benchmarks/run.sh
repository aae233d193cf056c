#!/usr/bin/env bash
# Runs every workload of the benchmarks module against tiered and its peers with
# -count 6 and writes BENCHMARKS.md beside this script: the machine, the versions,
# the headline ratios, the stale-reads table and the benchstat tables, with the first
# two also drawn as charts/headline.svg and charts/staleness.svg (in a charts directory
# beside OUT when OUT is elsewhere).
#
#   benchmarks/run.sh                         # about 30 minutes on 2 busy cores
#   COUNT=1 OUT=/tmp/b.md benchmarks/run.sh   # a quick try that leaves BENCHMARKS.md alone
#   REPORT_ONLY=1 benchmarks/run.sh           # rewrite BENCHMARKS.md from the last run's results/
#   COUNT=1 FAULT_COUNT=1 ONLY=Faults OUT=/tmp/b.md benchmarks/run.sh   # the fault workload alone, once
#
# To profile one workload without its setup (populating a keyspace, warming
# near-caches): the test binary's -timed.cpuprofile DIR writes a CPU profile of each
# timed region into DIR, e.g.
#   go test -run '^$' -bench 'Zipf50/sys=tiered-1node$' -benchtime 200000x -timed.cpuprofile /tmp/prof
#
# COUNT is the -count of every workload but the fault workload (default 6), whose runs
# are one fault episode of about 10 s each for 4 faults x 5 systems: FAULT_COUNT is its
# -count (default 3, about 10 minutes). ONLY, an extended regular expression, runs only
# the workload groups whose names (below) match it, and the report then has only their
# sections.
#
# redis-server must be on PATH; the benchmarks start their own throwaway servers on
# free loopback ports and never touch any other Redis.
set -euo pipefail
cd "$(dirname "$0")"

COUNT=${COUNT:-6}
FAULT_COUNT=${FAULT_COUNT:-3}
ONLY=${ONLY:-}
OUT=${OUT:-BENCHMARKS.md}
RES=results # raw outputs; ignored by git

# Workloads, -benchtime and (if not COUNT) -count: time-based where the systems differ
# by orders of magnitude in speed, a fixed count where each operation consumes a fresh
# key. The three Zipf workloads run in one process, which populates each system's
# 100k-key keyspace once. The fault workload is one episode per run.
WORKLOADS=(
	"NearHit 1s"
	"SharedHit 20000x"
	"Miss 5000x"
	"Stampede 50x"
	"Zipf95|Zipf50|Coherence 2s"
	"Faults 1x $FAULT_COUNT"
)

mkdir -p "$RES"
go build -o "$RES/benchreport" ./cmd/benchreport

if [ "${REPORT_ONLY:-}" != 1 ]; then
	command -v redis-server >/dev/null || { echo "redis-server not found on PATH" >&2; exit 1; }
	rm -f "$RES"/*.txt "$RES/meta.sh"
	go test -c -o "$RES/benchmarks.test" .

	start=$(date +%s)
	load_before=$(cut -d' ' -f1-3 /proc/loadavg)
	timings=""
	for w in "${WORKLOADS[@]}"; do
		set -- $w
		if [ -n "$ONLY" ] && ! grep -Eq -- "$ONLY" <<<"$1"; then
			continue
		fi
		count=${3:-$COUNT}
		echo "== $1 (-benchtime $2 -count $count)"
		t0=$(date +%s)
		"./$RES/benchmarks.test" -test.run '^$' -test.bench "^Benchmark($1)\$" \
			-test.benchtime "$2" -test.count "$count" -test.timeout 60m | tee "$RES/${1//|/_}.txt"
		timings="$timings${timings:+, }${1//|/ + } $(( $(date +%s) - t0 ))s"
	done
	for w in "${WORKLOADS[@]}"; do
		set -- $w
		if [ -f "$RES/${1//|/_}.txt" ]; then
			cat "$RES/${1//|/_}.txt"
		fi
	done > "$RES/all.txt"
	# What the report needs to know about the run, so that REPORT_ONLY=1 can rewrite it.
	tiered_rev=$(git -C .. rev-parse --short HEAD 2>/dev/null || echo unknown)
	if [ -n "$(git -C .. status --porcelain -- . ':!benchmarks' 2>/dev/null)" ]; then
		tiered_rev="$tiered_rev plus uncommitted changes"
	fi
	{
		printf 'run_date=%q\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
		printf 'elapsed=%q\n' "$(( $(date +%s) - start ))"
		printf 'timings=%q\n' "$timings"
		printf 'load_before=%q\nload_after=%q\n' "$load_before" "$(cut -d' ' -f1-3 /proc/loadavg)"
		printf 'count=%q\nfault_count=%q\nonly=%q\ntiered_rev=%q\n' "$COUNT" "$FAULT_COUNT" "$ONLY" "$tiered_rev"
		printf 'go_version=%q\nredis_version=%q\n' "$(go env GOVERSION)" "$(redis-server --version | sed 's/ sha=.*//')"
	} > "$RES/meta.sh"
fi
. "$RES/meta.sh"
fault_count=${fault_count:-} only=${only:-} # absent from an older run's meta.sh
# The fault workload's results get their own section; the headline, the charts and
# benchstat are about the others.
grep '^BenchmarkFaults/' "$RES/all.txt" > "$RES/faults.txt" || true
grep -v '^BenchmarkFaults/' "$RES/all.txt" > "$RES/bench.txt" || true
has_bench=$(grep -c '^Benchmark' "$RES/bench.txt" || true)
has_faults=$(grep -c '^Benchmark' "$RES/faults.txt" || true)
if [ -n "$only" ]; then
	scope="only the workloads matching \`ONLY=$only\`, against every system"
else
	scope="every workload against every system"
fi
counts="\`-count $count\`"
if [ "$has_faults" != 0 ]; then
	counts="$counts (the fault workload: \`-count $fault_count\`)"
fi

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
mem=$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)
benchtimes=$(printf '%s\n' "${WORKLOADS[@]}" | grep -v '^Faults ' | awk '{gsub(/\|/, ", ", $1); printf "%s%s %s", (NR>1 ? "; " : ""), $1, $2}')

{
cat <<EOF
# tiered beside its peers

Generated by \`benchmarks/run.sh\` on $run_date in ${elapsed}s ($timings): $scope,
$counts, on the same machine, the same throwaway Redis nodes and the
same source of truth. Only what this run measured is below; medians, and ratios between systems
measured in the same run, are what to read: the machine is shared and noisy.

## Machine and versions

| | |
|---|---|
| CPU | $(nproc) × $cpu |
| memory | $mem |
| kernel | $(uname -sr) |
| Go | $go_version (GOMAXPROCS = $(nproc)) |
| Redis | $redis_version |
| load average (1, 5, 15 min) | before: $load_before; after: $load_after |
| tiered | github.com/tieredcache/tiered at $tiered_rev |
EOF
go list -m -f '| {{.Path}} | {{.Version}} |' \
	github.com/dgraph-io/ristretto/v2 github.com/maypok86/otter/v2 github.com/redis/go-redis/v9 \
	github.com/go-redis/cache/v9 github.com/redis/rueidis github.com/Shopify/toxiproxy/v2
cat <<'EOF'

## The systems

Every system is one adapter file (`sys_*.go`) behind the same `System` interface: a read-through
`Get` whose misses end at the same Loader, and a write-through `Set`. All get the same TTLs (1 h in
Redis, 1 min in a near-cache) and near-caches big enough for every key of every workload (64 MiB
where bounded in bytes, 131072 entries where bounded in entries), so none evicts for lack of room.
Otherwise each library's defaults, tiered's included (100 ms per Redis call, then fail open); only the
replica that writes a keyspace into Redis before the measured runs gets a 5 s per-call bound, so
that a loaded machine cannot fail the setup.

| system | near-cache | shared tier | keeps other replicas' near-caches coherent | loader dedup |
|---|---|---|---|---|
| `tiered` | ristretto v2 | its ring over the 3 nodes | pub/sub invalidation, fill fencing | one flight per key + a lease across the fleet |
| `ristretto` | raw ristretto v2 | go-redis `Ring` over the 3 nodes | no (copies live until the local TTL) | none |
| `otter` | otter v2 (the in-process reference) | go-redis `Ring` over the 3 nodes | no | otter's `Get` with a loader, per process |
| `go-redis` | none | go-redis `Ring` over the 3 nodes | nothing to keep | none |
| `go-redis-csc` | go-redis v9 built-in client-side cache | go-redis `Ring` over the 3 nodes, one cache per shard client | RESP3 `CLIENT TRACKING` | none |
| `go-redis-cache` | go-redis/cache TinyLFU | go-redis `Ring` over the 3 nodes | no | singleflight, per process |
| `rueidis` | rueidis client-side cache | **one node** | RESP3 `CLIENT TRACKING` | none |
| `tiered-1node` | as `tiered` | **one node**, the one `rueidis` uses | as `tiered` | as `tiered` |

Notes:

- **rueidis uses one node.** It spreads keys only over a Redis Cluster, not over standalone nodes,
  so it runs against the first node of the ring. `tiered-1node` is tiered on that same node, a
  control column to read rueidis against. Its loader helper, `rueidisaside`, is a separate
  module (`github.com/redis/rueidis/rueidisaside`) that the module proxy available here does not
  serve (404 for v1.0.79 and for its version list), so rueidis misses run the plain cache-aside loop
  (`DoCache` GET, Loader, SET) without stampede protection.
- **go-redis v9.23 has a built-in client-side cache**: `Options.ClientSideCacheConfig` (marked
  experimental), which needs RESP3 (`Protocol: 3`) and a standalone client. It is enabled here on
  each shard client of a `redis.Ring` through `RingOptions.NewClient`, with a third of the
  near-cache budget each and `MaxStaleness` = the near-cache TTL.
- **go-redis/cache v9.0.0** was served by the proxy and is used as documented: `Once` over a
  `redis.Ring` with its `TinyLFU` local cache.
- **eko/gocache and jetcache-go are not available** from the module proxy here (it answers 403 for
  `github.com/eko/gocache/lib/v4` and `github.com/mgtv-tech/jetcache-go`), so they are not compared.
- The `ristretto` and `otter` rows are what one gets by putting an in-process cache in front of
  go-redis by hand: fast, and without any invalidation between replicas.
- `tiered-1node` runs the same code as `tiered`. In NearHit, where Redis plays no part, the gap
  between these two columns is the machine's noise: read the other gaps with it in mind.

## The workloads

Each workload is `Benchmark<Workload>/sys=<system>` in `bench_test.go`; every system runs the same
code. The Loader is the same for all: it sleeps 1 ms (a database query) and returns the key's
current version from an in-memory source of truth. Values are about 60 bytes.

| workload | what one operation is |
|---|---|
| NearHit | one replica reads one of 10k keys it already holds (for `go-redis`, which has no near-cache, a Redis GET); GOMAXPROCS goroutines; the replica serves all the system's runs |
| SharedHit | one replica reads a key another replica wrote and it never read: a shared-tier hit; 8 × GOMAXPROCS goroutines |
| Miss | one replica reads a key no tier holds: the Loader, then the fills; 8 × GOMAXPROCS goroutines |
| Zipf95, Zipf50 | three replicas (own connections each) share 8 × GOMAXPROCS goroutines; keys from Zipf (s = 1.1) over 100k keys; 95% (or 50%) reads, the rest writes (new version at the source, then `Set` through the same replica); the keyspace is in Redis beforehand; a system's replicas serve all its runs of the workload (a steady state: each run finds the near-caches as the previous one left them), after 10k untimed warm-up reads |
| Stampede | 1000 goroutines spread over three replicas `Get` the same cold key at once; the op is the whole stampede |
| Coherence | the Zipf95 workload (its own replicas, reused the same way) with every write through replica 0 and every read on replicas 1 and 2; each read is checked for staleness (below) |
| Faults | one episode of a fault on a reader's links or on a node, with a writer and a reader replica, every read checked for staleness: see [Faults](#faults) |

Metrics beside time, B/op and allocs/op (all allocations in the process during the run, divided
by the operations): `ops/s`; `p50-ns`/`p99-ns`, latency percentiles of individual operations
(NearHit, Zipf95 and Zipf50 time one operation in 16 so that reading the clock does not dominate
a near hit, and every sample has the median cost of an empty timed region subtracted; the other
workloads time every operation); `near-hit-%` and `shared-hit-%`, the share of reads each tier
answered (from each library's own counters where it has them: see the adapters for how a read
that waited on another caller's load is counted); `loads/op`,
Loader calls per operation (per stampede in Stampede); `cpu-ns/op` and `redis-cpu-ns/op`, the CPU
time per operation of the benchmark process (every goroutine in it, the systems' background ones
included) and of the Redis servers the run started, over the timed region (getrusage and each
server thread's `/proc/<pid>/task/*/schedstat`; Linux only). The CPU an operation costs moves far
less with the machine's other load than the time it takes, so it is the steadier figure to compare
systems by on a shared machine (the table after the headline).

**Staleness.** Every read in the coherence workload is checked. A read that begins at time t is
stale with respect to a bound Δ if it returns an older version than the newest write of the key
acknowledged (its `Set` returned) more than Δ before t. The headline is **Δ = 100 ms**: the bound
the library's own multi-process coherence test uses, hundreds of times a pub/sub delivery on
loopback and far below the near-cache TTL. Counts at Δ = 10 ms and 1 ms show how fast each system
propagates a write on this (loaded) machine. Writes of one key are serialised (as a row lock
would) so that versions are acknowledged in order. "Max staleness" is the longest time by which
any read trailed an acknowledged write, whatever Δ. A system's replicas serve all its runs, so a
copy that was already stale when a run began is counted from the start of that run: for the
systems without invalidation, max staleness is bounded by the length of a run (a few seconds)
although their copies live up to the 1-minute near-cache TTL.
EOF

if [ "$has_bench" != 0 ]; then
echo
echo "## Headline"
echo
# Run from the report's directory, so that the charts' links are relative to it.
mkdir -p "$(dirname "$OUT")/charts"
(cd "$(dirname "$OUT")" && "$OLDPWD/$RES/benchreport" -svg charts "$OLDPWD/$RES/bench.txt")
fi
if [ "$has_faults" != 0 ]; then
cat <<EOF

## Faults

What a replica serves while its links to Redis fail, and after: \`BenchmarkFaults/fault=<fault>/sys=<system>\`
in \`faults_test.go\`, one fault episode per run, \`-benchtime 1x -count $fault_count\`. Each episode has
fresh replicas over a fresh keyspace on the workload's own three Redis nodes: 10k keys written
into Redis through the system, a **writer** replica and a **reader** replica opened, the reader
warmed with 20k reads; then **2 s steady, the 3 s fault, 3 s of recovery**, all under the same
traffic: the writer writes a key every 2 ms (a new version at the source, then \`Set\`), 8
goroutines read through the reader, both drawing keys from Zipf (s = 1.1) over the 10k. Each
reading goroutine makes at most 100 reads a millisecond: near hits without a pause would take
both cores, and invalidations would then wait for the scheduler rather than the network (tiered,
unpaced, read values up to 113 ms old with no fault at all, against 9 ms paced). Each read has a
deadline of 0.5 to 1 s, as a request would (the context is renewed every 0.5 s rather than per
read, to keep its timer off the near-hit path), and is checked for staleness by the coherence
workload's rule. Only the reader is faulted (but in \`kill\`): all of its
connections (data, pub/sub, tracking) go through an in-process toxiproxy (v2.12.0) in front of
each node, while the writer dials the nodes directly.

| fault | what happens for 3 s | to whom |
|---|---|---|
| \`blackhole\` | toxiproxy's \`timeout\` toxic (timeout 0) both ways: bytes stop, connections stay open, new ones are accepted and silent: only a timeout or a ping can tell. At the end the proxies are stopped, which closes every connection through them (as removing the toxic would: a link that dropped bytes cannot carry on), and clean ones start on the same addresses | the reader's links to every node |
| \`resets\` | every 300 ms (10 times) each proxy is stopped and a clean one started on the same address: every connection through it is reset (TCP RST: the proxies carry a \`reset_peer\` toxic that never acts but makes toxiproxy set \`SO_LINGER 0\` on their sockets), and the clients reconnect in between | the reader's links to every node |
| \`latency\` | toxiproxy's \`latency\` toxic, 200 ms each way (a round trip 400 ms longer); the connections stay up, and what was held back goes on at once at the end | the reader's links to every node |
| \`kill\` | the first node (the one \`rueidis\` uses) killed with SIGKILL, restarted empty on the same port at the end; no proxy | every replica |

The systems are those that keep replicas' near-caches coherent, \`tiered\`, \`go-redis-csc\` and
\`rueidis\`, and two controls: \`go-redis\` (no near-cache: every read is a Redis GET) and
\`go-redis-cache\` (a near-cache that nothing invalidates: the negative control, stale until its
TTL). What each runs with, besides the settings of the other workloads:

- **tiered**: its defaults, writer and reader alike: \`MaxStaleness\` 1 s, \`HealthCheck\` 250 ms,
  \`Timeout\` 100 ms. Its promise: no near-cache hit staler than \`MaxStaleness\` (plus its 10 ms
  clock tick) whatever the links do, and no read error while the Loader answers. A node's keys are
  served from the near-cache only while the node's pub/sub pings have confirmed it within
  \`MaxStaleness\`; a silent link is noticed within \`HealthCheck\` + \`Timeout\`, and reads then go to
  Redis or the Loader. The reader reaches the proxies through \`Options.Nodes\`, each node named by
  its own address (its place on the ring) with the proxy's as \`Addr\`.
- **go-redis-csc**: \`ClientSideCacheConfig.MaxStaleness\` = **1 s** in this workload (the near-cache
  TTL elsewhere; go-redis's default is 0, off). go-redis documents it as "a correctness BACKSTOP
  for lost invalidations or connection-lifecycle gaps", to be kept "well above the invalidation
  round-trip (e.g. seconds)"; 1 s is tiered's default bound, so both promise the same. Otherwise
  go-redis's defaults: \`ReadTimeout\` and \`WriteTimeout\` 5 s, \`DialTimeout\` 5 s, \`MaxRetries\` 3,
  \`DrainInterval\` 5 ms (idle pooled connections swept for invalidations). \`ContextTimeoutEnabled\`
  is off by default, so a read blocked on a socket waits for \`ReadTimeout\`, not for its deadline.
- **rueidis**: its defaults, which are its dead-link detection: \`Dialer.KeepAlive\` 1 s, a
  background PING on a connection idle that long, \`ConnWriteTimeout\` 10 s (KeepAlive × 10) as the
  bound on any reply, the PING's included; read-only commands retried on network errors; a
  connection's client-side cache dropped with the connection. \`DoCache\`'s client-side TTL is
  1 min as in the other workloads (rueidis's README uses \`time.Minute\`). It honours the read's
  deadline.
- **go-redis**: its defaults (\`ReadTimeout\` 5 s, \`MaxRetries\` 3).
- **go-redis-cache**: its local TinyLFU with a 1 min TTL (plus up to 10% at random), as its README
  shows; nothing else bounds a copy's age.

How to read the tables: *reads* returned a value, over the whole episode (8 s; at most 6.4
million); *reads during the
fault* began in its 3 s; a *read error* is a read that returned an error (its deadline included).
*Stale reads* at Δ = 100 ms and Δ = 1 s follow the coherence rule (the write that replaced the
value returned was acknowledged more than Δ before the read began); *max staleness* is how far the
stalest read trailed: for \`tiered\`, above 1.01 s (MaxStaleness and a clock tick) would be a
broken promise. *Fault end → last stale read* runs from the moment the fault was lifted (the clean
proxies listening, the node answering PING) to the start of the last read stale past 100 ms:
"none after the end" when it began before, "none at all" when no read was stale past 100 ms;
"until the end of the run" when it began within 100 ms of the end of the 3 s of recovery (stale
reads had not stopped). A write that returned an error
(\`kill\`: its node down) is not acknowledged, and no read is judged against it. Counts are summed
over the runs; max staleness and fault end → last stale read are the worst run's.

EOF
"$RES/benchreport" -faults "$RES/faults.txt"
fi
if [ "$has_bench" != 0 ]; then
cat <<EOF

## benchstat

One table per metric; rows are workloads, columns systems, each compared with \`tiered\` (the
first column). \`-benchtime\`: $benchtimes.

\`\`\`
$(go tool benchstat -col /sys "$RES/bench.txt")
\`\`\`
EOF
fi
cat <<EOF

Raw outputs: \`benchmarks/$RES/*.txt\` after a run (not committed).
EOF
} > "$OUT"
echo "wrote $OUT (${elapsed}s of benchmarks)"
