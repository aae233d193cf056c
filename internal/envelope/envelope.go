// Package envelope frames every value the cache writes to the shared tier.
//
// A frame is a fixed 16-byte header followed by the codec's payload:
//
//	[0:2]   magic 0xC7 0x1E
//	[2]     format version (Version)
//	[3]     kind: KindValue or KindAbsent (a negative-cache entry; no payload)
//	[4:8]   codec tag, big-endian uint32 (see Tag): which codec wrote the payload
//	[8:16]  expiry, big-endian int64 Unix milliseconds: when the writer's Redis TTL ends
//
// The header lets a reader detect bytes written by an older version, by a cache with
// another codec, or by anything else (redis-cli, another library) instead of misreading
// them, and lets it bound a near-cache copy by the TTL the value was written with
// without a second round trip (PTTL).
//
// The package depends on nothing but the standard library so that its decoder can be
// fuzzed in isolation (go test -fuzz FuzzDecode ./internal/envelope).
package envelope

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// HeaderSize is the number of bytes a frame adds in front of the payload.
const HeaderSize = 16

// Version is the frame format written by this package.
const Version = 1

const (
	magic0 = 0xC7
	magic1 = 0x1E
)

// Kind says what a frame holds.
type Kind uint8

const (
	// KindValue frames an encoded value.
	KindValue Kind = 1
	// KindAbsent records that the source had no value for the key (negative caching).
	KindAbsent Kind = 2
)

// Header is the decoded fixed part of a frame.
type Header struct {
	Kind     Kind
	CodecTag uint32
	ExpireMs int64 // Unix milliseconds; 0 means no expiry was recorded
}

// Errors returned by Decode. All of them wrap ErrInvalid.
var (
	ErrInvalid = errors.New("envelope: invalid frame")
	errShort   = fmt.Errorf("%w: shorter than the %d-byte header", ErrInvalid, HeaderSize)
	errMagic   = fmt.Errorf("%w: not written by this library (bad magic)", ErrInvalid)
	errKind    = fmt.Errorf("%w: unknown kind", ErrInvalid)
	errAbsent  = fmt.Errorf("%w: absent marker with a payload", ErrInvalid)
)

// Tag derives a codec tag from a codec's name (CRC-32 IEEE).
func Tag(codecName string) uint32 { return crc32.ChecksumIEEE([]byte(codecName)) }

// Append appends a frame for h and payload to dst and returns the extended slice.
func Append(dst []byte, h Header, payload []byte) []byte {
	var hdr [HeaderSize]byte
	hdr[0], hdr[1], hdr[2], hdr[3] = magic0, magic1, Version, byte(h.Kind)
	binary.BigEndian.PutUint32(hdr[4:8], h.CodecTag)
	binary.BigEndian.PutUint64(hdr[8:16], uint64(h.ExpireMs))
	dst = append(dst, hdr[:]...)
	return append(dst, payload...)
}

// Encode returns a new frame for h and payload.
func Encode(h Header, payload []byte) []byte {
	return Append(make([]byte, 0, HeaderSize+len(payload)), h, payload)
}

// Decode parses a frame. The payload aliases b. It checks the magic, version and kind;
// the caller checks CodecTag against its own codec.
func Decode(b []byte) (Header, []byte, error) {
	if len(b) < HeaderSize {
		return Header{}, nil, errShort
	}
	if b[0] != magic0 || b[1] != magic1 {
		return Header{}, nil, errMagic
	}
	if b[2] != Version {
		return Header{}, nil, fmt.Errorf("%w: format version %d, this reader knows %d", ErrInvalid, b[2], Version)
	}
	h := Header{
		Kind:     Kind(b[3]),
		CodecTag: binary.BigEndian.Uint32(b[4:8]),
		ExpireMs: int64(binary.BigEndian.Uint64(b[8:16])),
	}
	payload := b[HeaderSize:]
	switch h.Kind {
	case KindValue:
	case KindAbsent:
		if len(payload) != 0 {
			return Header{}, nil, errAbsent
		}
	default:
		return Header{}, nil, errKind
	}
	return h, payload, nil
}
