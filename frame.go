package tiered

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/tieredcache/tiered/internal/envelope"
	"github.com/tieredcache/tiered/internal/local"
	"github.com/tieredcache/tiered/internal/remote"
)

// classify turns the outcome of a shared-tier read of key on node (its bytes, or the
// error) into a hit with its time left, a miss, undecodable bytes or a failed node,
// and counts and logs it. Get and GetMany share it.
func (c *Cache[V]) classify(node int, key string, b []byte, err error) (shared[V], time.Duration) {
	switch {
	case err == nil:
		v, absent, ttl, derr := c.decode(b)
		if derr == nil {
			c.stats.remoteHits.Add(1)
			return shared[V]{outcome: outcome[V]{v: v, absent: absent}, hit: true}, ttl
		}
		c.stats.decodeErrors.Add(1)
		c.opts.Logger.Warn("tiered: undecodable value in the shared tier; reloading", "key", key, "err", derr)
		return shared[V]{corrupt: true}, 0
	case errors.Is(err, remote.ErrMiss):
		c.stats.remoteMisses.Add(1)
		return shared[V]{}, 0
	default:
		c.stats.remoteErrors.Add(1)
		c.warnNode(node, "tiered: shared tier read failed; loading from source", "key", key, "err", err)
		return shared[V]{failed: true}, 0
	}
}

// warnEvery is the least time between two warnings about one node: while a node is
// down every read of its keys fails, and one line per failure would flood the log.
// The lines left out are counted in Stats.LogsSuppressed.
const warnEvery = time.Second

// warnNode logs a warning about node, at most once per warnEvery.
func (c *Cache[V]) warnNode(node int, msg string, args ...any) {
	p, ok := c.warned.Load(node)
	if !ok {
		p, _ = c.warned.LoadOrStore(node, new(atomic.Int64))
	}
	last := p.(*atomic.Int64)
	now := time.Now().UnixNano()
	prev := last.Load()
	if now-prev < int64(warnEvery) || !last.CompareAndSwap(prev, now) {
		c.stats.logsSuppressed.Add(1)
		return
	}
	c.opts.Logger.Warn(msg, append(args, "node", c.shared.Name(node))...)
}

// encode returns v's bytes for the shared tier and the value they decode to, which is
// what every tier serves (see Codec): a loaded or Set value is never served in a form
// another process could not decode from the shared tier.
func (c *Cache[V]) encode(v V) ([]byte, V, error) {
	if c.raw {
		b, _ := rawBytes(v) // a string or []byte is its own encoding
		return b, v, nil
	}
	payload, err := c.opts.Codec.Marshal(v)
	if err != nil {
		return nil, v, fmt.Errorf("encode with %s: %w", c.opts.Codec.Name(), err)
	}
	var rt V
	if err := c.opts.Codec.Unmarshal(bytes.Clone(payload), &rt); err != nil {
		return nil, v, fmt.Errorf("%s does not decode its own encoding: %w", c.opts.Codec.Name(), err)
	}
	return payload, rt, nil
}

// frame encodes a loaded value (or an absence) for the shared tier with its jittered
// TTL (ttl, or Options.TTL if 0), and returns it with the value every tier serves
// (see encode). A value over MaxValueSize is returned not cacheable; one the codec
// cannot encode is an error.
func (c *Cache[V]) frame(key string, v V, absent bool, ttl time.Duration) (filled[V], error) {
	h := envelope.Header{Kind: envelope.KindAbsent, CodecTag: c.tag}
	f := filled[V]{outcome: outcome[V]{absent: absent}, ttl: c.jitter(c.opts.NegativeTTL), cacheable: true}
	var payload []byte
	if !absent {
		var err error
		if payload, f.v, err = c.encode(v); err != nil {
			return f, err
		}
		if len(payload) > c.opts.MaxValueSize {
			c.stats.oversize.Add(1)
			c.opts.Logger.Warn("tiered: loaded value over MaxValueSize; not cached", "key", key, "size", len(payload))
			f.cacheable = false
			return f, nil
		}
		h.Kind, f.ttl = envelope.KindValue, c.jitter(cmp.Or(ttl, c.opts.TTL))
	}
	h.ExpireMs = time.Now().Add(f.ttl).UnixMilli()
	f.frame = envelope.Encode(h, payload)
	return f, nil
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
	if c.raw {
		v, _ = rawValue[V](payload) // inline: no codec interface call, no copy
		return v, false, ttl, nil
	}
	if v, err = c.unmarshal(payload); err != nil {
		return v, false, 0, fmt.Errorf("tiered: decode with %s: %w", c.opts.Codec.Name(), err)
	}
	return v, false, ttl, nil
}

// unmarshal decodes b with the Cache's codec. Apart from decode, so that the value
// the codec's interface call takes a pointer to (and so moves to the heap) is one
// only the codec's path pays for (inlined, it would move decode's own).
//
//go:noinline
func (c *Cache[V]) unmarshal(b []byte) (v V, err error) {
	err = c.opts.Codec.Unmarshal(b, &v)
	return v, err
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
