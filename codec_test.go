package tiered

import (
	"encoding/json"
	"math"
	"math/big"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
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

// roundTrip encodes and decodes v with the default CBOR codec.
func roundTrip[V any](t *testing.T, v V) V {
	t.Helper()
	var c Codec[V] = CBOR[V]{}
	b, err := c.Marshal(v)
	if err != nil {
		t.Fatalf("Marshal(%+v): %v", v, err)
	}
	var got V
	if err := c.Unmarshal(b, &got); err != nil {
		t.Fatalf("Unmarshal(%x): %v", b, err)
	}
	return got
}

func TestCBORTimeExact(t *testing.T) {
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		ny = time.FixedZone("EST", -5*3600) // no tzdata
	}
	for _, in := range []time.Time{
		time.Date(2024, 3, 5, 5, 6, 7, 123456789, time.FixedZone("", 3600)),
		time.Date(2024, 3, 5, 4, 6, 7, 1, time.UTC),
		time.Date(2024, 7, 1, 23, 59, 59, 999999999, ny),
		time.Date(1969, 12, 31, 23, 59, 59, 5, time.FixedZone("", -(9*3600+30*60))),
		time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.FixedZone("", 14*3600)),
		time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Now(), // with a monotonic reading, which is dropped
	} {
		got := roundTrip(t, struct{ At time.Time }{in}).At
		_, inOff := in.Zone()
		_, gotOff := got.Zone()
		if !got.Equal(in) || gotOff != inOff {
			t.Errorf("round trip of %v = %v, want the same instant and offset", in, got)
		}
	}
	// The zero time, whatever its Location, comes back as time.Time{}.
	if got := roundTrip(t, time.Time{}.In(ny)); got != (time.Time{}) {
		t.Errorf("round trip of the zero time = %#v", got)
	}
	// The documented limits of RFC 3339: years beyond 9999 do not encode...
	if _, err := (CBOR[time.Time]{}).Marshal(time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)); err == nil {
		t.Error("year 10000 encoded; the codec documentation says it fails")
	}
	// ... and an offset with seconds (local mean time) is cut to whole minutes.
	lmt := time.Date(1900, 1, 1, 12, 0, 0, 0, time.FixedZone("LMT", 9*60+21))
	if got := roundTrip(t, lmt); got.Sub(lmt) != 21*time.Second {
		t.Errorf("round trip of %v = %v: the documented 21s shift changed", lmt, got)
	}
}

// TestCBORRules pins what the default codec's documentation says round-trips.
func TestCBORRules(t *testing.T) {
	type inner struct{ N int }
	type row struct {
		Exported   string
		unexported string
		Ptr        *inner
		NilPtr     *inner
		Nil        []int
		Empty      []int
		NilMap     map[string]int
		EmptyMap   map[int]string
		Skipped    string `json:"-"`
		Omitted    []int  `cbor:",omitempty"`
		Binary     string
		Long       []bool
	}
	in := row{Exported: "e", unexported: "u", Ptr: &inner{7}, Empty: []int{}, EmptyMap: map[int]string{},
		Skipped: "s", Omitted: []int{}, Binary: "\xff\xfe ok", Long: make([]bool, 200_000)}
	got := roundTrip(t, in)
	want := in
	want.unexported, want.Skipped, want.Omitted = "", "", nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("round trip = %+v\nwant %+v", got, want)
	}
	if got.Ptr == in.Ptr {
		t.Error("the decoded pointer is the original one")
	}

	// any: integers as int64 (beyond, *big.Int), floats as float64, maps as map[string]any.
	doc := map[string]any{
		"int": 1, "neg": -2, "u8": uint8(3), "big": uint64(math.MaxUint64), "f32": float32(1.5), "f": 2.25,
		"s": "x", "b": []byte("y"), "t": time.Date(2024, 1, 2, 3, 4, 5, 6, time.UTC),
		"nested": map[string]any{"list": []any{1, "two", map[string]int{"three": 3}}},
	}
	wantDoc := map[string]any{
		"int": int64(1), "neg": int64(-2), "u8": int64(3), "big": new(big.Int).SetUint64(math.MaxUint64), "f32": 1.5, "f": 2.25,
		"s": "x", "b": []byte("y"), "t": time.Date(2024, 1, 2, 3, 4, 5, 6, time.UTC),
		"nested": map[string]any{"list": []any{int64(1), "two", map[string]any{"three": int64(3)}}},
	}
	if got := roundTrip(t, doc); !reflect.DeepEqual(got, wantDoc) {
		t.Errorf("round trip of %#v\n= %#v\nwant %#v", doc, got, wantDoc)
	}
	if got := roundTrip[any](t, []any{map[string]any{"k": 1}}); !reflect.DeepEqual(got, []any{map[string]any{"k": int64(1)}}) {
		t.Errorf("round trip of an any = %#v", got)
	}
	// A map held in an any must have string keys.
	b, err := (CBOR[any]{}).Marshal(map[int]string{1: "a"})
	if err != nil {
		t.Fatal(err)
	}
	var a any
	if err := (CBOR[any]{}).Unmarshal(b, &a); err == nil {
		t.Errorf("a map[int]string in an any decoded, as %#v; the documentation says it does not", a)
	}
}

