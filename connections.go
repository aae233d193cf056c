package tiered

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tieredcache/tiered/internal/invalidation"
	"github.com/tieredcache/tiered/internal/ring"
)

// Shared is the shared tier's connections, for any number of Caches in one process,
// of any value types and namespaces (Options.Shared): one client (one pool) and one
// pub/sub connection per node, and one membership. Each Cache follows its own
// invalidation channel on that connection, and keeps its own near-cache, leases,
// missed writes and circuit breakers.
//
// A Cache created with Options.Nodes, Client or Addrs makes a Shared of its own,
// closed by its Close. A Shared made by NewShared is the caller's: close it after the
// Caches that use it (its Close closes any still open, whose calls then return
// ErrClosed). Clients passed in SharedOptions.Nodes or Client are the caller's to
// close, after the Shared; those it creates from addresses it closes.
type Shared struct {
	opts SharedOptions // with defaults applied

	mu      sync.Mutex // serialises membership changes, registration and Close; protects the fields below
	nodes   []*sharedNode
	members map[member]struct{} // the Caches on it
	closed  bool

	discovery discovery // polling SharedOptions.Discovery (discovery.go)
	stopOnce  sync.Once // stops it
}

// SharedOptions configures a Shared. Nodes, Client and Addrs, RingReplicas, Timeout,
// HealthCheck and Logger mean what they mean in Options; exactly one of Nodes, Client,
// Addrs and Discovery is required.
type SharedOptions struct {
	Nodes        []Node
	Client       redis.UniversalClient
	Addrs        []string
	RingReplicas int
	Timeout      time.Duration // default 100 ms
	HealthCheck  time.Duration // default 250 ms
	Logger       *slog.Logger  // default: discard

	// Discovery, instead of Nodes or Addrs, finds the nodes (DNS, DiscoveryFunc):
	// NewShared asks it once, waiting at most DiscoveryInterval, and fails if it
	// finds none; then every DiscoveryInterval (default 10 s) its answer is applied
	// with SetNodes, damped: a node missing from an answer is removed only once it
	// has been missing from RemoveAfter answers in a row (default 3), and an error
	// or an empty answer changes nothing (logged). New nodes and address changes
	// apply at once.
	Discovery         Discovery
	DiscoveryInterval time.Duration
	RemoveAfter       int
}

// sharedNode is one node of a Shared: its client and its pub/sub connection.
type sharedNode struct {
	name   string
	addr   string // the address its client was made for ("" for a client passed in)
	client redis.UniversalClient
	owned  io.Closer // the client, if the Shared made it
	sub    *invalidation.Subscriber
	member bool // on the ring; false once removed (Caches may follow it through their handoff)
	refs   int  // Caches following it (in their handoff included), under Shared.mu
}

// member is a Cache as its Shared sees it: membership changes reach every member.
type member interface {
	joinNode(ctx context.Context, n *sharedNode) error
	leaveNode(name string) error
	moveNode(ctx context.Context, old, n *sharedNode) error
	closeFromShared()
}

// NewShared returns the connections for opts' nodes, and starts one pub/sub
// connection per node. It does no I/O itself.
func NewShared(opts SharedOptions) (*Shared, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Shared{opts: o, members: make(map[member]struct{})}
	s.discovery.missing = make(map[string]int)
	switch {
	case o.Discovery != nil:
		if err := s.discoverOnce(context.Background()); err != nil {
			s.Close()
			return nil, err
		}
		s.startDiscovery()
	case o.Client != nil:
		s.nodes = append(s.nodes, s.newNode("redis", "", o.Client))
	case len(o.Nodes) > 0:
		for _, n := range o.Nodes {
			if n.Client == nil && n.Addr == "" {
				s.closeNodes()
				return nil, fmt.Errorf("tiered: node %q has neither a Client nor an Addr", n.Name)
			}
			s.nodes = append(s.nodes, s.nodeOf(n))
		}
	default:
		for _, addr := range o.Addrs {
			s.nodes = append(s.nodes, s.newNode(addr, addr, nil))
		}
	}
	if o.Client == nil {
		if err := ring.Check(s.names()); err != nil { // duplicate or empty names
			s.closeNodes()
			return nil, fmt.Errorf("tiered: %w", err)
		}
	}
	return s, nil
}

