package tiered

import (
	"context"
	"time"

	"github.com/tieredcache/tiered/internal/remote"
)

// sharedTier is what the read and write paths need from the shared tier.
// remote.Redis implements it; noShared is the null object for a Cache without Redis.
type sharedTier interface {
	Owner(key string) int
	Get(ctx context.Context, node int, key string) ([]byte, error)
	Fill(ctx context.Context, node int, key string, b []byte, ttl time.Duration) error
	Repair(ctx context.Context, node int, key string, b []byte, ttl time.Duration) error
	Set(ctx context.Context, node int, key string, b []byte, ttl time.Duration, payload []byte) error
	GetMany(ctx context.Context, items []remote.Item)
	FillMany(ctx context.Context, items []remote.Item, ttl func(i int) time.Duration)
	Del(ctx context.Context, items []remote.Item, payload func(keys []string) []byte) error
	Lease(ctx context.Context, node int, key, token string, ttl time.Duration) ([]byte, remote.LeaseState, error)
	FillLeased(ctx context.Context, node int, key, token string, b []byte, ttl time.Duration) error
	TryLease(ctx context.Context, node int, key, token string, ttl, threshold time.Duration) (bool, error)
	ReleaseLease(ctx context.Context, node int, key, token string) error
}

var _ sharedTier = (*remote.Redis)(nil)

// noShared is the shared tier of a Cache without Redis: it holds nothing.
type noShared struct{}

func (noShared) Owner(string) int { return 0 }
func (noShared) Get(context.Context, int, string) ([]byte, error) {
	return nil, remote.ErrMiss
}
func (noShared) Fill(context.Context, int, string, []byte, time.Duration) error   { return nil }
func (noShared) Repair(context.Context, int, string, []byte, time.Duration) error { return nil }
func (noShared) Set(context.Context, int, string, []byte, time.Duration, []byte) error {
	return nil
}
func (noShared) GetMany(_ context.Context, items []remote.Item) {
	for i := range items {
		items[i].Err = remote.ErrMiss
	}
}
func (noShared) FillMany(context.Context, []remote.Item, func(int) time.Duration) {}
func (noShared) Del(context.Context, []remote.Item, func([]string) []byte) error  { return nil }
func (noShared) Lease(context.Context, int, string, string, time.Duration) ([]byte, remote.LeaseState, error) {
	return nil, remote.LeaseWon, nil // nobody to share a load with
}
func (noShared) FillLeased(context.Context, int, string, string, []byte, time.Duration) error {
	return nil
}
func (noShared) TryLease(context.Context, int, string, string, time.Duration, time.Duration) (bool, error) {
	return true, nil
}
func (noShared) ReleaseLease(context.Context, int, string, string) error { return nil }
