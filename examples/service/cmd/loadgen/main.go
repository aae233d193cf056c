// Command loadgen drives running replicas of usersvc: it writes through one and reads
// through the others, prints a line per second (requests/s, near-cache and Redis hit
// ratios, database queries/s, stale reads) and the totals, and exits with status 1
// if any read was stale or wrong.
//
//	loadgen -writer http://127.0.0.1:8081 -readers http://127.0.0.1:8082,http://127.0.0.1:8083 -duration 20s
//
// cmd/demo starts the Redis nodes and replicas and runs the same generator.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/tieredcache/tiered/examples/service/loadgen"
)

func main() {
	var cfg loadgen.Config
	readers := flag.String("readers", "", "comma-separated base URLs of the replicas that take the reads")
	flag.StringVar(&cfg.Writer, "writer", "", "base URL of the replica that takes the writes")
	flag.DurationVar(&cfg.Duration, "duration", 20*time.Second, "how long to run (0: until interrupted)")
	flag.IntVar(&cfg.Users, "users", 1000, "user ids 1..N")
	flag.IntVar(&cfg.ReadWorkers, "read-workers", 16, "concurrent readers")
	flag.IntVar(&cfg.WriteWorkers, "write-workers", 2, "concurrent writers")
	flag.Float64Var(&cfg.WriteRate, "write-rate", 100, "writes per second (negative: unpaced)")
	flag.Float64Var(&cfg.ReadRate, "read-rate", 0, "reads per second (0: as fast as the readers go)")
	flag.IntVar(&cfg.BatchEvery, "batch-every", 10, "one read in N is GET /users?ids= (negative: none)")
	flag.IntVar(&cfg.BatchSize, "batch-size", 10, "ids per batch read")
	flag.Float64Var(&cfg.ZipfS, "zipf", 1.1, "Zipf exponent of the key distribution (above 1)")
	flag.DurationVar(&cfg.StaleAfter, "stale-after", 100*time.Millisecond, "a read older than a write acknowledged this long before it began is stale")
	flag.BoolVar(&cfg.SkipSeed, "skip-seed", false, "do not PUT every user first")
	flag.Parse()
	if *readers != "" {
		cfg.Readers = strings.Split(*readers, ",")
	}
	cfg.Out = os.Stdout

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := loadgen.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if res.Stale > 0 || res.Wrong > 0 {
		os.Exit(1)
	}
}