func (o SharedOptions) withDefaults() (SharedOptions, error) {
	set := 0
	for _, b := range []bool{len(o.Nodes) > 0, o.Client != nil, len(o.Addrs) > 0, o.Discovery != nil} {
		if b {
			set++
		}
	}
	if set != 1 {
		return o, errors.New("tiered: set exactly one of SharedOptions.Nodes, Client, Addrs and Discovery")
	}
	setDefault(&o.DiscoveryInterval, 10*time.Second)
	setDefault(&o.RemoveAfter, 3)
	if o.DiscoveryInterval < 0 || o.RemoveAfter < 0 {
		return o, errors.New("tiered: DiscoveryInterval and RemoveAfter must not be negative")
	}
	if err := checkAddrs(o.Addrs, "Addrs"); err != nil {
		return o, err
	}
	for i, n := range o.Nodes {
		if n.Client == nil && n.Addr != "" {
			if err := checkAddr(n.Addr); err != nil {
				return o, fmt.Errorf("tiered: Nodes[%d] %q: Addr %q: %w", i, n.Name, redactAddr(n.Addr), err)
			}
		}
	}
	setDefault(&o.Timeout, 100*time.Millisecond)
	setDefault(&o.HealthCheck, 250*time.Millisecond)
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Timeout < 0 || o.HealthCheck < 0 {
		return o, errors.New("tiered: TTLs and timeouts must not be negative")
	}
	return o, nil
}

// nodeOf is newNode for n: its Client, or one made for its address.
func (s *Shared) nodeOf(n Node) *sharedNode {
	if n.Client != nil {
		return s.newNode(n.Name, "", n.Client)
	}
	return s.newNode(n.Name, nodeAddr(n), nil)
}

// checkNode reports why n cannot join a ring (op names the call in the error).
func checkNode(n Node, op string) error {
	switch {
	case n.Name == "":
		return fmt.Errorf("tiered: %s: empty node name", op)
	case n.Client != nil:
		return nil
	case n.Addr != "":
		if err := checkAddr(n.Addr); err != nil {
			return fmt.Errorf("tiered: %s: %q: Addr %q: %w", op, n.Name, redactAddr(n.Addr), err)
		}
	default:
		if err := checkAddr(n.Name); err != nil {
			return fmt.Errorf("tiered: %s: %q (no Client, so an address): %w", op, redactAddr(n.Name), err)
		}
	}
	return nil
}

// nodeAddr is the address of a node given without a Client: Addr, or else Name.
func nodeAddr(n Node) string {
	if n.Addr != "" {
		return n.Addr
	}
	return n.Name
}

// newNode returns node name reached through client, or through a client made for
// addr if client is nil, and starts its pub/sub connection.
func (s *Shared) newNode(name, addr string, client redis.UniversalClient) *sharedNode {
	sn := &sharedNode{name: name, client: client, member: true}
	if client == nil {
		cl := s.newClient(addr)
		sn.addr, sn.client, sn.owned = addr, cl, cl
	}
	sn.sub = invalidation.Start(invalidation.Config{
		Name: name, Client: sn.client, Health: s.opts.HealthCheck, Timeout: s.opts.Timeout, Logger: s.opts.Logger,
	})
	return sn
}

// newClient returns a client for a node given by address.
//
// Nothing in it may wait on the node longer than Timeout, and a refused connection
// must fail at once: the Loader is the fallback, so retries only add latency.
// go-redis's defaults would not: its pool retries a failed dial DialerRetries (5)
// times, 100 ms apart, so a refused connection cost min(Timeout, 400 ms) per call
// (the backoff ends only when the call's context does); DialTimeout (5 s) and
// PoolTimeout (ReadTimeout + 1 s) bound the dials and pool waits that no call's
// context bounds (the pool's dial probe once PoolSize dials in a row have failed,
// calls without a deadline).
func (s *Shared) newClient(addr string) *redis.Client {
	t := s.opts.Timeout
	return redis.NewClient(&redis.Options{
		Addr:                  addr,
		ContextTimeoutEnabled: true,
		MaxRetries:            -1, // no command retries
		DialerRetries:         1,  // one dial attempt per connection: a refused dial fails at once
		DialTimeout:           t,
		PoolTimeout:           t,
		ReadTimeout:           t,
		WriteTimeout:          t,
	})
}

