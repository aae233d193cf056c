package invalidation

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cause says why a node's near-cache entries were flushed.
type Cause int

const (
	CauseResubscribe Cause = iota // a (re)subscription: messages may have been lost while unsubscribed
	CauseGap                      // a gap in the node's sequence numbers: a message was lost
	CauseEpoch                    // a new epoch: the node restarted or failed over
	CauseCleared                  // the node's keys were cleared (a flush message)
)

func (c Cause) String() string {
	switch c {
	case CauseResubscribe:
		return "resubscribe"
	case CauseGap:
		return "sequence gap"
	case CauseEpoch:
		return "new epoch"
	case CauseCleared:
		return "cleared"
	}
	return "unknown"
}

// Handler receives what a Subscriber learns about its node. Its methods are called
// from the Subscriber's goroutine, one at a time, and must not block.
type Handler interface {
	// Invalidate evicts keys written by another process. m, and its Keys, are the
	// Subscriber's own, reused for the next message: valid only during the call.
	Invalidate(node int, m *Message)
	// Down reports that the node's subscription is lost: its entries must stop
	// being served and stored until Up.
	Down(node int)
	// Up reports a confirmed subscription after Down (or at start): flush the
	// node's entries, then serve and store them again.
	Up(node int)
	// Flush reports a lost message (CauseGap), a restarted node (CauseEpoch) or a
	// node whose keys were cleared (CauseCleared).
	Flush(node int, cause Cause)
	// Filled reports that key, whose lease a process of this cache waited for, was
	// filled with value, or filled with a value too large to send, or its lease
	// given up (value nil: read it again) (Config.FillChannel).
	Filled(node int, key string, value []byte)
	// Confirmed reports that every message the node published before at has been
	// delivered: the pong of a ping sent at at came back on the subscription's
	// connection, behind them.
	Confirmed(node int, at time.Time)
}

// Config configures a Subscriber: one pub/sub connection to one node, shared by
// every Topic followed on that node.
type Config struct {
	Name   string                // the node's name, in log lines
	Client redis.UniversalClient // the node's client
	// Health is how often the connection is pinged; a ping unanswered within
	// Timeout means the link is lost. Each pong confirms, to every Topic's
	// Handler, the invalidations published before its ping was sent.
	Health  time.Duration
	Timeout time.Duration
	Logger  *slog.Logger
}

// Topic is what one cache follows on a node: its invalidation channel, and the
// handler of what arrives there.
type Topic struct {
	Node    int // passed to the Handler: the node's index in that cache
	Channel string
	// FillChannel, if set, is also followed: its messages are keys whose waited-for
	// lease ended (see Handler.Filled). They carry no sequence number and change
	// no value, so losing one costs a waiter only its fallback poll.
	FillChannel string
	Origin      string // the cache's id: its own messages are not Invalidated
	Handler     Handler
}

// Sub is a Topic that a Subscriber follows (Subscriber.Add).
type Sub struct {
	t     Topic
	ready chan struct{} // closed at the first confirmed subscription
	once  sync.Once     // closes ready

	// Owned by the Subscriber's goroutine.
	epoch string
	seq   uint64
	msg   Message // the message being handled, parsed in place (its Keys reused)

	// What Status reports, written by the Subscriber's goroutine.
	up        atomic.Bool
	since     atomic.Int64           // when up last changed (or Add), in Unix nanoseconds
	lastSeq   atomic.Uint64          // the last message's sequence number
	lastEpoch atomic.Pointer[string] // the last message's epoch
}

// Ready is closed once the Topic's first subscription is confirmed.
func (b *Sub) Ready() <-chan struct{} { return b.ready }

// Status is a Topic's state on its node.
type Status struct {
	Up    bool      // the subscription is confirmed
	Since time.Time // when Up last changed, or the Topic was added
	Epoch string    // the node epoch of the last message received ("" before the first)
	Seq   uint64    // its sequence number
}

// Status returns the Topic's state now.
func (b *Sub) Status() Status {
	st := Status{Up: b.up.Load(), Since: time.Unix(0, b.since.Load()), Seq: b.lastSeq.Load()}
	if e := b.lastEpoch.Load(); e != nil {
		st.Epoch = *e
	}
	return st
}

func (b *Sub) setUp(up bool) {
	if b.up.Swap(up) != up {
		b.since.Store(time.Now().UnixNano())
	}
}

