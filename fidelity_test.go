package tiered

import (
	"context"
	"fmt"
	"reflect"
	"testing"
	"time"
	"unsafe"

	"github.com/tieredcache/tiered/internal/redistest"
)

// Row types as services cache them: database rows with timestamps in various
// zones, nested structs, optional fields, collections and loosely typed JSON.
type (
	fidAddress struct {
		Street, City string
		Zip          *string
	}
	fidUser struct {
		ID        int64
		Name      string
		Address   fidAddress
		Manager   *fidUser
		Roles     []string
		Limits    map[string]int
		CreatedAt time.Time
	}
	fidEvent struct {
		ID   int64
		At   time.Time
		Till *time.Time
		Seen []time.Time
	}
	fidOptional struct {
		Set    *int
		Unset  *int
		Nested *fidAddress
		Absent *fidAddress
	}
	fidCollections struct {
		NilSlice   []int
		EmptySlice []int
		Bytes      []byte
		NilMap     map[string]string
		EmptyMap   map[string]string
		ByID       map[int64]fidAddress
		Matrix     [][]float64
		Fixed      [3]uint16
	}
	fidPrivate struct {
		ID     int64
		secret string
		cached *fidAddress
	}
	fidLoose struct {
		ID    int64
		Attrs any
		Extra map[string]any
	}
)

// fidelityRow is one row of TestEveryTierAnswersTheSameValue.
type fidelityRow struct {
	name string
	run  func(t *testing.T, servers []*redistest.Server)
}

// fidLoss says whether the codec returns a row as it went in (Codec: "the value a
// Get returns is always what the codec decodes").
type fidLoss int

const (
	exact fidLoss = iota
	lossy
	unchecked // depends on the machine's time zone (see sameZoneAsLocal)
)

func fidRow[V any](name string, loss fidLoss, v V) fidelityRow {
	return fidelityRow{name: name, run: func(t *testing.T, servers []*redistest.Server) {
		checkEveryTier(t, servers, v, loss)
	}}
}

// sameZoneAsLocal reports whether one of ts has time.Local's offset at its instant:
// time.Parse then decodes it in time.Local, with Local's zone name, so whether the
// round trip keeps the zone name depends on the machine.
func sameZoneAsLocal(ts ...time.Time) bool {
	for _, t := range ts {
		_, off := t.Zone()
		if _, local := t.In(time.Local).Zone(); off != 0 && off == local {
			return true
		}
	}
	return false
}

func lossyUnlessLocal(loss fidLoss, ts ...time.Time) fidLoss {
	if sameZoneAsLocal(ts...) {
		return unchecked
	}
	return loss
}