// names returns the members' names, in the order they joined.
func (s *Shared) names() []string {
	var names []string
	for _, n := range s.nodes {
		if n.member {
			names = append(names, n.name)
		}
	}
	return names
}

func (s *Shared) memberNode(name string) *sharedNode {
	for _, n := range s.nodes {
		if n.member && n.name == name {
			return n
		}
	}
	return nil
}

// attach registers m, built by build from the members, each then followed by m until
// release; no membership change runs meanwhile. It fails after Close.
func (s *Shared) attach(m member, build func(nodes []*sharedNode) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("tiered: Options.Shared: %w", ErrClosed)
	}
	var nodes []*sharedNode
	for _, n := range s.nodes {
		if n.member {
			nodes = append(nodes, n)
		}
	}
	if err := build(nodes); err != nil {
		return err
	}
	for _, n := range nodes {
		n.refs++
	}
	s.members[m] = struct{}{}
	return nil
}

// detach unregisters m (its Close).
func (s *Shared) detach(m member) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.members, m)
}

// release ends one Cache's following of n; a removed node followed by no Cache is
// closed.
func (s *Shared) release(n *sharedNode) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	n.refs--
	return s.closeIfUnusedLocked(n)
}

// closeIfUnusedLocked closes n and forgets it if it is no member and no Cache follows
// it any more.
func (s *Shared) closeIfUnusedLocked(n *sharedNode) error {
	if n.refs > 0 || n.member {
		return nil
	}
	for i, x := range s.nodes {
		if x == n {
			s.nodes = append(s.nodes[:i:i], s.nodes[i+1:]...)
			break
		}
	}
	return n.close()
}

func (n *sharedNode) close() error {
	n.sub.Stop()
	if n.owned != nil {
		return n.owned.Close()
	}
	return nil
}

func (s *Shared) closeNodes() error {
	var errs []error
	for _, n := range s.nodes {
		if err := n.close(); err != nil {
			errs = append(errs, err)
		}
	}
	s.nodes = nil
	return errors.Join(errs...)
}