func (b *Sub) channels() []string {
	if b.t.FillChannel == "" {
		return []string{b.t.Channel}
	}
	return []string{b.t.Channel, b.t.FillChannel}
}

// route is where a channel's messages go.
type route struct {
	sub  *Sub
	fill bool // the Topic's FillChannel
}

// Subscriber follows the Topics added to it on one node, over one pub/sub connection.
type Subscriber struct {
	cfg    Config
	cancel context.CancelFunc
	done   chan struct{} // closed when run returns

	mu     sync.Mutex    // protects ps and subs, and orders route updates
	ps     *redis.PubSub // the current session's, closed by Cancel to end a blocked read
	subs   []*Sub
	routes atomic.Pointer[map[string]route] // channel -> route; replaced whole under mu
	added  chan struct{}                    // wakes run, idle while no Topic is followed
	calls  sync.WaitGroup                   // (un)subscriptions sent on a live session, in goroutines

	// dispatch is held (read) while a message is handed to a Handler, so that
	// Remove can wait until its Handler is called no more.
	dispatch sync.RWMutex

	// On a Redis Cluster (Config.Client a *redis.ClusterClient): the channel of this
	// Subscriber's per-master confirmations (see masterConfirms), "" otherwise.
	confirmCh string
	// confirmFailing reports that the last round of confirmations failed (and was
	// logged); owned by publishConfirms, which one session runs at a time.
	confirmFailing bool
}

// Start starts a Subscriber's goroutine; Stop ends it.
func Start(cfg Config) *Subscriber {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Subscriber{cfg: cfg, cancel: cancel, done: make(chan struct{}), added: make(chan struct{}, 1)}
	if _, ok := cfg.Client.(*redis.ClusterClient); ok {
		var id [8]byte
		_, _ = rand.Read(id[:])
		s.confirmCh = confirmPrefix + hex.EncodeToString(id[:])
	}
	s.routes.Store(&map[string]route{})
	go s.run(ctx)
	return s
}

// Add follows t on the node, at once if the connection is up (else at the next
// session). t's Handler is Down until the subscription of t.Channel is confirmed.
func (s *Subscriber) Add(t Topic) *Sub {
	b := &Sub{t: t, ready: make(chan struct{})}
	b.since.Store(time.Now().UnixNano())
	s.mu.Lock()
	defer s.mu.Unlock()
	s.subs = append(s.subs, b)
	s.rebuildLocked()
	// On a live session, subscribe in a goroutine: the call must not wait on the
	// node (a dial, a hung node). A failure breaks the connection, whose next
	// session subscribes every Topic; a hung node is found by the health check.
	s.sendLocked(func(ctx context.Context, ps *redis.PubSub) error { return ps.Subscribe(ctx, b.channels()...) })
	select {
	case s.added <- struct{}{}:
	default:
	}
	return b
}

// sendLocked runs call on the live session's PubSub, if any, in a goroutine bounded
// by Timeout.
func (s *Subscriber) sendLocked(call func(context.Context, *redis.PubSub) error) {
	if s.ps == nil {
		return
	}
	ps := s.ps
	s.calls.Go(func() {
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
		defer cancel()
		_ = call(ctx, ps)
	})
}

// Remove stops following b; when it returns, b's Handler is called no more.
func (s *Subscriber) Remove(b *Sub) {
	s.mu.Lock()
	for i, x := range s.subs {
		if x == b {
			s.subs = append(s.subs[:i:i], s.subs[i+1:]...)
			break
		}
	}
	s.rebuildLocked()
	// Best effort: its messages are routed nowhere now.
	s.sendLocked(func(ctx context.Context, ps *redis.PubSub) error { return ps.Unsubscribe(ctx, b.channels()...) })
	s.mu.Unlock()
	s.dispatch.Lock() // wait out a dispatch that found b before the routes changed
	s.dispatch.Unlock()
}

// Len returns the number of Topics followed.
func (s *Subscriber) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.subs)
}

func (s *Subscriber) rebuildLocked() {
	m := make(map[string]route, 2*len(s.subs))
	for _, b := range s.subs {
		m[b.t.Channel] = route{sub: b}
		if b.t.FillChannel != "" {
			m[b.t.FillChannel] = route{sub: b, fill: true}
		}
	}
	s.routes.Store(&m)
}