// TestEveryTierAnswersTheSameValue loads realistic rows in replica A and reads them
// from A (the load, then a near-cache hit) and from replica B (a shared-tier hit);
// then sets them through A and reads them from A and B. Every answer must be the
// codec's round trip of the row, whichever tier and replica gave it.
func TestEveryTierAnswersTheSameValue(t *testing.T) {
	servers := redistest.Start(t, 3)

	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Logf("no tzdata (%v): America/New_York is a fixed EST zone", err)
		ny = time.FixedZone("EST", -5*3600)
	}
	plus1 := time.FixedZone("", 3600)  // what a decoded +01:00 looks like
	cet := time.FixedZone("CET", 3600) // a named fixed zone: the name is not stored
	at := func(loc *time.Location) time.Time { return time.Date(2024, 3, 5, 5, 6, 7, 123456789, loc) }
	till := at(time.UTC).Add(90 * 24 * time.Hour)
	nyLater := at(ny).Add(time.Hour)
	zip := "75001"
	one := 1

	user := fidUser{ID: 7, Name: "Ada", Address: fidAddress{Street: "1 rue de Rivoli", City: "Paris", Zip: &zip},
		Manager: &fidUser{ID: 1, Name: "Charles", Roles: []string{}, CreatedAt: at(time.UTC)},
		Roles:   []string{"admin", "eng"}, Limits: map[string]int{"rps": 100}, CreatedAt: at(time.UTC)}

	rows := []fidelityRow{
		fidRow("nested struct, UTC times", exact, user),
		fidRow("time UTC", exact, fidEvent{ID: 1, At: at(time.UTC), Till: &till, Seen: []time.Time{at(time.UTC)}}),
		fidRow("time fixed +01:00", lossyUnlessLocal(exact, at(plus1)), fidEvent{ID: 2, At: at(plus1), Seen: []time.Time{}}),
		fidRow("time named fixed zone CET", lossyUnlessLocal(lossy, at(cet)), fidEvent{ID: 3, At: at(cet)}),
		fidRow("time America/New_York", lossyUnlessLocal(lossy, at(ny), nyLater), fidEvent{ID: 4, At: at(ny), Till: &nyLater, Seen: []time.Time{at(ny), at(time.UTC)}}),
		fidRow("time zero", exact, fidEvent{ID: 5}),
		fidRow("time now, monotonic reading", exact, fidEvent{ID: 6, At: time.Now().UTC()}),
		fidRow("pointers", exact, fidOptional{Set: &one, Nested: &fidAddress{City: "Lyon"}}),
		fidRow("collections", exact, fidCollections{EmptySlice: []int{}, Bytes: []byte{0, 1, 255}, EmptyMap: map[string]string{},
			ByID: map[int64]fidAddress{-1: {City: "Nice"}}, Matrix: [][]float64{{1.5, -0}, nil, {}}, Fixed: [3]uint16{1, 2, 3}}),
		fidRow("unexported fields", lossy, fidPrivate{ID: 9, secret: "s3cr3t", cached: &fidAddress{City: "Lille"}}),
		fidRow("any holding CBOR's types", exact, fidLoose{ID: 10, Attrs: map[string]any{"n": int64(1), "f": 1.5, "s": "x",
			"l": []any{int64(-2), "y"}, "m": map[string]any{"deep": true}}, Extra: map[string]any{}}),
		fidRow("any holding Go numbers and nested maps", lossy, fidLoose{ID: 11, Attrs: map[string]any{"n": 1, "u": uint(2),
			"f32": float32(0.5), "m": map[string]any{"list": []any{3, "four"}}, "typed": map[string]int{"five": 5}},
			Extra: map[string]any{"count": 42}}),
		fidRow("any holding a string", exact, fidLoose{ID: 12, Attrs: "plain"}),
		fidRow("map[string]any document", lossy, map[string]any{"id": 13, "tags": []string{"a"}, "at": at(ny)}),
		// The raw codec's values, which a shared-tier read decodes inline (rawValue).
		fidRow("string", exact, "plain text, ünïcode, \x00 and all"),
		fidRow("empty string", exact, ""),
		fidRow("[]byte", exact, []byte{0, 1, 255, 'x'}),
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) { r.run(t, servers) })
	}
}

// checkEveryTier runs one row: see TestEveryTierAnswersTheSameValue.
func checkEveryTier[V any](t *testing.T, servers []*redistest.Server, row V, loss fidLoss) {
	ctx := context.Background()
	o := ringOpts[V](t, servers)
	o.Loader = LoaderFunc[V](func(context.Context, string) (V, error) { return row, nil })
	want := roundTrip(t, row)
	if diff := sameValue(row, want); loss != unchecked && (diff != "") != (loss == lossy) {
		t.Fatalf("the codec's round trip of the row: lossy = %v, want %v (%s)\nrow  %+v\nback %+v", diff != "", loss == lossy, diff, row, want)
	}
	a := newCache(t, o)
	b := newCache(t, o)

	check := func(what string, got V, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if diff := sameValue(got, want); diff != "" {
			t.Errorf("%s differs from the codec's round trip at %s\ngot  %+v\nwant %+v", what, diff, got, want)
		}
	}
	// readLocal reads key from c until the near-cache answers, checking every answer.
	readLocal := func(what string, c *Cache[V], key string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			before := c.Stats()
			v, err := c.Get(ctx, key)
			check(what, v, err)
			if c.Stats().LocalHits > before.LocalHits {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %q never served by the near-cache", what, key)
			}
			c.local.Wait()
		}
	}
	// readShared reads key from c, which must answer from the shared tier.
	readShared := func(what string, c *Cache[V], key string) {
		t.Helper()
		before := c.Stats()
		v, err := c.Get(ctx, key)
		check(what, v, err)
		if s := c.Stats(); s.RemoteHits != before.RemoteHits+1 || s.Loads != before.Loads {
			t.Errorf("%s: stats %+v, before %+v: want one shared-tier hit and no load", what, s, before)
		}
	}

	v, err := a.Get(ctx, "loaded")
	check("A's Get (loaded)", v, err)
	if s := a.Stats(); s.Loads != 1 {
		t.Fatalf("A's first Get: stats %+v, want one load", s)
	}
	readLocal("A's Get (near-cache hit)", a, "loaded")
	readShared("B's Get (shared-tier hit)", b, "loaded")

	if err := a.Set(ctx, "set", row); err != nil {
		t.Fatalf("A's Set: %v", err)
	}
	readLocal("A's Get after its Set", a, "set")
	readShared("B's Get after A's Set", b, "set")
}