func TestCheckCodec(t *testing.T) {
	type withFunc struct {
		ID int
		F  func()
	}
	type withChan struct{ C chan int }
	type withMapOfFuncs struct{ M map[string]func() }
	type ok struct {
		ID  int
		Err error // storable while nil
		Any any
	}
	for name, err := range map[string]error{
		"func":            checkCodec[func()](CBOR[func()]{}),
		"chan":            checkCodec[chan int](CBOR[chan int]{}),
		"complex128":      checkCodec[complex128](CBOR[complex128]{}),
		"struct w/ func":  checkCodec[withFunc](CBOR[withFunc]{}),
		"*struct w/ chan": checkCodec[*withChan](CBOR[*withChan]{}),
		"map of funcs":    checkCodec[withMapOfFuncs](CBOR[withMapOfFuncs]{}),
		"[]complex64":     checkCodec[[]complex64](CBOR[[]complex64]{}),
		"raw int":         checkCodec[int](rawCodec[int]{}),
		"empty name":      checkCodec[int](namedCodec{}),
	} {
		if err == nil {
			t.Errorf("%s: checkCodec = nil, want an error", name)
		} else if !strings.HasPrefix(err.Error(), "tiered: ") {
			t.Errorf("%s: checkCodec = %q", name, err)
		}
	}
	err := checkCodec[withFunc](CBOR[withFunc]{})
	if want := "tiered: values of type tiered.withFunc cannot be stored in the shared tier"; err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("checkCodec = %v, want %q...", err, want)
	}
	for name, err := range map[string]error{
		"row":            checkCodec[ok](CBOR[ok]{}),
		"*row":           checkCodec[*ok](CBOR[*ok]{}),
		"any":            checkCodec[any](CBOR[any]{}),
		"map[string]any": checkCodec[map[string]any](CBOR[map[string]any]{}),
		"time":           checkCodec[time.Time](CBOR[time.Time]{}),
		"[]byte":         checkCodec(defaultCodec[[]byte]()),
		"string":         checkCodec(defaultCodec[string]()),
		"error":          checkCodec[error](CBOR[error]{}),
	} {
		if err != nil {
			t.Errorf("%s: checkCodec = %v", name, err)
		}
	}
}

// namedCodec is a codec without a name.
type namedCodec struct{ CBOR[int] }

func (namedCodec) Name() string { return "" }

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

// codecTimedRecord is a typical 7-field row with a timestamp, the shape whose time
// precision the default codec must keep.
type codecTimedRecord struct {
	ID      int64
	Name    string
	Email   string
	Tags    []string
	Score   float64
	Active  bool
	Created time.Time
}

var timedRecord = codecTimedRecord{ID: 12345, Name: "Ada Lovelace", Email: "ada@example.com",
	Tags: []string{"admin", "math", "eng"}, Score: 97.5, Active: true,
	Created: time.Date(2024, 3, 5, 5, 6, 7, 123456789, time.FixedZone("", 3600))}

// cborV1 is the first default codec (fxamacker/cbor's default modes: times as whole
// Unix seconds): the baseline of BenchmarkCodecCBORTime.
type cborV1[V any] struct{}

func (cborV1[V]) Name() string                   { return "cbor" }
func (cborV1[V]) Marshal(v V) ([]byte, error)    { return cbor.Marshal(v) }
func (cborV1[V]) Unmarshal(b []byte, v *V) error { return cbor.Unmarshal(b, v) }

// BenchmarkCodecCBORTime measures Marshal and Unmarshal separately on a row with a
// time.Time field, with the default codec and with its first version.
func BenchmarkCodecCBORTime(b *testing.B) {
	b.Run("codec=cbor2", func(b *testing.B) { benchCodecTime(b, CBOR[codecTimedRecord]{}) })
	b.Run("codec=cbor", func(b *testing.B) { benchCodecTime(b, cborV1[codecTimedRecord]{}) })
}

func benchCodecTime(b *testing.B, c Codec[codecTimedRecord]) {
	p, err := c.Marshal(timedRecord)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("Marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.Marshal(timedRecord); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Unmarshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var v codecTimedRecord
			if err := c.Unmarshal(p, &v); err != nil {
				b.Fatal(err)
			}
		}
	})
}
