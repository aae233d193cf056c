package tiered

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Discovery finds the shared tier's nodes, for SharedOptions.Discovery: a DNS name
// (DNS), a config file or a service registry (DiscoveryFunc). Each Node names its
// ring position (Name) and its address (Addr); keep names stable across address
// changes so that keys keep their owners.
type Discovery interface {
	Discover(ctx context.Context) ([]Node, error)
}

// DiscoveryFunc adapts a function to Discovery, for nodes read from a config file
// that changes, or from a service registry.
type DiscoveryFunc func(ctx context.Context) ([]Node, error)

// Discover calls f(ctx).
func (f DiscoveryFunc) Discover(ctx context.Context) ([]Node, error) { return f(ctx) }

// DNS discovers nodes by DNS, polled (SharedOptions.DiscoveryInterval):
//
//   - SRV (Service set): each target of the _Service._Proto.Name records is a node
//     named "target:port" (a StatefulSet's pods behind a headless Service keep their
//     names, and so their ring positions, across restarts), at the target's first
//     address (IPv4 first, then IPv6, each in order) and the record's port. A target
//     whose address changed moves under the same name (see Shared.SetNodes).
//   - A/AAAA (Service empty): each address of Name is a node named and reached by
//     "ip:Port". A new address is a new node: prefer SRV where pods are replaced.
type DNS struct {
	Name     string
	Port     int    // for A/AAAA
	Service  string // for SRV, with Proto ("tcp" if empty)
	Proto    string
	Resolver *net.Resolver // default net.DefaultResolver
}

// Discover looks the nodes up.
func (d *DNS) Discover(ctx context.Context) ([]Node, error) {
	res := d.Resolver
	if res == nil {
		res = net.DefaultResolver
	}
	if d.Service == "" {
		if d.Port <= 0 || d.Port > 65535 {
			return nil, fmt.Errorf("tiered: DNS %q: Port %d is not in 1..65535", d.Name, d.Port)
		}
		ips, err := lookupIPs(ctx, res, d.Name)
		if err != nil {
			return nil, err
		}
		nodes := make([]Node, len(ips))
		for i, ip := range ips {
			addr := net.JoinHostPort(ip, strconv.Itoa(d.Port))
			nodes[i] = Node{Name: addr, Addr: addr}
		}
		return nodes, nil
	}
	proto := cmp.Or(d.Proto, "tcp")
	_, srvs, err := res.LookupSRV(ctx, d.Service, proto, d.Name)
	if err != nil {
		return nil, fmt.Errorf("tiered: DNS SRV _%s._%s.%s: %w", d.Service, proto, d.Name, err)
	}
	var nodes []Node
	var errs []error
	for _, srv := range srvs {
		target := strings.TrimSuffix(srv.Target, ".")
		ips, err := lookupIPs(ctx, res, target)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		port := strconv.Itoa(int(srv.Port))
		nodes = append(nodes, Node{Name: net.JoinHostPort(target, port), Addr: net.JoinHostPort(ips[0], port)})
	}
	if len(nodes) == 0 && len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	slices.SortFunc(nodes, func(a, b Node) int { return strings.Compare(a.Name, b.Name) })
	return nodes, nil
}

// lookupIPs returns host's addresses, IPv4 first, each family sorted.
func lookupIPs(ctx context.Context, res *net.Resolver, host string) ([]string, error) {
	addrs, err := res.LookupIPAddr(ctx, host)
	if err != nil {
		return nil, fmt.Errorf("tiered: DNS %q: %w", host, err)
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("tiered: DNS %q: no address", host)
	}
	slices.SortFunc(addrs, func(a, b net.IPAddr) int {
		a4, b4 := a.IP.To4() != nil, b.IP.To4() != nil
		if a4 != b4 {
			if a4 {
				return -1
			}
			return 1
		}
		return strings.Compare(a.IP.String(), b.IP.String())
	})
	ips := make([]string, len(addrs))
	for i, a := range addrs {
		ips[i] = a.IP.String()
	}
	return ips, nil
}

// discovery is a Shared's loop over its Discovery.
type discovery struct {
	cancel  context.CancelFunc
	done    chan struct{}
	missing map[string]int // member name -> consecutive answers without it (the loop's own)
}

// discoverOnce applies one answer of the Discovery to the membership, damped: a node
// new in the answer, or at a new address, joins at once; a member missing from the
// answer leaves only once it has been missing from RemoveAfter answers in a row, so
// that one incomplete answer (a pod between restarts, a lagging DNS server) does not
// move keys back and forth. An error or an empty answer changes nothing.
func (s *Shared) discoverOnce(ctx context.Context) error {
	o := s.opts
	ctx, cancel := context.WithTimeout(ctx, o.DiscoveryInterval)
	defer cancel()
	nodes, err := o.Discovery.Discover(ctx)
	switch {
	case err != nil:
		return fmt.Errorf("tiered: discovery: %w", err)
	case len(nodes) == 0:
		return errors.New("tiered: discovery: no nodes found (membership unchanged)")
	}
	found := make(map[string]bool, len(nodes))
	for _, n := range nodes {
		found[n.Name] = true
	}
	want := slices.Clone(nodes)
	for _, m := range s.Members() {
		if found[m.Name] {
			delete(s.discovery.missing, m.Name)
			continue
		}
		s.discovery.missing[m.Name]++
		if s.discovery.missing[m.Name] < o.RemoveAfter {
			want = append(want, m) // not yet: keep it as it is
		}
	}
	for name := range s.discovery.missing {
		if !slices.ContainsFunc(want, func(n Node) bool { return n.Name == name }) {
			delete(s.discovery.missing, name)
		}
	}
	before := s.Members()
	if err := s.SetNodes(ctx, want); err != nil {
		return err
	}
	if after := s.Members(); !slices.EqualFunc(before, after, func(a, b Node) bool { return a == b }) {
		o.Logger.Info("tiered: discovery: membership changed", "nodes", len(after), "members", memberNames(after))
	}
	return nil
}

func memberNames(nodes []Node) string {
	names := make([]string, len(nodes))
	for i, n := range nodes {
		names[i] = n.Name
	}
	return strings.Join(names, ",")
}

// startDiscovery starts polling the Discovery every DiscoveryInterval.
func (s *Shared) startDiscovery() {
	ctx, cancel := context.WithCancel(context.Background())
	s.discovery.cancel, s.discovery.done = cancel, make(chan struct{})
	go func() {
		defer close(s.discovery.done)
		t := time.NewTicker(s.opts.DiscoveryInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if err := s.discoverOnce(ctx); err != nil && ctx.Err() == nil {
				s.opts.Logger.Warn("tiered: discovery failed; membership unchanged", "err", err)
			}
		}
	}()
}

// stopDiscovery stops the loop, if any, and waits for it.
func (s *Shared) stopDiscovery() {
	s.stopOnce.Do(func() {
		if s.discovery.cancel != nil {
			s.discovery.cancel()
			<-s.discovery.done
		}
	})
}
