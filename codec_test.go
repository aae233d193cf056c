package tiered

import (
	"encoding/json"
	"reflect"
	"testing"
)

type codecRecord struct {
	ID      int64
	Name    string
	Email   string
	Tags    []string
	Score   float64
	Active  bool
	Created int64
}

var record = codecRecord{ID: 12345, Name: "Ada Lovelace", Email: "ada@example.com",
	Tags: []string{"admin", "math", "eng"}, Score: 97.5, Active: true, Created: 1700000000}

func TestCodecsRoundTrip(t *testing.T) {
	var c Codec[codecRecord] = CBOR[codecRecord]{}
	b, err := c.Marshal(record)
	if err != nil {
		t.Fatal(err)
	}
	var got codecRecord
	if err := c.Unmarshal(b, &got); err != nil || !reflect.DeepEqual(got, record) {
		t.Fatalf("CBOR round trip = %+v, %v", got, err)
	}
	raw := defaultCodec[[]byte]()
	b, _ = raw.Marshal([]byte("abc"))
	var bs []byte
	if err := raw.Unmarshal(b, &bs); err != nil || string(bs) != "abc" {
		t.Fatalf("raw []byte round trip = %q, %v", bs, err)
	}
	rs := defaultCodec[string]()
	b, _ = rs.Marshal("héllo")
	var s string
	if err := rs.Unmarshal(b, &s); err != nil || s != "héllo" {
		t.Fatalf("raw string round trip = %q, %v", s, err)
	}
	if _, ok := defaultCodec[int]().(CBOR[int]); !ok {
		t.Fatal("default codec for int is not CBOR")
	}
}

// BenchmarkCodecCBOR encodes and decodes a typical record with the default codec;
// BenchmarkCodecJSON is its baseline, encoding/json on the same record.
func BenchmarkCodecCBOR(b *testing.B) {
	var c Codec[codecRecord] = CBOR[codecRecord]{}
	b.ReportAllocs()
	for b.Loop() {
		p, err := c.Marshal(record)
		if err != nil {
			b.Fatal(err)
		}
		var v codecRecord
		if err := c.Unmarshal(p, &v); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCodecJSON(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		p, err := json.Marshal(record)
		if err != nil {
			b.Fatal(err)
		}
		var v codecRecord
		if err := json.Unmarshal(p, &v); err != nil {
			b.Fatal(err)
		}
	}
}