func (s *Subscriber) snapshot() ([]*Sub, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	subs := append([]*Sub(nil), s.subs...)
	var channels []string
	for _, b := range subs {
		channels = append(channels, b.channels()...)
	}
	return subs, channels
}

// Stop ends the Subscriber and waits for its goroutine. Idempotent.
func (s *Subscriber) Stop() {
	s.Cancel()
	<-s.done
	s.calls.Wait()
}

// Cancel asks the Subscriber to end without waiting for it: Stop several Subscribers
// faster by Cancelling them all first.
func (s *Subscriber) Cancel() {
	s.cancel()
	s.mu.Lock()
	if s.ps != nil {
		s.ps.Close() // a read blocked until the next health check returns now
	}
	s.mu.Unlock()
}

func (s *Subscriber) run(ctx context.Context) {
	defer close(s.done)
	backoff := 10 * time.Millisecond
	for ctx.Err() == nil {
		if s.Len() == 0 { // nothing to follow: no connection until there is
			select {
			case <-ctx.Done():
				return
			case <-s.added:
			}
			continue
		}
		if s.session(ctx) {
			backoff = 10 * time.Millisecond // it was up: retry at once-ish
		}
		subs, _ := s.snapshot()
		stopped := ctx.Err() != nil
		s.dispatch.RLock()
		for _, b := range subs {
			b.setUp(false)
			if !stopped { // stopped: not a lost subscription
				b.t.Handler.Down(b.t.Node)
			}
		}
		s.dispatch.RUnlock()
		if stopped {
			return
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(backoff*2, time.Second)
	}
}

// session subscribes on a fresh PubSub and follows it until it fails or ctx ends.
// It reports whether a subscription was confirmed.
func (s *Subscriber) session(ctx context.Context) (wasUp bool) {
	ps := s.cfg.Client.Subscribe(ctx)
	s.mu.Lock()
	s.ps = ps
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.ps = nil
		s.mu.Unlock()
		ps.Close()
	}()
	if ctx.Err() != nil { // Cancel ran before s.ps was set
		return false
	}
	// Topics added from here on subscribe themselves on ps; subscribing one twice
	// only confirms it twice.
	if _, channels := s.snapshot(); len(channels) > 0 {
		if s.confirmCh != "" {
			// Last: the first channel chooses the Cluster node of the connection.
			channels = append(channels, s.confirmCh)
		}
		sctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
		err := ps.Subscribe(sctx, channels...)
		cancel()
		if err != nil {
			s.logf("invalidation: subscribe failed", err)
			return false
		}
	}
	var mc *masterConfirms
	if cc, ok := s.cfg.Client.(*redis.ClusterClient); ok {
		mc = &masterConfirms{at: map[string]time.Time{}, kick: make(chan struct{}, 1)}
		mctx, stop := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Go(func() { s.publishConfirms(mctx, cc, mc) })
		defer func() {
			stop()
			wg.Wait()
		}()
	}
	// Pings go out every Health; their pongs come back in order, behind every
	// message published before the ping reached the node.
	var pings []ping // sent, unanswered, oldest first
	var seq uint64
	next := time.Now() // the next ping is due
	for {
		// Due pings go out whatever else arrives: a busy channel must not delay
		// the confirmations (nor hide a lost link).
		now := time.Now()
		if len(pings) > 0 && now.Sub(pings[0].sent) >= s.cfg.Timeout {
			s.logf("invalidation: subscription lost", fmt.Errorf("no pong within %v", s.cfg.Timeout))
			return wasUp
		}
		if !now.Before(next) {
			seq++
			pctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
			err := ps.Ping(pctx, pingPrefix+strconv.FormatUint(seq, 10))
			cancel()
			if err != nil {
				if ctx.Err() == nil {
					s.logf("invalidation: subscription lost", err)
				}
				return wasUp
			}
			pings = append(pings, ping{seq: seq, sent: now})
			next = now.Add(s.cfg.Health)
		}
		wait := next.Sub(now)
		if len(pings) > 0 {
			wait = min(wait, pings[0].sent.Add(s.cfg.Timeout).Sub(now))
		}
		msg, err := ps.ReceiveTimeout(ctx, max(wait, time.Millisecond))
		if err != nil {
			if ctx.Err() != nil {
				return wasUp
			}
			var nerr net.Error
			if !errors.As(err, &nerr) || !nerr.Timeout() {
				s.logf("invalidation: subscription lost", err)
				return wasUp
			}
			continue // a ping is due, or a pong late: see the top of the loop
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			// The first confirmation, or go-redis re-subscribing by itself after a
			// reconnect: messages in between may be lost either way.
			if m.Kind == "subscribe" && mc != nil && m.Channel == s.confirmCh {
				select { // a round sent before the subscription may be lost
				case mc.kick <- struct{}{}:
				default:
				}
			}
			if m.Kind == "subscribe" {
				s.dispatch.RLock()
				if r, ok := (*s.routes.Load())[m.Channel]; ok && !r.fill {
					b := r.sub
					b.epoch, b.seq = "", 0
					b.t.Handler.Up(b.t.Node)
					b.setUp(true)
					b.once.Do(func() { close(b.ready) })
					wasUp = true
				}
				s.dispatch.RUnlock()
				next = time.Now() // confirm it at once
			}
		case *redis.Pong:
			n, ok := strings.CutPrefix(m.Payload, pingPrefix)
			id, err := strconv.ParseUint(n, 10, 64)
			if !ok || err != nil {
				continue
			}
			for len(pings) > 0 && pings[0].seq <= id {
				if pings[0].seq == id {
					if mc == nil {
						s.confirm(pings[0].sent)
					} else if at := mc.pong(pings[0].sent); !at.IsZero() {
						s.confirm(at)
					}
				}
				pings = pings[1:]
			}
		case *redis.Message:
			if mc != nil && m.Channel == s.confirmCh {
				if at := mc.message(m.Payload); !at.IsZero() {
					s.confirm(at)
				}
				continue
			}
			s.dispatch.RLock()
			if r, ok := (*s.routes.Load())[m.Channel]; ok {
				if r.fill {
					if key, value, ok := ParseFill(m.Payload); ok {
						r.sub.t.Handler.Filled(r.sub.t.Node, key, value)
					}
				} else {
					s.handle(r.sub, m.Payload)
				}
			}
			s.dispatch.RUnlock()
		}
	}
}

