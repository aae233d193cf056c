package benchmarks

import (
	"context"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// valuePad makes every value about 60 bytes, like a small JSON record.
const valuePad = "|a value of a few dozen bytes, like a small record"

// makeValue returns the value of version ver of a key: "v<ver>" and the padding.
func makeValue(ver uint64) string {
	return "v" + strconv.FormatUint(ver, 10) + valuePad
}

// parseVersion returns the version makeValue encoded in v.
func parseVersion(v string) (uint64, bool) {
	end := strings.IndexByte(v, '|')
	if len(v) < 2 || v[0] != 'v' || end < 0 {
		return 0, false
	}
	ver, err := strconv.ParseUint(v[1:end], 10, 64)
	return ver, err == nil
}

// Source is the source of truth behind every system: a database stand-in whose
// loads take Delay. A key of its keyspace (prefix followed by an index) has a version
// that Write advances; any other key has version 0.
type Source struct {
	Delay  time.Duration
	prefix string
	vers   []atomic.Uint64
	loads  atomic.Uint64
}

// NewSource returns a source whose keyspace is prefix+"0" ... prefix+(n-1).
func NewSource(delay time.Duration, prefix string, n int) *Source {
	return &Source{Delay: delay, prefix: prefix, vers: make([]atomic.Uint64, n)}
}

// Keys returns the keyspace's keys, index i at position i.
func (s *Source) Keys() []string {
	keys := make([]string, len(s.vers))
	for i := range keys {
		keys[i] = s.prefix + strconv.Itoa(i)
	}
	return keys
}

func (s *Source) index(key string) (int, bool) {
	if !strings.HasPrefix(key, s.prefix) {
		return 0, false
	}
	i, err := strconv.Atoi(key[len(s.prefix):])
	if err != nil || i < 0 || i >= len(s.vers) {
		return 0, false
	}
	return i, true
}

// Load is the Loader of every system: it waits Delay (or until ctx ends), then
// returns the key's current value.
func (s *Source) Load(ctx context.Context, key string) (string, error) {
	s.loads.Add(1)
	if s.Delay > 0 {
		t := time.NewTimer(s.Delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return "", ctx.Err()
		}
	}
	if i, ok := s.index(key); ok {
		return makeValue(s.vers[i].Load()), nil
	}
	return makeValue(0), nil
}

// Write advances key i's version and returns its new value, which the caller then
// writes through a cache (the application's write path: database, then cache).
func (s *Source) Write(i int) (uint64, string) {
	ver := s.vers[i].Add(1)
	return ver, makeValue(ver)
}

// Version returns key i's current version.
func (s *Source) Version(i int) uint64 { return s.vers[i].Load() }

// Loads returns the number of Load calls so far.
func (s *Source) Loads() uint64 { return s.loads.Load() }
