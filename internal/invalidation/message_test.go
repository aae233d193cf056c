package invalidation

import (
	"errors"
	"reflect"
	"strconv"
	"testing"
)

func TestMessageRoundTrip(t *testing.T) {
	keys := []string{"a", "", "with|pipe", "new\nline", string([]byte{0, 1, 2, 255})}
	payload := AppendPayload(nil, "origin1", 1234567, keys)
	wire := "e1f2|42|" + string(payload)
	m, err := Parse(wire)
	if err != nil {
		t.Fatal(err)
	}
	want := Message{Epoch: "e1f2", Seq: 42, Origin: "origin1", SentUs: 1234567, Keys: keys}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("Parse = %+v, want %+v", m, want)
	}
}

func TestParseRejects(t *testing.T) {
	good := string(AppendPayload(nil, "o", 1, []string{"k"}))
	for _, s := range []string{
		"", "epoch-only", "e|notanumber|" + good, "e|1|o", "e|1|o|x|k",
		"e|1|o|1|\x05ab", // key length past the end
		"|1|" + good,
	} {
		if _, err := Parse(s); !errors.Is(err, ErrMalformed) {
			t.Errorf("Parse(%q) = %v, want ErrMalformed", s, err)
		}
	}
}

func TestFlushMessage(t *testing.T) {
	m, err := Parse("e|3|" + string(AppendPayload(nil, "o", 7, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Keys) != 0 || m.Seq != 3 || m.Origin != "o" {
		t.Fatalf("flush message parsed as %+v", m)
	}
}

func FuzzParse(f *testing.F) {
	f.Add("e|1|" + string(AppendPayload(nil, "o", 5, []string{"k1", "k2"})))
	f.Add("e|" + strconv.Itoa(1<<40) + "|o|0|")
	f.Fuzz(func(t *testing.T, s string) {
		m, err := Parse(s)
		if err != nil {
			return
		}
		again := m.Epoch + "|" + strconv.FormatUint(m.Seq, 10) + "|" + string(AppendPayload(nil, m.Origin, m.SentUs, m.Keys))
		m2, err := Parse(again)
		if err != nil || !reflect.DeepEqual(m, m2) {
			t.Fatalf("re-encoded message does not parse the same: %+v vs %+v (%v)", m, m2, err)
		}
	})
}

func TestParseFill(t *testing.T) {
	for _, tc := range []struct {
		in    string
		key   string
		value string
		ok    bool
	}{
		{"1:k", "k", "", true},
		{"3:a:b\xc7v", "a:b", "\xc7v", true}, // a key may hold the separator
		{"0:", "", "", true},
		{"4:k", "", "", false},
		{"k", "", "", false},
		{"-1:k", "", "", false},
	} {
		key, value, ok := ParseFill(tc.in)
		if key != tc.key || string(value) != tc.value || ok != tc.ok || (tc.value == "" && value != nil) {
			t.Errorf("ParseFill(%q) = %q, %q, %v; want %q, %q, %v", tc.in, key, value, ok, tc.key, tc.value, tc.ok)
		}
	}
}