// ping is a ping sent on the subscription's connection.
type ping struct {
	seq  uint64
	sent time.Time
}

// pingPrefix starts the payload of the Subscriber's pings.
const pingPrefix = "tiered:"

// confirmPrefix starts the channel of a Subscriber's per-master confirmations.
const confirmPrefix = "tiered:confirm:"

// masterConfirms confirms a Redis Cluster's invalidations per master. A message
// published on master M reaches the subscription's node over the cluster bus link
// from M, not on the subscription's connection: the pong of a ping on that
// connection confirms only what the node has received, and says nothing of a
// message still on a slow bus link. So every Health, publishConfirms publishes on each
// master a confirmation, on this Subscriber's own channel, carrying the time it was
// sent: it travels the same link from M, behind every message M published before,
// so its arrival confirms them. The node is confirmed at the oldest of its masters'
// latest confirmations (and of the subscription's pong): a master whose
// confirmations stop arriving (a slow or broken bus link, a master down) holds back
// the whole Cluster's confirmation, so the near-cache stops serving its keys
// MaxStaleness after that master's last one.
type masterConfirms struct {
	mu      sync.Mutex
	masters []string             // the masters at the last round of confirmations
	at      map[string]time.Time // master address -> send time of its latest confirmation received
	pinged  time.Time            // send time of the subscription's latest pong
	kick    chan struct{}        // starts a round now: the channel's subscription is confirmed
}

// round records the masters that the latest round of confirmations went to.
func (mc *masterConfirms) round(masters []string) {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	mc.masters = masters
	for addr := range mc.at { // forget masters that are gone
		if !slices.Contains(masters, addr) {
			delete(mc.at, addr)
		}
	}
}

// pong records the pong of a ping sent at sent and returns the node's confirmation.
func (mc *masterConfirms) pong(sent time.Time) time.Time {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	mc.pinged = sent
	return mc.oldestLocked()
}

