// Package redistest starts throwaway, real redis-server processes for tests
// and benchmarks of the tiered cache, and supports fault injection against
// them (pause, kill, restart, dropping pub/sub clients) as well as a small
// Redis Cluster.
//
// Every server listens on a free loopback port (127.0.0.1 only), has no
// persistence (no RDB snapshots, no AOF) and keeps its working directory and
// log file in a private temporary directory that Stop removes. On Linux the
// process is started with Pdeathsig=SIGKILL in its own process group, so a
// crashed or killed test binary leaves no server behind.
//
// The package never touches a Redis server it did not start: it signals only
// the PIDs it spawned, never picks the default port 6379 (or its cluster bus
// port 16379), and never issues FLUSHALL or similar commands on its own.
//
// redis-server (and, for clusters, redis-cli) must be on PATH:
//
//	apt-get install -y redis-server   # Debian/Ubuntu
//	brew install redis                # macOS
//
// Use Start or StartClusterT from tests and benchmarks: they stop the servers
// via tb.Cleanup and fail the test if redis-server is missing. StartServer and
// StartCluster have no dependency on package testing, so they can be used from
// helpers and re-executed child processes as well.
package redistest
