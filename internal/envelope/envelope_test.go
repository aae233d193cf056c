package envelope

import (
	"bytes"
	"errors"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name    string
		h       Header
		payload []byte
	}{
		{"value", Header{Kind: KindValue, CodecTag: Tag("cbor"), ExpireMs: 1_700_000_000_123}, []byte("hello")},
		{"empty value", Header{Kind: KindValue, CodecTag: 7}, nil},
		{"absent", Header{Kind: KindAbsent, CodecTag: 9, ExpireMs: 42}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := Encode(tc.h, tc.payload)
			if len(b) != HeaderSize+len(tc.payload) {
				t.Fatalf("len = %d, want %d", len(b), HeaderSize+len(tc.payload))
			}
			h, p, err := Decode(b)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if h != tc.h || !bytes.Equal(p, tc.payload) {
				t.Fatalf("Decode = %+v %q, want %+v %q", h, p, tc.h, tc.payload)
			}
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	good := Encode(Header{Kind: KindValue, CodecTag: 1, ExpireMs: 5}, []byte("x"))
	mut := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"nil", nil},
		{"garbage from redis-cli", []byte("hello world, not a frame")},
		{"truncated header", good[:HeaderSize-1]},
		{"bad magic", mut(func(b []byte) []byte { b[0] = 'x'; return b })},
		{"unknown version", mut(func(b []byte) []byte { b[2] = Version + 1; return b })},
		{"unknown kind", mut(func(b []byte) []byte { b[3] = 0; return b })},
		{"absent with payload", mut(func(b []byte) []byte { b[3] = byte(KindAbsent); return b })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := Decode(tc.b); !errors.Is(err, ErrInvalid) {
				t.Fatalf("Decode(%q) error = %v, want ErrInvalid", tc.b, err)
			}
		})
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(Encode(Header{Kind: KindValue, CodecTag: 3, ExpireMs: 99}, []byte("payload")))
	f.Add(Encode(Header{Kind: KindAbsent}, nil))
	f.Add([]byte("OK"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, p, err := Decode(b)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		// Whatever decodes must re-encode to the same bytes.
		if again := Encode(h, p); !bytes.Equal(again, b) {
			t.Fatalf("re-encode mismatch: %x vs %x", again, b)
		}
	})
}
