package tiered

import (
	"context"
	"fmt"
	"log/slog"
)

// RedisLogger returns a logger for go-redis's own log lines, which it writes to
// stderr by default (a pool's failed dials while a node is down, for instance), that
// sends them to l as warnings with the attribute "source"="go-redis". go-redis's
// logger is process-wide, so installing it is the application's choice, once:
//
//	redis.SetLogger(tiered.RedisLogger(logger))
func RedisLogger(l *slog.Logger) interface {
	Printf(ctx context.Context, format string, v ...any)
} {
	return redisLogger{l}
}

type redisLogger struct{ l *slog.Logger }

func (r redisLogger) Printf(ctx context.Context, format string, v ...any) {
	r.l.WarnContext(ctx, fmt.Sprintf(format, v...), "source", "go-redis")
}
