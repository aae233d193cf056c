package tiered

import (
	"context"
	"runtime/debug"
)

// Loader loads the value of a key from the source of truth (a database, a service) on
// a miss in both tiers.
//
// Contract:
//   - Return ErrNotFound (or an error wrapping it) when the source has no value; the
//     absence is cached in both tiers for Options.NegativeTTL.
//   - Any other error is returned to every caller waiting on the load and is never
//     cached; the next Get calls the Loader again.
//   - A panic is recovered and delivered to every waiter as a *PanicError carrying the
//     stack; it is not cached.
//   - One process calls Load at most once at a time per key (singleflight). The ctx
//     carries the values of the first caller's ctx but not its cancellation: a caller
//     that gives up does not cancel the load the others wait on. It is cancelled after
//     Options.LoadTimeout, or by Close.
//   - The returned value is shared by every caller and cached as is: do not mutate it
//     afterwards.
type Loader[V any] interface {
	Load(ctx context.Context, key string) (V, error)
}

// LoaderFunc adapts a function to Loader.
type LoaderFunc[V any] func(ctx context.Context, key string) (V, error)

// Load calls f(ctx, key).
func (f LoaderFunc[V]) Load(ctx context.Context, key string) (V, error) { return f(ctx, key) }

// BatchLoader loads many keys at once for GetMany. Keys absent from the returned map
// are absent at the source (negative-cached like ErrNotFound). A non-nil error fails
// the whole batch: nothing from it is cached, and GetMany returns the error with the
// values it found in the tiers. Panics are recovered as for Loader.
type BatchLoader[V any] interface {
	LoadMany(ctx context.Context, keys []string) (map[string]V, error)
}

// BatchLoaderFunc adapts a function to BatchLoader.
type BatchLoaderFunc[V any] func(ctx context.Context, keys []string) (map[string]V, error)

// LoadMany calls f(ctx, keys).
func (f BatchLoaderFunc[V]) LoadMany(ctx context.Context, keys []string) (map[string]V, error) {
	return f(ctx, keys)
}

// loadOne calls the Loader, turning a panic into a *PanicError.
func (c *Cache[V]) loadOne(ctx context.Context, key string) (v V, err error) {
	defer recoverLoad(&err)
	return c.opts.Loader.Load(ctx, key)
}

// loadBatch calls the BatchLoader, turning a panic into a *PanicError.
func (c *Cache[V]) loadBatch(ctx context.Context, keys []string) (m map[string]V, err error) {
	defer recoverLoad(&err)
	return c.opts.BatchLoader.LoadMany(ctx, keys)
}

func recoverLoad(err *error) {
	if r := recover(); r != nil {
		*err = &PanicError{Value: r, Stack: debug.Stack()}
	}
}

// loadContext returns the context a shared load runs under: the values of the
// caller's ctx, none of its cancellation, bounded by LoadTimeout and cancelled by
// Close.
func (c *Cache[V]) loadContext(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.opts.LoadTimeout)
	stop := context.AfterFunc(c.closing, cancel)
	return ctx, func() { stop(); cancel() }
}