// message records a confirmation received on the confirmation channel and returns
// the node's confirmation (zero if none, or if payload is not one).
func (mc *masterConfirms) message(payload string) time.Time {
	addr, ns, ok := strings.Cut(payload, " ")
	n, err := strconv.ParseInt(ns, 10, 64)
	if !ok || err != nil {
		return time.Time{}
	}
	sent := time.Unix(0, n)
	mc.mu.Lock()
	defer mc.mu.Unlock()
	if sent.After(mc.at[addr]) {
		mc.at[addr] = sent
	}
	return mc.oldestLocked()
}

// oldestLocked returns the oldest of the masters' confirmations and the pong's:
// zero until every master has confirmed once.
func (mc *masterConfirms) oldestLocked() time.Time {
	if len(mc.masters) == 0 || mc.pinged.IsZero() {
		return time.Time{}
	}
	oldest := mc.pinged
	for _, addr := range mc.masters {
		at, ok := mc.at[addr]
		if !ok {
			return time.Time{}
		}
		if at.Before(oldest) {
			oldest = at
		}
	}
	return oldest
}

// publishConfirms publishes a confirmation on every master of cc every Health, in
// rounds, until ctx ends. A round that does not finish within Timeout is given up
// (a hung master's confirmations stop, which the node's confirmation shows).
func (s *Subscriber) publishConfirms(ctx context.Context, cc *redis.ClusterClient, mc *masterConfirms) {
	t := time.NewTicker(s.cfg.Health)
	defer t.Stop()
	for {
		sent := time.Now()
		payload := " " + strconv.FormatInt(sent.UnixNano(), 10)
		rctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
		var mu sync.Mutex
		var masters []string
		// ForEachMaster reloads the Cluster's slots first: a new master is in the
		// round that follows its promotion.
		err := cc.ForEachMaster(rctx, func(ctx context.Context, m *redis.Client) error {
			addr := m.Options().Addr
			mu.Lock()
			masters = append(masters, addr)
			mu.Unlock()
			return m.Publish(ctx, s.confirmCh, addr+payload).Err()
		})
		cancel()
		if ctx.Err() != nil {
			return
		}
		if len(masters) > 0 {
			mc.round(masters)
		}
		// Logged when the rounds start failing and when they succeed again, not
		// every HealthCheck while a master is down.
		switch {
		case err != nil && !s.confirmFailing:
			s.confirmFailing = true
			s.logf("invalidation: a master's confirmation failed; the Cluster's keys bypass the near-cache once it is MaxStaleness old", err)
		case err == nil && s.confirmFailing:
			s.confirmFailing = false
			if s.cfg.Logger != nil {
				s.cfg.Logger.Info("invalidation: every master confirms again", "node", s.cfg.Name)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-mc.kick:
		}
	}
}

// confirm reports to the Topics whose subscription is up that the node's messages
// published before at have arrived.
func (s *Subscriber) confirm(at time.Time) {
	subs, _ := s.snapshot()
	s.dispatch.RLock()
	defer s.dispatch.RUnlock()
	for _, b := range subs {
		if b.up.Load() {
			b.t.Handler.Confirmed(b.t.Node, at)
		}
	}
}

func (s *Subscriber) handle(b *Sub, payload string) {
	h, node := b.t.Handler, b.t.Node
	m := &b.msg
	if err := ParseInto(m, payload); err != nil {
		// Not ours, or corrupt: the key is unknown, so the node's entries are.
		s.logf("invalidation: malformed message; flushing the node", err)
		h.Flush(node, CauseGap)
		return
	}
	switch {
	case m.Seq == 0:
		// Untracked (a Redis Cluster publishes without a sequence).
	case b.epoch == "":
		// The first message since subscribing sets the baseline; Up flushed.
	case m.Epoch != b.epoch:
		h.Flush(node, CauseEpoch)
	case m.Seq != b.seq+1:
		h.Flush(node, CauseGap)
	}
	if m.Epoch != b.epoch {
		e := m.Epoch // allocated only when the epoch changes
		b.lastEpoch.Store(&e)
	}
	b.epoch, b.seq = m.Epoch, m.Seq
	b.lastSeq.Store(m.Seq)
	if len(m.Keys) == 0 {
		h.Flush(node, CauseCleared) // every process, the sender's too
		return
	}
	if m.Origin != b.t.Origin {
		h.Invalidate(node, m)
	}
}

func (s *Subscriber) logf(msg string, err error) {
	if s.cfg.Logger != nil {
		s.cfg.Logger.Warn(msg, "node", s.cfg.Name, "err", err)
	}
}
