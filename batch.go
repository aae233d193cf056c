package tiered

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/tieredcache/tiered/internal/local"
	"github.com/tieredcache/tiered/internal/remote"
	"golang.org/x/sync/errgroup"
)

// GetMany returns the values of keys: near-cache hits, then one round trip per shared
// tier node (the nodes in parallel), then the BatchLoader (or the Loader per key, at
// most LoadConcurrency at a time) for the rest, filling both tiers. Keys absent at the
// source are left out of the map. If some loads fail, it returns the values it has
// and an error joining the failures; an invalid key fails the call before any work.
func (c *Cache[V]) GetMany(ctx context.Context, keys []string) (map[string]V, error) {
	for _, k := range keys {
		if err := c.checkKey(k); err != nil {
			return nil, err
		}
	}
	if !c.enter() {
		return nil, ErrClosed
	}
	defer c.wg.Done()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out := make(map[string]V, len(keys))
	type miss struct {
		h uint64
		f local.Fence
	}
	misses := make(map[string]miss)
	var items []remote.Item
	for _, k := range keys {
		if _, dup := misses[k]; dup {
			continue
		}
		h := c.local.Hash(k)
		if v, absent, ok, refresh := c.local.Lookup(h, k); ok {
			c.stats.localHit(h)
			if refresh {
				c.scheduleRefresh(k)
			}
			if !absent {
				out[k] = v
			}
			continue
		}
		c.stats.localMisses.Add(1)
		node := c.shared.Owner(k)
		misses[k] = miss{h: h, f: c.local.Fence(h, node)}
		items = append(items, remote.Item{Key: k, Node: node})
	}
	if len(items) == 0 {
		return out, nil
	}

	c.shared.GetMany(ctx, items)
	var toLoad []remote.Item // Val unset; Err marks a node that failed
	for _, it := range items {
		sr, ttl := c.classify(it.Key, it.Val, it.Err)
		if sr.hit {
			c.storeLocal(misses[it.Key].f, it.Key, sr.v, sr.absent, int64(len(it.Val)), ttl)
			if !sr.absent {
				out[it.Key] = sr.v
			}
			continue
		}
		if !sr.failed {
			it.Err = nil // load and fill; a non-nil Err keeps the failed node out of the fill
		}
		it.Val, it.Overwrite = nil, sr.corrupt // undecodable bytes are replaced, as by Get
		toLoad = append(toLoad, it)
	}
	if len(toLoad) == 0 || (c.opts.Loader == nil && c.opts.BatchLoader == nil) {
		return out, nil
	}

	ctx, cancel := c.loadContext(ctx)
	defer cancel()
	loaded, errs := c.loadMany(ctx, toLoad)
	var fills []remote.Item
	var ttls []time.Duration
	for _, it := range toLoad {
		r, ok := loaded[it.Key]
		if !ok {
			continue // failed; its error is in errs
		}
		frame, ttl, ok := c.frame(it.Key, r.v, r.absent)
		if ok {
			if it.Err == nil { // skip nodes that failed the read
				fills = append(fills, remote.Item{Key: it.Key, Node: it.Node, Val: frame, Overwrite: it.Overwrite})
				ttls = append(ttls, ttl)
			}
			c.storeLocal(misses[it.Key].f, it.Key, r.v, r.absent, int64(len(frame)), ttl)
		}
		if !r.absent {
			out[it.Key] = r.v
		}
	}
	c.local.Wait() // as in load
	if len(fills) > 0 {
		c.shared.FillMany(ctx, fills, func(i int) time.Duration { return ttls[i] })
		for _, it := range fills {
			if it.Err != nil {
				c.stats.remoteErrors.Add(1)
				c.opts.Logger.Warn("tiered: shared tier fill failed", "key", it.Key, "err", it.Err)
			}
		}
	}
	return out, errors.Join(errs...)
}

// loadMany loads the keys of items with the BatchLoader, or with the Loader per key.
// Keys that failed are missing from the result and have an error in errs.
func (c *Cache[V]) loadMany(ctx context.Context, items []remote.Item) (map[string]flight[V], []error) {
	res := make(map[string]flight[V], len(items))
	if c.opts.BatchLoader != nil {
		keys := make([]string, len(items))
		for i, it := range items {
			keys[i] = it.Key
		}
		c.stats.loads.Add(uint64(len(keys)))
		m, err := c.loadBatch(ctx, keys)
		if err != nil {
			c.stats.loadErrors.Add(1)
			return nil, []error{fmt.Errorf("tiered: batch load of %d keys: %w", len(keys), err)}
		}
		for _, k := range keys {
			v, ok := m[k]
			if !ok {
				c.stats.notFound.Add(1)
			}
			res[k] = flight[V]{v: v, absent: !ok}
		}
		return res, nil
	}
	var mu sync.Mutex // protects res and errs
	var errs []error
	var g errgroup.Group
	g.SetLimit(c.opts.LoadConcurrency)
	for _, it := range items {
		g.Go(func() error {
			c.stats.loads.Add(1)
			v, err := c.loadOne(ctx, it.Key)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				res[it.Key] = flight[V]{v: v}
			case errors.Is(err, ErrNotFound):
				c.stats.notFound.Add(1)
				res[it.Key] = flight[V]{absent: true}
			default:
				c.stats.loadErrors.Add(1)
				errs = append(errs, fmt.Errorf("tiered: load %q: %w", it.Key, err))
			}
			return nil
		})
	}
	_ = g.Wait() // the goroutines report through errs
	return res, errs
}
