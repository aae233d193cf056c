package tiered

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/tieredcache/tiered/internal/redistest"
)

// answers is a Discovery that gives its answers in order, repeating the last, and
// counts the calls.
type answers struct {
	mu    sync.Mutex
	seq   [][]Node // nil entry: an error
	calls atomic.Int64
}

func (a *answers) Discover(context.Context) ([]Node, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls.Add(1)
	ans := a.seq[0]
	if len(a.seq) > 1 {
		a.seq = a.seq[1:]
	}
	if ans == nil {
		return nil, errors.New("registry unavailable")
	}
	return ans, nil
}

func (a *answers) then(seq ...[]Node) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.seq = seq
}

func nodesAt(servers []*redistest.Server, names ...int) []Node {
	var ns []Node
	for _, i := range names {
		ns = append(ns, Node{Name: fmt.Sprintf("n%d", i), Addr: servers[i].Addr()})
	}
	return ns
}

func memberList(sh *Shared) string {
	var names []string
	for _, n := range sh.Members() {
		names = append(names, n.Name)
	}
	return strings.Join(names, ",")
}

// TestDiscoveryWhileServing: nodes found by a Discovery join and leave the ring while
// readers serve; a node missing from one answer (or from fewer than RemoveAfter in a
// row) stays, as does the membership on an error or an empty answer; no read fails and
// none returns another key's value.
func TestDiscoveryWhileServing(t *testing.T) {
	srv := redistest.Start(t, 3)
	d := &answers{seq: [][]Node{nodesAt(srv, 0, 1)}}
	sh := newShared(t, SharedOptions{Discovery: d, DiscoveryInterval: 20 * time.Millisecond, RemoveAfter: 3})
	if got := memberList(sh); got != "n0,n1" {
		t.Fatalf("members at start: %s", got)
	}
	c := newCache(t, Options[string]{Shared: sh, Namespace: "disc",
		Loader: LoaderFunc[string](func(_ context.Context, k string) (string, error) { return "v:" + k, nil })})

	// Readers serve throughout.
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var reads, bad atomic.Int64
	for r := range 4 {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				k := fmt.Sprintf("k%d", (i*7+r)%300)
				v, err := c.Get(context.Background(), k)
				reads.Add(1)
				if err != nil || v != "v:"+k {
					bad.Add(1)
					t.Errorf("Get(%s) = %q, %v", k, v, err)
				}
			}
		})
	}
	defer func() { stop(); wg.Wait() }()
	settle := func(what string, want string) {
		t.Helper()
		waitFor(t, what, func() bool { return memberList(sh) == want })
	}
	callsFrom := func(n int64) func() bool {
		start := d.calls.Load()
		return func() bool { return d.calls.Load() >= start+n }
	}

	d.then(nodesAt(srv, 0, 1, 2))
	settle("n2 joins", "n0,n1,n2")

	// One answer without n1, then n1 again; then an error and an empty answer: no change.
	d.then(nodesAt(srv, 0, 2), nil, []Node{}, nodesAt(srv, 0, 1, 2))
	waitFor(t, "the flapping answers are read", callsFrom(5))
	if got := memberList(sh); got != "n0,n1,n2" {
		t.Fatalf("members after a flap, an error and an empty answer: %s", got)
	}
	if st := c.Stats(); st.NodesRemoved != 0 {
		t.Fatalf("a flap removed a node: %+v", st)
	}

	// n1 gone for good: removed after RemoveAfter answers.
	d.then(nodesAt(srv, 0, 2))
	settle("n1 leaves", "n0,n2")
	if st := c.Stats(); st.NodesRemoved != 1 || st.NodesAdded != 1 {
		t.Errorf("NodesAdded %d, NodesRemoved %d; want 1 and 1", st.NodesAdded, st.NodesRemoved)
	}
	waitFor(t, "reads go on", func() bool { return reads.Load() > 500 })
	stop()
	wg.Wait()
	if bad.Load() > 0 {
		t.Fatalf("%d of %d reads failed", bad.Load(), reads.Load())
	}
	t.Logf("%d reads while the membership changed", reads.Load())
}

// TestDiscoveryFailsAtStart: NewShared with a Discovery that finds nothing fails.
func TestDiscoveryFailsAtStart(t *testing.T) {
	for name, d := range map[string]Discovery{
		"error": DiscoveryFunc(func(context.Context) ([]Node, error) { return nil, errors.New("no registry") }),
		"empty": DiscoveryFunc(func(context.Context) ([]Node, error) { return nil, nil }),
		"bad address": DiscoveryFunc(func(context.Context) ([]Node, error) {
			return []Node{{Name: "x", Addr: "localhost"}}, nil
		}),
	} {
		if sh, err := NewShared(SharedOptions{Discovery: d}); err == nil {
			sh.Close()
			t.Errorf("%s: NewShared succeeded", name)
		}
	}
}

// dnsServer is a DNS server on loopback answering from records, which tests change.
type dnsServer struct {
	mu      sync.Mutex
	srv     map[string][]dns.SRV // name -> SRV records
	a       map[string][]string  // name -> IPv4 addresses
	queries atomic.Int64
	addr    string
}

