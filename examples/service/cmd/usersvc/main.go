// Command usersvc serves the users API of package service: PostgreSQL behind a
// tiered cache (a near-cache in this process, Redis nodes shared by every replica).
//
//	usersvc -addr 127.0.0.1:8080 -redis 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
//
// Every flag can also be set by the environment variable named in its usage. Run
// several replicas over the same Redis nodes and table: a write through any of them
// evicts the user from every replica's near-cache.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tieredcache/tiered"
	"github.com/tieredcache/tiered/examples/service"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "usersvc:", err)
		os.Exit(1)
	}
}

func env(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

func run() error {
	addr := flag.String("addr", env("USERSVC_ADDR", "127.0.0.1:8080"), "listen address (USERSVC_ADDR)")
	dsn := flag.String("dsn", env(service.DSNEnv, ""), "PostgreSQL connection string ("+service.DSNEnv+"); empty: the local socket /var/run/postgresql, then postgres://postgres@127.0.0.1:5432/test")
	redisAddrs := flag.String("redis", env("USERSVC_REDIS", ""), "comma-separated Redis host:port nodes of the shared tier (USERSVC_REDIS); empty: near-cache only")
	table := flag.String("table", env("USERSVC_TABLE", "users"), "table name, created if missing (USERSVC_TABLE)")
	dropTable := flag.Bool("drop-table", false, "drop the table when the service exits")
	name := flag.String("name", env("USERSVC_NAME", ""), "replica name in /stats and logs (USERSVC_NAME); default: the listen address")
	ttl := flag.Duration("ttl", 10*time.Minute, "how long a user stays in Redis")
	localTTL := flag.Duration("local-ttl", time.Minute, "how long a user stays in a replica's near-cache")
	timeout := flag.Duration("redis-timeout", 100*time.Millisecond, "bounds each call to a Redis node; past it a read falls through to the database")
	level := flag.String("log-level", env("USERSVC_LOG_LEVEL", "info"), "debug, info, warn or error (USERSVC_LOG_LEVEL)")
	flag.Parse()

	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	if *name == "" {
		*name = *addr
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})).With("replica", *name)
	// go-redis logs some failures itself (a pool's failed dials while a node is
	// down), process-wide, to stderr: send them through the same logger.
	redis.SetLogger(tiered.RedisLogger(logger))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	pool, used, err := service.Connect(ctx, *dsn)
	if err != nil {
		return fmt.Errorf("%w\n(point it at a server with -dsn or %s=postgres://user@host:5432/db)", err, service.DSNEnv)
	}
	defer pool.Close()
	store, err := service.NewStore(pool, *table)
	if err != nil {
		return err
	}
	if err := store.CreateTable(ctx); err != nil {
		return fmt.Errorf("create table %s: %w", *table, err)
	}
	if *dropTable {
		defer func() {
			dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := store.DropTable(dctx); err != nil {
				logger.Error("drop table", "table", *table, "err", err)
			} else {
				logger.Info("table dropped", "table", *table)
			}
		}()
	}

	var addrs []string
	if *redisAddrs != "" {
		addrs = strings.Split(*redisAddrs, ",")
	} else {
		logger.Warn("no Redis nodes (-redis): near-caches only; a write through one replica leaves the others' copies until -local-ttl")
	}
	svc, err := service.New(service.Config{
		Store: store, RedisAddrs: addrs, Name: *name, Logger: logger,
		TTL: *ttl, LocalTTL: *localTTL, Timeout: *timeout,
	})
	if err != nil {
		return err
	}
	defer svc.Close()

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           svc.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	logger.Info("listening", "addr", ln.Addr().String(), "table", *table, "redis", addrs, "db", service.RedactDSN(used))
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	logger.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return err
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
