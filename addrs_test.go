package tiered

import (
	"context"
	"strings"
	"testing"
)

// Options.Addrs is checked by New: a bad address used to give a Cache whose every
// call to the node cost Timeout and logged go-redis's dial error. The valid cases are
// checked without New (which would dial them).
func TestAddrsValidation(t *testing.T) {
	cases := []struct {
		addrs []string
		want  string // "" for valid; else a substring of the error
	}{
		{[]string{"127.0.0.1:6380"}, ""},
		{[]string{"localhost:6380", "redis-1.internal:7000"}, ""},
		{[]string{"[::1]:6380", "10.0.0.1:65535", "127.0.0.1:1"}, ""},
		{[]string{"127.0.0.1:6380", "localhost"}, `tiered: Options.Addrs[1] "localhost": missing port in address: want "host:port"`},
		{[]string{"redis://127.0.0.1:1"}, `tiered: Options.Addrs[0] "redis://127.0.0.1:1": a URL, not a "host:port" address: for redis:// create the client with redis.ParseURL and pass it in Options.Nodes`},
		{[]string{"rediss://user:secret@h:6380/0"}, `tiered: Options.Addrs[0] "rediss://user:xxxxx@h:6380/0": a URL, not a "host:port" address: for rediss://`},
		{[]string{"127.0.0.1:notaport"}, `tiered: Options.Addrs[0] "127.0.0.1:notaport": port "notaport" is not a number in 1..65535`},
		{[]string{"127.0.0.1:0"}, `port "0" is not a number in 1..65535`},
		{[]string{"127.0.0.1:65536"}, `port "65536" is not a number in 1..65535`},
		{[]string{"127.0.0.1:-1"}, `port "-1" is not a number in 1..65535`},
		{[]string{"127.0.0.1:+80"}, `port "+80" is not a number in 1..65535`},
		{[]string{"127.0.0.1:"}, `port "" is not a number in 1..65535`},
		{[]string{":6380"}, `tiered: Options.Addrs[0] ":6380": missing host`},
		{[]string{"::1"}, `too many colons in address: want "host:port" (an IPv6 host in brackets: "[::1]:6379")`},
		{[]string{"::1:6380"}, `too many colons in address`},
		{[]string{""}, `tiered: Options.Addrs[0] "": missing port in address`},
		{[]string{"my host:6380"}, `host "my host" is not a host name or IP address`},
		{[]string{"a:1", "b:2", "a:1"}, `tiered: Options.Addrs[2] "a:1": duplicate of Options.Addrs[0]`},
	}
	for _, tc := range cases {
		_, err := Options[string]{Addrs: tc.addrs}.withDefaults()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("Addrs %q: unexpected error %v", tc.addrs, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("Addrs %q: error %v, want one containing %q", tc.addrs, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("Addrs %q: the error shows the password: %v", tc.addrs, err)
		}
		if tc.want == "" {
			continue
		}
		// New refuses it too, before creating any client or goroutine.
		if c, err := New(Options[string]{Addrs: tc.addrs}); err == nil {
			c.Close()
			t.Errorf("New(Addrs %q) = nil error", tc.addrs)
		}
	}
}

// AddNode without a Client dials Name as an address: it is checked the same way,
// before anything else (the Cache here has no ring, which would be the next error).
func TestAddNodeAddrValidation(t *testing.T) {
	c := newCache(t, Options[string]{})
	for name, want := range map[string]string{
		"localhost":           `tiered: AddNode: "localhost" (no Client, so an address): missing port in address`,
		"redis://127.0.0.1:1": `a URL, not a "host:port" address`,
		"127.0.0.1:notaport":  `port "notaport" is not a number in 1..65535`,
	} {
		err := c.AddNode(context.Background(), Node{Name: name})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("AddNode(%q) = %v, want an error containing %q", name, err, want)
		}
	}
	// A valid address passes the check and meets the next one.
	if err := c.AddNode(context.Background(), Node{Name: "127.0.0.1:1"}); err == nil || !strings.Contains(err.Error(), "need a ring") {
		t.Errorf("AddNode(valid address) on a Cache without a ring = %v, want the ring error", err)
	}
}
