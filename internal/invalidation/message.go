// Package invalidation is the pub/sub bus that keeps every process's near-cache
// coherent with the shared tier.
//
// Every write through the cache (Set, Delete) runs one script on the key's owner node
// that changes the key, increments the node's invalidation sequence and publishes a
// Message on the node's channel, atomically (see package remote). Every process runs one
// Subscriber per node: it evicts the keys it is told about, and it notices what pub/sub
// cannot deliver: pub/sub is at-most-once, and go-redis re-subscribes silently after a
// reconnect, so a message lost with a connection would otherwise leave a stale copy
// behind for its whole local TTL. The Subscriber reports
//
//   - the node as down as soon as its connection fails or stops answering pings, and
//     up again only once a new subscription is confirmed: the owner then flushes the
//     node's near-cache entries and keeps them out of the near-cache in between;
//   - a gap in the node's sequence numbers (a lost message) and a new epoch (the node
//     restarted, or failed over, and its sequence started again): the owner flushes.
package invalidation

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unsafe"
)

// Message is one published invalidation.
type Message struct {
	Epoch  string   // the node's epoch: a random id stored on the node, new after a restart that lost it
	Seq    uint64   // the node's invalidation sequence number, 1, 2, 3, ... within an epoch
	Origin string   // the id of the cache that wrote (it has already evicted its own copy)
	SentUs int64    // the writer's clock at the write, Unix microseconds (for delivery lag)
	Keys   []string // the keys written or deleted; none: flush all of the node's entries
}

// The wire format is "<epoch>|<seq>|<payload>": the script on the node prefixes the
// epoch and the sequence number it assigns to the payload the writer built with
// AppendPayload: "<origin>|<sentUs>|" followed by each key as a uvarint length and
// its bytes, so keys may hold any byte. A payload with no keys means "flush": the
// node's keys were cleared wholesale (see remote.Redis.Replay).

// ParseFill decodes a fill notice, published on a fill channel when a lease that a
// process waited for ends: "<len(key)>:<key>", followed by the value the key was
// filled with when the node sent it along. Values are never empty (they are
// envelopes), so a notice without one (a released lease, a large value) means "read
// the key". ok is false for a malformed notice.
func ParseFill(s string) (key string, value []byte, ok bool) {
	n, rest, found := strings.Cut(s, ":")
	l, err := strconv.Atoi(n)
	if !found || err != nil || l < 0 || l > len(rest) {
		return "", nil, false
	}
	if len(rest) > l {
		value = []byte(rest[l:])
	}
	return rest[:l], value, true
}

// AppendPayload appends the writer's part of a message to dst.
func AppendPayload(dst []byte, origin string, sentUs int64, keys []string) []byte {
	dst = append(dst, origin...)
	dst = append(dst, '|')
	dst = strconv.AppendInt(dst, sentUs, 10)
	dst = append(dst, '|')
	for _, k := range keys {
		dst = binary.AppendUvarint(dst, uint64(len(k)))
		dst = append(dst, k...)
	}
	return dst
}

// ErrMalformed is returned by Parse for a message not in the wire format.
var ErrMalformed = errors.New("invalidation: malformed message")

// Parse decodes a message as published on a channel.
func Parse(s string) (Message, error) {
	var m Message
	err := ParseInto(&m, s)
	return m, err
}

// ParseInto is Parse into m, whose Keys' array it reuses. The strings of m are
// substrings of s.
func ParseInto(m *Message, s string) error {
	*m = Message{Keys: m.Keys[:0]}
	var field string
	var ok bool
	if m.Epoch, s, ok = strings.Cut(s, "|"); !ok || m.Epoch == "" {
		return fmt.Errorf("%w: no epoch", ErrMalformed)
	}
	if field, s, ok = strings.Cut(s, "|"); !ok {
		return fmt.Errorf("%w: no sequence number", ErrMalformed)
	}
	seq, err := strconv.ParseUint(field, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: sequence number %q", ErrMalformed, field)
	}
	m.Seq = seq
	if m.Origin, s, ok = strings.Cut(s, "|"); !ok {
		return fmt.Errorf("%w: no origin", ErrMalformed)
	}
	if field, s, ok = strings.Cut(s, "|"); !ok {
		return fmt.Errorf("%w: no timestamp", ErrMalformed)
	}
	if m.SentUs, err = strconv.ParseInt(field, 10, 64); err != nil {
		return fmt.Errorf("%w: timestamp %q", ErrMalformed, field)
	}
	// The keys are substrings of s, their lengths read through a view of its bytes:
	// no copy of either.
	for len(s) > 0 {
		n, w := binary.Uvarint(unsafe.Slice(unsafe.StringData(s), min(len(s), binary.MaxVarintLen64)))
		if w <= 0 || n > uint64(len(s)-w) {
			return fmt.Errorf("%w: truncated key", ErrMalformed)
		}
		m.Keys = append(m.Keys, s[w:w+int(n)])
		s = s[w+int(n):]
	}
	return nil
}
