package tiered

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/tieredcache/tiered/internal/envelope"
	"github.com/tieredcache/tiered/internal/local"
	"github.com/tieredcache/tiered/internal/remote"
)

// classify turns the outcome of a shared-tier read of key (its bytes, or the error)
// into a hit with its time left, a miss, undecodable bytes or a failed node, and
// counts and logs it. Get and GetMany share it.
func (c *Cache[V]) classify(key string, b []byte, err error) (shared[V], time.Duration) {
	switch {
	case err == nil:
		v, absent, ttl, derr := c.decode(b)
		if derr == nil {
			c.stats.remoteHits.Add(1)
			return shared[V]{flight: flight[V]{v: v, absent: absent}, hit: true}, ttl
		}
		c.stats.decodeErrors.Add(1)
		c.opts.Logger.Warn("tiered: undecodable value in the shared tier; reloading", "key", key, "err", derr)
		return shared[V]{corrupt: true}, 0
	case errors.Is(err, remote.ErrMiss):
		c.stats.remoteMisses.Add(1)
		return shared[V]{}, 0
	default:
		c.stats.remoteErrors.Add(1)
		c.opts.Logger.Warn("tiered: shared tier read failed; loading from source", "key", key, "err", err)
		return shared[V]{failed: true}, 0
	}
}

// frame encodes a loaded value (or an absence) for the shared tier with its jittered
// TTL. ok is false if the value cannot be cached: too large, or not encodable.
func (c *Cache[V]) frame(key string, v V, absent bool) (frame []byte, ttl time.Duration, ok bool) {
	h := envelope.Header{Kind: envelope.KindAbsent, CodecTag: c.tag}
	ttl = c.jitter(c.opts.NegativeTTL)
	var payload []byte
	if !absent {
		var err error
		if payload, err = c.opts.Codec.Marshal(v); err != nil {
			c.stats.loadErrors.Add(1)
			c.opts.Logger.Warn("tiered: loaded value does not encode; not cached", "key", key, "err", err)
			return nil, 0, false
		}
		if len(payload) > c.opts.MaxValueSize {
			c.stats.oversize.Add(1)
			c.opts.Logger.Warn("tiered: loaded value over MaxValueSize; not cached", "key", key, "size", len(payload))
			return nil, 0, false
		}
		h.Kind, ttl = envelope.KindValue, c.jitter(c.opts.TTL)
	}
	h.ExpireMs = time.Now().Add(ttl).UnixMilli()
	return envelope.Encode(h, payload), ttl, true
}

// decode parses bytes read from the shared tier, and returns how long the value has
// left to live there.
func (c *Cache[V]) decode(b []byte) (v V, absent bool, ttl time.Duration, err error) {
	h, payload, err := envelope.Decode(b)
	if err != nil {
		return v, false, 0, err
	}
	if h.CodecTag != c.tag {
		return v, false, 0, fmt.Errorf("tiered: value written with another codec (tag %#x, ours %q is %#x)", h.CodecTag, c.opts.Codec.Name(), c.tag)
	}
	ttl = time.Until(time.UnixMilli(h.ExpireMs))
	if h.Kind == envelope.KindAbsent {
		return v, true, ttl, nil
	}
	if err := c.opts.Codec.Unmarshal(payload, &v); err != nil {
		return v, false, 0, fmt.Errorf("tiered: decode with %s: %w", c.opts.Codec.Name(), err)
	}
	return v, false, ttl, nil
}

// storeLocal puts a filled value in the near-cache, for no longer than the local TTL
// nor than remaining (its time left in the shared tier), fenced by f.
func (c *Cache[V]) storeLocal(f local.Fence, key string, v V, absent bool, cost int64, remaining time.Duration) {
	ttl := c.jitter(c.opts.LocalTTL)
	refreshIn := local.Never
	if absent {
		ttl = c.jitter(min(c.opts.LocalTTL, c.opts.NegativeTTL))
	} else {
		refreshIn = c.refreshIn(remaining)
	}
	c.local.Store(f, key, v, absent, cost, min(ttl, remaining), refreshIn)
}

func (c *Cache[V]) jitter(d time.Duration) time.Duration {
	if c.opts.Jitter == 0 || d <= 0 {
		return d
	}
	return d - time.Duration(rand.Float64()*c.opts.Jitter*float64(d))
}
