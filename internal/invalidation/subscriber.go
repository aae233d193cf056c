package invalidation

import (
	"context"
	"errors"
	"log/slog"
	"net"
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
	// Invalidate evicts keys written by another process.
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
	// filled or its lease given up (Config.FillChannel): read it again.
	Filled(node int, key string)
}

// Config configures a Subscriber.
type Config struct {
	Node    int                   // passed to the Handler
	Name    string                // the node's name, in log lines
	Client  redis.UniversalClient // the node's client
	Channel string
	// FillChannel, if set, is also followed: its messages are keys whose waited-for
	// lease ended (see Handler.Filled). They carry no sequence number and change
	// no value, so losing one costs a waiter only its fallback poll.
	FillChannel string
	Origin      string // this cache's id: its own messages are not Invalidated
	Handler     Handler
	// Health is how long the subscription may stay silent before it is pinged;
	// a ping unanswered within Timeout means the link is lost.
	Health  time.Duration
	Timeout time.Duration
	Logger  *slog.Logger
}

// Subscriber follows one node's invalidation channel.
type Subscriber struct {
	cfg    Config
	cancel context.CancelFunc
	done   chan struct{} // closed when run returns
	ready  chan struct{} // closed at the first confirmed subscription
	once   sync.Once     // closes ready

	mu sync.Mutex    // protects ps
	ps *redis.PubSub // the current session's, closed by Stop to end a blocked read

	// Owned by the run goroutine.
	epoch string
	seq   uint64

	// What Status reports, written by the run goroutine.
	up        atomic.Bool
	since     atomic.Int64           // when up last changed (or Start), in Unix nanoseconds
	lastSeq   atomic.Uint64          // the last message's sequence number
	lastEpoch atomic.Pointer[string] // the last message's epoch
}

// Status is a Subscriber's state.
type Status struct {
	Up    bool      // the subscription is confirmed
	Since time.Time // when Up last changed, or the Subscriber started
	Epoch string    // the node epoch of the last message received ("" before the first)
	Seq   uint64    // its sequence number
}

// Status returns the Subscriber's state now.
func (s *Subscriber) Status() Status {
	st := Status{Up: s.up.Load(), Since: time.Unix(0, s.since.Load()), Seq: s.lastSeq.Load()}
	if e := s.lastEpoch.Load(); e != nil {
		st.Epoch = *e
	}
	return st
}

func (s *Subscriber) setUp(up bool) {
	if s.up.Swap(up) != up {
		s.since.Store(time.Now().UnixNano())
	}
}

// Start starts a Subscriber's goroutine; Stop ends it.
func Start(cfg Config) *Subscriber {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Subscriber{cfg: cfg, cancel: cancel, done: make(chan struct{}), ready: make(chan struct{})}
	s.since.Store(time.Now().UnixNano())
	go s.run(ctx)
	return s
}

// Ready is closed once the first subscription is confirmed.
func (s *Subscriber) Ready() <-chan struct{} { return s.ready }

// Stop ends the Subscriber and waits for its goroutine. Idempotent.
func (s *Subscriber) Stop() {
	s.Cancel()
	<-s.done
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
		if s.session(ctx) {
			backoff = 10 * time.Millisecond // it was up: retry at once-ish
		}
		s.setUp(false)
		if ctx.Err() != nil {
			return // stopped: not a lost subscription
		}
		s.cfg.Handler.Down(s.cfg.Node)
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
// It reports whether the subscription was confirmed.
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
	sctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	channels := []string{s.cfg.Channel}
	if s.cfg.FillChannel != "" {
		channels = append(channels, s.cfg.FillChannel)
	}
	err := ps.Subscribe(sctx, channels...)
	cancel()
	if err != nil {
		s.logf("invalidation: subscribe failed", err)
		return false
	}
	awaitingPong := false
	for {
		wait := s.cfg.Health
		if awaitingPong {
			wait = s.cfg.Timeout
		}
		msg, err := ps.ReceiveTimeout(ctx, wait)
		if err != nil {
			if ctx.Err() != nil {
				return wasUp
			}
			var nerr net.Error
			if errors.As(err, &nerr) && nerr.Timeout() && !awaitingPong {
				pctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
				err = ps.Ping(pctx)
				cancel()
				if err == nil {
					awaitingPong = true
					continue
				}
			}
			s.logf("invalidation: subscription lost", err)
			return wasUp
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			// The first confirmation, or go-redis re-subscribing by itself after a
			// reconnect: messages in between may be lost either way.
			if m.Kind == "subscribe" && m.Channel == s.cfg.Channel {
				s.epoch, s.seq = "", 0
				s.cfg.Handler.Up(s.cfg.Node)
				s.setUp(true)
				wasUp = true
				s.once.Do(func() { close(s.ready) })
			}
		case *redis.Pong:
			awaitingPong = false
		case *redis.Message:
			awaitingPong = false
			if m.Channel == s.cfg.FillChannel {
				s.cfg.Handler.Filled(s.cfg.Node, m.Payload)
				continue
			}
			s.handle(m.Payload)
		}
	}
}

func (s *Subscriber) handle(payload string) {
	m, err := Parse(payload)
	if err != nil {
		// Not ours, or corrupt: the key is unknown, so the node's entries are.
		s.logf("invalidation: malformed message; flushing the node", err)
		s.cfg.Handler.Flush(s.cfg.Node, CauseGap)
		return
	}
	switch {
	case m.Seq == 0:
		// Untracked (a Redis Cluster publishes without a sequence).
	case s.epoch == "":
		// The first message since subscribing sets the baseline; Up flushed.
	case m.Epoch != s.epoch:
		s.cfg.Handler.Flush(s.cfg.Node, CauseEpoch)
	case m.Seq != s.seq+1:
		s.cfg.Handler.Flush(s.cfg.Node, CauseGap)
	}
	if m.Epoch != s.epoch {
		e := m.Epoch // allocated only when the epoch changes
		s.lastEpoch.Store(&e)
	}
	s.epoch, s.seq = m.Epoch, m.Seq
	s.lastSeq.Store(m.Seq)
	if len(m.Keys) == 0 {
		s.cfg.Handler.Flush(s.cfg.Node, CauseCleared) // every process, the sender's too
		return
	}
	if m.Origin != s.cfg.Origin {
		s.cfg.Handler.Invalidate(s.cfg.Node, &m)
	}
}

func (s *Subscriber) logf(msg string, err error) {
	if s.cfg.Logger != nil {
		s.cfg.Logger.Warn(msg, "channel", s.cfg.Channel, "node", s.cfg.Name, "err", err)
	}
}
