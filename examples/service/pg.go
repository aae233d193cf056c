package service

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// DSNEnv names the environment variable that the service, the demo and the tests
// read the PostgreSQL connection string from when no -dsn flag is given.
const DSNEnv = "USERSVC_DSN"

// DefaultDSNs are tried in order when no connection string is given: the local
// server's Unix socket, then TCP on 127.0.0.1, as user postgres, database test.
var DefaultDSNs = []string{
	"host=/var/run/postgresql user=postgres dbname=test",
	"postgres://postgres@127.0.0.1:5432/test?sslmode=disable",
}

// Connect opens a pool on dsn, or if dsn is empty on the first of DefaultDSNs that
// answers, and checks that the server answers. It returns the pool and the
// connection string it used.
func Connect(ctx context.Context, dsn string) (*pgxpool.Pool, string, error) {
	candidates := DefaultDSNs
	if dsn != "" {
		candidates = []string{dsn}
	}
	var errs []error
	for _, c := range candidates {
		pool, err := connect(ctx, c)
		if err == nil {
			return pool, c, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", RedactDSN(c), err))
	}
	return nil, "", fmt.Errorf("no PostgreSQL answered: %w", errors.Join(errs...))
}

func connect(ctx context.Context, dsn string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = 3 * time.Second
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return pool, nil
}

// RedactDSN masks the password of a connection string, for logs and errors.
func RedactDSN(dsn string) string {
	if strings.Contains(dsn, "://") {
		if u, err := url.Parse(dsn); err == nil {
			return u.Redacted()
		}
		return "<unparsable URL>"
	}
	return passwordField.ReplaceAllString(dsn, "${1}xxxxx")
}

var passwordField = regexp.MustCompile(`(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)`)
