package linkproxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tieredcache/tiered/internal/redistest"
)

// TestLinkProxy checks a LinkProxy in front of an echo server: latency delays both
// ways and switching it off keeps the connection; a black hole keeps the connection
// open and silent; Cut closes it (resets it, with a reset_peer toxic) and serves new
// connections on the same address.
func TestLinkProxy(t *testing.T) {
	echo := startEcho(t)
	srv := NewToxiproxy()
	const lat = 40 * time.Millisecond
	for _, rst := range []bool{false, true} {
		toxics := []Toxic{
			{Kind: "timeout", Attrs: `{"timeout":0}`},
			{Kind: "latency", Attrs: fmt.Sprintf(`{"latency":%d}`, lat.Milliseconds())},
		}
		if rst {
			toxics = append(toxics, Toxic{Kind: "reset_peer", Attrs: `{"timeout":0}`})
		}
		l, err := NewLinkProxy(srv, "test", echo, toxics...)
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr()
		c := dialEcho(t, addr)
		if d, err := roundTrip(c, time.Second); err != nil || d >= lat {
			t.Fatalf("through the proxy: round trip %v, %v", d, err)
		}

		if err := l.Activate("latency"); err != nil {
			t.Fatal(err)
		}
		if d, err := roundTrip(c, time.Second); err != nil || d < 2*lat {
			t.Errorf("with %v of latency each way: round trip %v, %v", lat, d, err)
		}
		if err := l.Deactivate("latency"); err != nil {
			t.Fatal(err)
		}
		if d, err := roundTrip(c, time.Second); err != nil || d >= lat {
			t.Errorf("after the latency was switched off: round trip %v, %v", d, err)
		}

		if err := l.Activate("timeout"); err != nil {
			t.Fatal(err)
		}
		var ne net.Error
		if _, err := roundTrip(c, 100*time.Millisecond); !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("in the black hole: %v, want a timeout", err)
		}
		if err := l.Cut(); err != nil {
			t.Fatal(err)
		}
		if l.Addr() != addr {
			t.Errorf("the proxy moved from %s to %s", addr, l.Addr())
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
		switch {
		case rst && !errors.Is(err, syscall.ECONNRESET):
			t.Errorf("a cut connection read %v, want a reset", err)
		case !rst && !errors.Is(err, io.EOF):
			t.Errorf("a cut connection read %v, want EOF", err)
		}
		c.Close()
		c = dialEcho(t, addr)
		if _, err := roundTrip(c, time.Second); err != nil {
			t.Errorf("a new connection after the cut: %v", err)
		}
		c.Close()
		l.Stop()
	}
	if _, err := redistest.WaitGoroutinesGone("github.com/Shopify/toxiproxy", GuardPatience+5*time.Second); err != nil {
		t.Error(err)
	}
}

// TestLinkProxyWriterGone checks that a link whose writer has gone while data kept
// coming (a client that closed its connection in the middle of a stream) does not
// keep toxiproxy's goroutines running after the proxy stops: the guard's job.
func TestLinkProxyWriterGone(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() { // a server that streams to every client until told to stop
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				chunk := make([]byte, 4096)
				for {
					select {
					case <-stop:
						return
					default:
					}
					_ = c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
					if _, err := c.Write(chunk); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
						return
					}
				}
			})
		}
	})
	defer func() { close(stop); ln.Close(); wg.Wait() }()

	l, err := NewLinkProxy(NewToxiproxy(), "gone", ln.Addr().String(), Toxic{Kind: "reset_peer", Attrs: `{"timeout":0}`})
	if err != nil {
		t.Fatal(err)
	}
	l.guard = 100 * time.Millisecond
	if err := l.Cut(); err != nil { // the live proxy's guards get the short patience
		t.Fatal(err)
	}
	for range 5 {
		c := dialEcho(t, l.Addr())
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, make([]byte, 64<<10)); err != nil {
			t.Fatal(err)
		}
		c.Close() // with the stream still coming
		if err := l.Cut(); err != nil {
			t.Fatal(err)
		}
	}
	l.Stop()
	if _, err := redistest.WaitGoroutinesGone("github.com/Shopify/toxiproxy", 10*time.Second); err != nil {
		t.Error(err)
	}
}

// startEcho starts a TCP echo server on a loopback port, stopped when t ends.
func startEcho(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { _, _ = io.Copy(c, c) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// dialEcho dials addr, the connection closed when t ends.
func dialEcho(t *testing.T, addr string) net.Conn {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip writes a byte and waits up to within for its echo.
func roundTrip(c net.Conn, within time.Duration) (time.Duration, error) {
	start := time.Now()
	if err := c.SetDeadline(start.Add(within)); err != nil {
		return 0, err
	}
	if _, err := c.Write([]byte{'x'}); err != nil {
		return 0, err
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}
