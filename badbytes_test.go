package tiered

import (
	"context"
	"testing"

	"github.com/tieredcache/tiered/internal/envelope"
	"github.com/tieredcache/tiered/internal/redistest"
)

// Bytes in Redis that do not decode are a miss: the Loader answers once, the value is
// repaired in Redis, nothing undecodable reaches the near-cache, and Stats count it.
func TestUndecodableBytesInRedis(t *testing.T) {
	servers := redistest.Start(t, 1)
	src := newSource()
	o := ringOpts[string](t, servers)
	o.Loader = src
	c := newCache(t, o)
	ctx := context.Background()
	valid := envelope.Encode(envelope.Header{Kind: envelope.KindValue, CodecTag: c.tag}, []byte("payload"))
	unknownVersion := append([]byte(nil), valid...)
	unknownVersion[2] = envelope.Version + 1
	otherCodec := envelope.Encode(envelope.Header{Kind: envelope.KindValue, CodecTag: envelope.Tag("json")}, []byte(`"x"`))
	for _, tc := range []struct {
		name string
		raw  string
	}{
		{"written with redis-cli", "hello"},
		{"empty", ""},
		{"truncated envelope", string(valid[:envelope.HeaderSize-3])},
		{"unknown version", string(unknownVersion)},
		{"another codec", string(otherCodec)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := "bad:" + tc.name
			src.put(key, "good")
			rk := c.shared.(interface{ Key(string) string }).Key(key)
			if _, err := servers[0].Do(ctx, "SET", rk, tc.raw); err != nil {
				t.Fatal(err)
			}
			before := c.Stats()
			calls := src.calls.Load()
			for _, get := range []func() (string, error){
				func() (string, error) { return c.Get(ctx, key) },
				func() (string, error) { m, err := c.GetMany(ctx, []string{key}); return m[key], err },
			} {
				if v, err := get(); err != nil || v != "good" {
					t.Fatalf("read over undecodable bytes = %q, %v; want the loaded value", v, err)
				}
			}
			after := c.Stats()
			if d := after.DecodeErrors - before.DecodeErrors; d != 1 {
				t.Errorf("DecodeErrors +%d, want +1 (the second read finds the repaired value)", d)
			}
			if n := src.calls.Load() - calls; n != 1 {
				t.Errorf("loader calls = %d, want 1", n)
			}
			raw, err := servers[0].Do(ctx, "GET", rk)
			if err != nil {
				t.Fatal(err)
			}
			if _, payload, err := envelope.Decode([]byte(raw.(string))); err != nil || string(payload) != "good" {
				t.Errorf("Redis holds %q after the reload; want a valid frame of the loaded value", raw)
			}
		})
	}
}