func startDNS(t *testing.T) *dnsServer {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &dnsServer{srv: map[string][]dns.SRV{}, a: map[string][]string{}, addr: pc.LocalAddr().String()}
	s := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(d.serve)}
	started := make(chan struct{})
	s.NotifyStartedFunc = func() { close(started) }
	go s.ActivateAndServe()
	<-started
	t.Cleanup(func() { s.Shutdown() })
	return d
}

func (d *dnsServer) serve(w dns.ResponseWriter, req *dns.Msg) {
	d.queries.Add(1)
	m := new(dns.Msg)
	m.SetReply(req)
	d.mu.Lock()
	for _, q := range req.Question {
		hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: 0}
		switch q.Qtype {
		case dns.TypeSRV:
			for _, r := range d.srv[q.Name] {
				r.Hdr = hdr
				r.Hdr.Rrtype = dns.TypeSRV
				m.Answer = append(m.Answer, &r)
			}
		case dns.TypeA:
			for _, ip := range d.a[q.Name] {
				h := hdr
				h.Rrtype = dns.TypeA
				m.Answer = append(m.Answer, &dns.A{Hdr: h, A: net.ParseIP(ip)})
			}
		}
	}
	if len(m.Answer) == 0 {
		_, known := d.a[req.Question[0].Name]
		if _, srv := d.srv[req.Question[0].Name]; !known && !srv {
			m.Rcode = dns.RcodeNameError
		}
	}
	d.mu.Unlock()
	w.WriteMsg(m)
}

func (d *dnsServer) resolver() *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "udp", d.addr)
	}}
}

func port(s *redistest.Server) uint16 { return uint16(s.Port()) }

// TestDNSDiscovery: SRV records of a headless service name the nodes (target:port) and
// their addresses; A records name nodes by address; a ring over the SRV answer follows
// a node added to and removed from the records while serving.
func TestDNSDiscovery(t *testing.T) {
	srv := redistest.Start(t, 3)
	d := startDNS(t)
	d.mu.Lock()
	d.srv["_redis._tcp.cache.test."] = []dns.SRV{
		{Target: "r0.cache.test.", Port: port(srv[0])},
		{Target: "r1.cache.test.", Port: port(srv[1])},
	}
	for i := range 3 {
		d.a[fmt.Sprintf("r%d.cache.test.", i)] = []string{"127.0.0.1"}
	}
	d.a["all.cache.test."] = []string{"127.0.0.1"}
	d.mu.Unlock()
	res := d.resolver()
	ctx := context.Background()

	nodes, err := (&DNS{Name: "all.cache.test", Port: srv[2].Port(), Resolver: res}).Discover(ctx)
	if want := net.JoinHostPort("127.0.0.1", strconv.Itoa(srv[2].Port())); err != nil || len(nodes) != 1 || nodes[0].Name != want || nodes[0].Addr != want {
		t.Fatalf("A discovery: %+v, %v", nodes, err)
	}
	if _, err := (&DNS{Name: "nosuch.cache.test", Port: 6379, Resolver: res}).Discover(ctx); err == nil {
		t.Error("a name that does not exist: no error")
	}
	if _, err := (&DNS{Name: "all.cache.test", Resolver: res}).Discover(ctx); err == nil {
		t.Error("A discovery without a port: no error")
	}

	sd := &DNS{Service: "redis", Name: "cache.test", Resolver: res}
	sh := newShared(t, SharedOptions{Discovery: sd, DiscoveryInterval: 20 * time.Millisecond, RemoveAfter: 2})
	name := func(i int) string { return fmt.Sprintf("r%d.cache.test:%d", i, srv[i].Port()) }
	if got, want := memberList(sh), name(0)+","+name(1); got != want {
		t.Fatalf("members from SRV: %s, want %s", got, want)
	}
	for i, m := range sh.Members() {
		if m.Addr != srv[i].Addr() {
			t.Errorf("member %s at %s, want %s", m.Name, m.Addr, srv[i].Addr())
		}
	}
	c := newCache(t, Options[string]{Shared: sh, Namespace: "dns",
		Loader: LoaderFunc[string](func(_ context.Context, k string) (string, error) { return "v:" + k, nil })})
	for i := range 50 {
		if v, err := c.Get(ctx, fmt.Sprintf("k%d", i)); err != nil || v != fmt.Sprintf("v:k%d", i) {
			t.Fatal(v, err)
		}
	}

	d.mu.Lock()
	d.srv["_redis._tcp.cache.test."] = append(d.srv["_redis._tcp.cache.test."], dns.SRV{Target: "r2.cache.test.", Port: port(srv[2])})
	d.mu.Unlock()
	waitFor(t, "r2 joins from DNS", func() bool { return memberList(sh) == name(0)+","+name(1)+","+name(2) })
	d.mu.Lock()
	d.srv["_redis._tcp.cache.test."] = d.srv["_redis._tcp.cache.test."][1:]
	d.mu.Unlock()
	waitFor(t, "r0 leaves", func() bool { return memberList(sh) == name(1)+","+name(2) })
	for i := range 50 {
		if v, err := c.Get(ctx, fmt.Sprintf("k%d", i)); err != nil || v != fmt.Sprintf("v:k%d", i) {
			t.Fatal(v, err)
		}
	}
	waitFor(t, "the Cache subscribed to every member", func() bool { return c.Ping(ctx) == nil })
}
