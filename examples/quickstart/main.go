// Command quickstart shows tiered in front of a slow "database".
//
//	go run ./examples/quickstart                                  # near-cache + loader, no Redis needed
//	go run ./examples/quickstart -redis 127.0.0.1:7001,127.0.0.1:7002   # plus a shared tier: a ring over these nodes
//
// It runs two caches, as two replicas of a service would, and prints which tier
// answered each read.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tieredcache/tiered"
)

type user struct {
	ID   string
	Name string
}

func main() {
	addrs := flag.String("redis", "", "comma-separated Redis host:port list for the shared tier (empty: no shared tier)")
	flag.Parse()

	// The source of truth: a "database" that takes 20 ms per query.
	db := map[string]user{"1": {"1", "Ada"}, "2": {"2", "Grace"}, "3": {"3", "Edsger"}}
	var queries atomic.Int64
	loader := tiered.LoaderFunc[user](func(ctx context.Context, id string) (user, error) {
		queries.Add(1)
		select {
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
			return user{}, ctx.Err()
		}
		u, ok := db[id]
		if !ok {
			return user{}, tiered.ErrNotFound
		}
		return u, nil
	})

	opts := tiered.Options[user]{Loader: loader, Namespace: "quickstart", TTL: time.Minute}
	if *addrs != "" {
		opts.Addrs = strings.Split(*addrs, ",")
	}
	replicaA, err := tiered.New(opts)
	if err != nil {
		log.Fatal(err)
	}
	defer replicaA.Close()
	replicaB, err := tiered.New(opts)
	if err != nil {
		log.Fatal(err)
	}
	defer replicaB.Close()

	ctx := context.Background()
	if *addrs != "" {
		// Start from a clean slate in the shared tier for this demo's keys.
		if err := replicaA.Delete(ctx, "1", "2", "3", "404"); err != nil {
			log.Fatal(err)
		}
	}
	get := func(name string, c *tiered.Cache[user], id string) {
		before := c.Stats()
		start := time.Now()
		u, err := c.Get(ctx, id)
		took := time.Since(start)
		after := c.Stats()
		tier := "loader"
		switch {
		case after.LocalHits > before.LocalHits:
			tier = "near-cache"
		case after.RemoteHits > before.RemoteHits:
			tier = "redis"
		}
		switch {
		case errors.Is(err, tiered.ErrNotFound):
			fmt.Printf("%s Get(%q): not found  [%s, %v]\n", name, id, tier, took.Round(time.Microsecond))
		case err != nil:
			log.Fatal(err)
		default:
			fmt.Printf("%s Get(%q): %-7s [%s, %v]\n", name, id, u.Name, tier, took.Round(time.Microsecond))
		}
	}

	get("A", replicaA, "1")   // cold: loader
	get("A", replicaA, "1")   // near-cache (after ristretto applies its buffered Set)
	get("B", replicaB, "1")   // redis with -redis, else B's own loader call
	get("A", replicaA, "404") // absent at the source: cached as absent
	get("A", replicaA, "404")

	// A write: to the database, then through the cache.
	db["2"] = user{"2", "Grace Hopper"}
	if err := replicaA.Set(ctx, "2", db["2"]); err != nil {
		log.Fatal(err)
	}
	get("A", replicaA, "2") // read-your-writes
	get("B", replicaB, "2") // redis with -redis; else B loads it

	got, err := replicaB.GetMany(ctx, []string{"1", "2", "3"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("B GetMany(1,2,3): %d users\n", len(got))
	fmt.Printf("database queries: %d\n", queries.Load())
	fmt.Printf("A stats: %+v\n", replicaA.Stats())
	fmt.Printf("B stats: %+v\n", replicaB.Stats())
}