var timeType = reflect.TypeFor[time.Time]()

// sameValue is reflect.DeepEqual, unexported fields included, except that times
// are the same when they are the same instant with the same zone (Zone(): name
// and offset), whatever their Location pointers and monotonic readings. It returns
// "" when x and y are the same, else where they differ.
func sameValue(x, y any) string {
	// Addressable copies: unexported times are read through their address.
	vx, vy := reflect.New(reflect.TypeOf(&x).Elem()).Elem(), reflect.New(reflect.TypeOf(&y).Elem()).Elem()
	vx.Set(reflect.ValueOf(&x).Elem())
	vy.Set(reflect.ValueOf(&y).Elem())
	return sameAt("v", vx, vy)
}

func sameAt(path string, x, y reflect.Value) string {
	if x.IsValid() != y.IsValid() {
		return path + " (one is nil)"
	}
	if !x.IsValid() {
		return ""
	}
	if x.Type() != y.Type() {
		return fmt.Sprintf("%s (types %v and %v)", path, x.Type(), y.Type())
	}
	if x.Type() == timeType {
		tx, ty := timeAt(x), timeAt(y)
		nx, ox := tx.Zone()
		ny, oy := ty.Zone()
		if !tx.Equal(ty) || nx != ny || ox != oy {
			return fmt.Sprintf("%s (%v and %v)", path, tx, ty)
		}
		return ""
	}
	switch x.Kind() {
	case reflect.Pointer, reflect.Interface:
		if x.IsNil() || y.IsNil() {
			if x.IsNil() != y.IsNil() {
				return path + " (one is nil)"
			}
			return ""
		}
		return sameAt(path, addressable(x.Elem()), addressable(y.Elem()))
	case reflect.Struct:
		for i := range x.NumField() {
			if d := sameAt(path+"."+x.Type().Field(i).Name, x.Field(i), y.Field(i)); d != "" {
				return d
			}
		}
		return ""
	case reflect.Slice, reflect.Map:
		if x.IsNil() != y.IsNil() {
			return fmt.Sprintf("%s (nil %v and nil %v)", path, x.IsNil(), y.IsNil())
		}
		if x.Len() != y.Len() {
			return fmt.Sprintf("%s (lengths %d and %d)", path, x.Len(), y.Len())
		}
		if x.Kind() == reflect.Map {
			for _, k := range x.MapKeys() {
				vy := y.MapIndex(k)
				if !vy.IsValid() {
					return fmt.Sprintf("%s[%v] (missing)", path, k)
				}
				if d := sameAt(fmt.Sprintf("%s[%v]", path, k), addressable(x.MapIndex(k)), addressable(vy)); d != "" {
					return d
				}
			}
			return ""
		}
		fallthrough
	case reflect.Array:
		for i := range x.Len() {
			if d := sameAt(fmt.Sprintf("%s[%d]", path, i), x.Index(i), y.Index(i)); d != "" {
				return d
			}
		}
		return ""
	}
	if !reflect.DeepEqual(readable(x).Interface(), readable(y).Interface()) {
		return fmt.Sprintf("%s (%v and %v)", path, readable(x), readable(y))
	}
	return ""
}

// addressable returns an addressable copy of v (a map element or an interface's
// content, which may come from an unexported field).
func addressable(v reflect.Value) reflect.Value {
	c := reflect.New(v.Type()).Elem()
	reflect.NewAt(v.Type(), unsafe.Pointer(c.UnsafeAddr())).Elem().Set(readable(v))
	return c
}

// readable returns v stripped of the read-only mark of unexported fields.
func readable(v reflect.Value) reflect.Value {
	if v.CanInterface() {
		return v
	}
	if v.CanAddr() {
		return reflect.NewAt(v.Type(), unsafe.Pointer(v.UnsafeAddr())).Elem()
	}
	panic(fmt.Sprintf("sameValue: cannot read %v", v.Type()))
}

func timeAt(v reflect.Value) time.Time { return readable(v).Interface().(time.Time) }