// Close closes the Caches still using the Shared, then its pub/sub connections and
// the clients it created. Idempotent; later calls return nil.
func (s *Shared) Close() error {
	s.stopDiscovery()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	open := make([]member, 0, len(s.members))
	for m := range s.members {
		open = append(open, m)
	}
	s.mu.Unlock()
	for _, m := range open {
		m.closeFromShared() // detaches, and releases its nodes
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closeNodes()
}

// AddNode adds a standalone Redis node to the ring of every Cache on the Shared while
// they serve; about 1/N of the keys move to it (see Cache.AddNode). With a nil Client,
// a client is created for Addr (or for Name as an address).
func (s *Shared) AddNode(ctx context.Context, n Node) error {
	if err := checkNode(n, "AddNode"); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.ringedLocked(); err != nil {
		return err
	}
	if s.memberNode(n.Name) != nil {
		return fmt.Errorf("tiered: AddNode: %q is already a member", n.Name)
	}
	return s.addLocked(ctx, n)
}

func (s *Shared) addLocked(ctx context.Context, n Node) error {
	sn := s.nodeOf(n)
	s.nodes = append(s.nodes, sn)
	var errs []error
	for m := range s.members {
		sn.refs++
		if err := m.joinNode(ctx, sn); err != nil {
			sn.refs--
			if !errors.Is(err, ErrClosed) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// RemoveNode removes the named node from the ring of every Cache on the Shared while
// they serve (see Cache.RemoveNode). The last node cannot be removed.
func (s *Shared) RemoveNode(ctx context.Context, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.ringedLocked(); err != nil {
		return err
	}
	sn := s.memberNode(name)
	if sn == nil {
		return fmt.Errorf("tiered: RemoveNode: %q is not a member", name)
	}
	if len(s.names()) == 1 {
		return fmt.Errorf("tiered: RemoveNode: %q is the last node", name)
	}
	return s.removeLocked(sn)
}

func (s *Shared) removeLocked(sn *sharedNode) error {
	sn.member = false
	var errs []error
	for m := range s.members {
		if err := m.leaveNode(sn.name); err != nil && !errors.Is(err, ErrClosed) {
			errs = append(errs, err)
		}
	}
	errs = append(errs, s.closeIfUnusedLocked(sn)) // followed by no Cache: closed now
	return errors.Join(errs...)
}

func (s *Shared) ringedLocked() error {
	switch {
	case s.closed:
		return ErrClosed
	case s.opts.Client != nil:
		return errors.New("tiered: membership changes need a ring of standalone nodes (Nodes or Addrs)")
	}
	return nil
}

// Members returns the nodes on the ring now, in the order they joined: each with its
// Name, and its Addr if the Shared made its client (else its Client).
func (s *Shared) Members() []Node {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Node
	for _, n := range s.nodes {
		if n.member {
			nd := Node{Name: n.name, Addr: n.addr}
			if n.owned == nil {
				nd.Client, _ = n.client.(*redis.Client)
			}
			out = append(out, nd)
		}
	}
	return out
}

// SetNodes makes the ring's membership nodes, while the Caches serve: it adds the
// nodes whose names are not members, removes the members whose names are not in
// nodes, and moves a member whose address (Addr, or Client) changed to its new
// address under the same name, so that no key changes owner. A moved node is treated
// like a node added: its keys in each namespace are cleared before they are read, and
// its near-cache entries flushed. nodes must not be empty. Changes are applied one by
// one; the error joins those that failed.
func (s *Shared) SetNodes(ctx context.Context, nodes []Node) error {
	if len(nodes) == 0 {
		return errors.New("tiered: SetNodes: no nodes")
	}
	want := make(map[string]Node, len(nodes))
	for i, n := range nodes {
		if err := checkNode(n, fmt.Sprintf("SetNodes: nodes[%d]", i)); err != nil {
			return err
		}
		if _, dup := want[n.Name]; dup {
			return fmt.Errorf("tiered: SetNodes: %q twice", n.Name)
		}
		want[n.Name] = n
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.ringedLocked(); err != nil {
		return err
	}
	var errs []error
	for _, n := range nodes { // adds and moves first: the ring never shrinks to nothing
		cur := s.memberNode(n.Name)
		switch {
		case cur == nil:
			errs = append(errs, s.addLocked(ctx, n))
		case moved(cur, n):
			errs = append(errs, s.moveLocked(ctx, cur, n))
		}
	}
	for _, name := range s.names() {
		if _, ok := want[name]; !ok {
			errs = append(errs, s.removeLocked(s.memberNode(name)))
		}
	}
	return errors.Join(errs...)
}

// moved reports whether n gives member cur another address.
func moved(cur *sharedNode, n Node) bool {
	if n.Client != nil {
		return n.Client != cur.client
	}
	return cur.owned == nil || nodeAddr(n) != cur.addr
}

// moveLocked replaces member cur by a node of the same name at n's address.
func (s *Shared) moveLocked(ctx context.Context, cur *sharedNode, n Node) error {
	sn := s.nodeOf(n)
	s.nodes = append(s.nodes, sn)
	cur.member = false
	var errs []error
	for m := range s.members {
		sn.refs++
		if err := m.moveNode(ctx, cur, sn); err != nil {
			sn.refs--
			if !errors.Is(err, ErrClosed) {
				errs = append(errs, err)
			}
			continue
		}
		cur.refs--
	}
	errs = append(errs, s.closeIfUnusedLocked(cur))
	return errors.Join(errs...)
}
