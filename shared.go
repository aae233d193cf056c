package tiered

import (
	"context"
	"time"

	"github.com/tieredcache/tiered/internal/remote"
)

// The shared tier as the read and write paths see it, in three small interfaces
// defined here, where they are consumed. A key's node is the index sharedReader.Owner
// returned for it when its flight (or write) began: membership can change meanwhile,
// and a call about a flight must go to the node the flight's fence names.
// remote.Redis implements all three; noShared is the null object of a Cache without
// Redis, so that the paths carry no nil checks.
type sharedTier interface {
	sharedReader
	sharedLeaser
	sharedWriter
}

// sharedReader reads values (read.go's phase read, batch.go).
type sharedReader interface {
	Owner(key string) int
	Name(node int) string
	Get(ctx context.Context, node int, key string) ([]byte, error)
	GetMany(ctx context.Context, items []remote.Item, got func([]*remote.Item))
}

// sharedLeaser takes leases and fills with them (loader.go, batch.go, refresh.go).
type sharedLeaser interface {
	Lease(ctx context.Context, node int, key, token string, ttl time.Duration) ([]byte, remote.LeaseState, string, error)
	LeaseMany(ctx context.Context, items []remote.Item, ttl time.Duration)
	FillLeased(ctx context.Context, node int, key, token string, b []byte, ttl time.Duration) error
	FillLeasedMany(ctx context.Context, items []remote.Item, ttl func(i int) time.Duration)
	TryLease(ctx context.Context, node int, key, token string, ttl, threshold time.Duration) (bool, error)
	FillRefreshed(ctx context.Context, node int, key, token string, b []byte, ttl time.Duration) error
	ReleaseLease(ctx context.Context, node int, key, token string) error
	ReleaseRefreshLease(ctx context.Context, node int, key, token string) error
	AwaitFill(ctx context.Context, node int, key string) ([]byte, bool, error)
}

// sharedWriter writes and publishes invalidations (write.go), or repairs undecodable
// bytes (loader.go, batch.go).
type sharedWriter interface {
	Set(ctx context.Context, node int, key string, b []byte, ttl time.Duration, payload func(keys []string) []byte) error
	Del(ctx context.Context, items []remote.Item, payload func(keys []string) []byte) error
	Repair(ctx context.Context, node int, key string, b []byte, ttl time.Duration) error
	FillMany(ctx context.Context, items []remote.Item, ttl func(i int) time.Duration)
}

var _ sharedTier = (*remote.Redis)(nil)

// noShared is the shared tier of a Cache without Redis: it holds nothing, and every
// lease is won at once (there is nobody to share a load with).
type noShared struct{}

func (noShared) Owner(string) int { return 0 }
func (noShared) Name(int) string  { return "" }
func (noShared) Get(context.Context, int, string) ([]byte, error) {
	return nil, remote.ErrMiss
}
func (noShared) GetMany(_ context.Context, items []remote.Item, got func([]*remote.Item)) {
	its := make([]*remote.Item, len(items))
	for i := range items {
		items[i].Err = remote.ErrMiss
		its[i] = &items[i]
	}
	if got != nil {
		got(its)
	}
}
func (noShared) Lease(_ context.Context, _ int, _, token string, _ time.Duration) ([]byte, remote.LeaseState, string, error) {
	if token == "" {
		token = remote.NewToken()
	}
	return nil, remote.LeaseWon, token, nil
}
func (noShared) LeaseMany(_ context.Context, items []remote.Item, _ time.Duration) {
	for i := range items {
		items[i].State = remote.LeaseWon
	}
}
func (noShared) FillLeased(context.Context, int, string, string, []byte, time.Duration) error {
	return nil
}
func (noShared) FillLeasedMany(context.Context, []remote.Item, func(int) time.Duration) {}
func (noShared) TryLease(context.Context, int, string, string, time.Duration, time.Duration) (bool, error) {
	return true, nil
}
func (noShared) ReleaseLease(context.Context, int, string, string) error        { return nil }
func (noShared) ReleaseRefreshLease(context.Context, int, string, string) error { return nil }
func (noShared) AwaitFill(context.Context, int, string) ([]byte, bool, error) {
	return nil, false, nil
}
func (noShared) FillRefreshed(context.Context, int, string, string, []byte, time.Duration) error {
	return nil
}
func (noShared) Set(context.Context, int, string, []byte, time.Duration, func([]string) []byte) error {
	return nil
}
func (noShared) Del(context.Context, []remote.Item, func([]string) []byte) error  { return nil }
func (noShared) Repair(context.Context, int, string, []byte, time.Duration) error { return nil }
func (noShared) FillMany(context.Context, []remote.Item, func(int) time.Duration) {}
