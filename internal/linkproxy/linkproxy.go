// Package linkproxy puts an in-process toxiproxy between a test's clients and a Redis
// node, for the fault tests of the root package and the benchmarks' fault workload.
// It lives apart from package redistest so that the modules whose tests only start
// servers do not depend on toxiproxy.
package linkproxy

import (
	"fmt"
	"strings"
	"sync"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/Shopify/toxiproxy/v2/toxics"
	"github.com/rs/zerolog"
)

// Toxic is a toxiproxy toxic a LinkProxy carries on both directions from its start,
// inactive (toxicity 0: toxiproxy runs its no-op instead) until Activate.
type Toxic struct {
	Kind  string // toxiproxy's type: "timeout", "latency", "reset_peer"
	Attrs string // its attributes, JSON
}

// NewToxiproxy returns an in-process toxiproxy server for LinkProxies, logging nothing.
func NewToxiproxy() *toxiproxy.ApiServer {
	return toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
}

// LinkProxy is an in-process toxiproxy (v2.12.0) in front of one node, at an address
// that stays the same for its lifetime: Cut stops the live proxy, which closes every
// connection through it, and starts a clean one on the same address.
//
// Its toxics are in place from the start and switched on and off by their toxicity,
// never added or removed under traffic: in v2.12.0, removing a timeout toxic returns
// early after its Cleanup without re-linking the stub before it, which then blocks
// for ever on the removed stub's input, and adding or removing one interrupts every
// stub of the chain. Every chain ends with a guard (guardToxic): toxiproxy's own
// stubs block for ever sending to a link's writer that has gone (its connection failed
// while data was still coming: a client closing a connection, or Cut), which keeps
// the link's goroutines alive after the proxy stops; the guard stops waiting after a
// while, closes the link, and drains what comes.
type LinkProxy struct {
	srv      *toxiproxy.ApiServer
	name     string
	upstream string
	toxics   []Toxic
	guard    time.Duration // the guard's patience

	mu     sync.Mutex         // protects the fields below
	listen string             // the address, fixed by the first start
	all    []*toxiproxy.Proxy // every proxy started; the live one last
}

// GuardPatience is how long a link's guard waits for its writer to take a chunk
// before it gives the link up: far longer than a live client takes to read on
// loopback.
const GuardPatience = 2 * time.Second

// NewLinkProxy starts a proxy named name in front of upstream, on a free loopback
// port, carrying toxics (inactive).
func NewLinkProxy(srv *toxiproxy.ApiServer, name, upstream string, toxics ...Toxic) (*LinkProxy, error) {
	l := &LinkProxy{srv: srv, name: name, upstream: upstream, toxics: toxics, guard: GuardPatience, listen: "127.0.0.1:0"}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l, l.startLocked("")
}

var streams = [...]string{"upstream", "downstream"}

// startLocked starts a proxy on l.listen, its toxics inactive but those of the kind
// active (none if ""), a guard last.
func (l *LinkProxy) startLocked(active string) error {
	p := toxiproxy.NewProxy(l.srv, l.name, l.listen, l.upstream)
	for _, stream := range streams {
		for _, t := range l.toxics {
			toxicity := 0
			if t.Kind == active {
				toxicity = 1
			}
			js := fmt.Sprintf(`{"name":"%s_%s","type":%q,"stream":%q,"toxicity":%d,"attributes":%s}`, t.Kind, stream, t.Kind, stream, toxicity, t.Attrs)
			if _, err := p.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
				return fmt.Errorf("toxiproxy %s: %s: %v", l.name, t.Kind, err)
			}
		}
		js := fmt.Sprintf(`{"name":"guard_%s","type":%q,"stream":%q,"toxicity":1,"attributes":{"patience_ms":%d}}`, stream, guardType, stream, l.guard.Milliseconds())
		if _, err := p.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
			return fmt.Errorf("toxiproxy %s: guard: %v", l.name, err)
		}
	}
	if err := p.Start(); err != nil {
		return fmt.Errorf("toxiproxy %s on %s: %v", l.name, l.listen, err)
	}
	l.listen = p.Listen // the port it bound, set before Start returned
	l.all = append(l.all, p)
	return nil
}

// Addr returns the address clients dial.
func (l *LinkProxy) Addr() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.listen
}

func (l *LinkProxy) live() *toxiproxy.Proxy { return l.all[len(l.all)-1] }

// Activate switches the toxic of the kind on in both directions, on the live proxy.
// Under -race, prefer CutTo: in v2.12.0 the toxicity UpdateToxicJson writes is read by
// the links' goroutines without synchronisation (ToxicStub.Run), a data race the race
// detector reports when a link carries traffic at that moment.
func (l *LinkProxy) Activate(kind string) error { return l.setToxicity(kind, 1) }

// Deactivate switches it off.
func (l *LinkProxy) Deactivate(kind string) error { return l.setToxicity(kind, 0) }

func (l *LinkProxy) setToxicity(kind string, toxicity float32) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, stream := range streams {
		js := fmt.Sprintf(`{"toxicity":%g}`, toxicity)
		if _, err := l.live().Toxics.UpdateToxicJson(kind+"_"+stream, strings.NewReader(js)); err != nil {
			return fmt.Errorf("toxiproxy %s: %s toxicity %g: %v", l.name, kind, toxicity, err)
		}
	}
	return nil
}

// Cut stops the live proxy, closing every connection through it (resetting them, if
// the proxy carries a reset_peer toxic), and starts a clean one on the same address,
// its toxics inactive.
func (l *LinkProxy) Cut() error { return l.CutTo("") }

// CutTo is Cut, with the new proxy's toxic of the kind active from its start: a fault
// that begins by cutting every connection, and holds every new one. It changes no
// toxic under traffic (see Activate).
func (l *LinkProxy) CutTo(kind string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.live().Stop()
	return l.startLocked(kind)
}

// Stop stops every proxy l started; their links' goroutines then drain (within
// GuardPatience).
func (l *LinkProxy) Stop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, p := range l.all {
		p.Stop()
	}
}

// guardType is the guard's toxiproxy type, registered by this package.
const guardType = "linkproxy_guard"

func init() { toxics.Register(guardType, new(guardToxic)) }

// guardToxic passes every chunk on, waiting up to Patience for the link's writer to
// take it. A writer that does not has gone (its connection failed) or is stuck: the
// guard then closes the link's output, which ends the writer if it was still there,
// and drops whatever else comes until the input closes, so that no stub before it
// blocks for ever. It never drops a chunk on a link it keeps open.
type guardToxic struct {
	Patience int64 `json:"patience_ms"`
}

func (g *guardToxic) Pipe(stub *toxics.ToxicStub) {
	patience := time.Duration(g.Patience) * time.Millisecond
	for {
		select {
		case <-stub.Interrupt:
			return
		case c := <-stub.Input:
			if c == nil {
				stub.Close()
				return
			}
			if stub.WriteOutput(c, patience) != nil {
				stub.Close()
				for c := range stub.Input {
					if c == nil {
						return
					}
				}
				return
			}
		}
	}
}
