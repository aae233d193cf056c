// Package remote is the shared tier: Redis nodes reached through go-redis v9 clients,
// either several standalone nodes with a client-side consistent-hash ring, or one
// redis.UniversalClient (a single node or a Redis Cluster) that routes keys itself.
//
// Values are opaque framed bytes here; the cache frames and decodes them. Keys are
// stored as "<namespace>:{<key>}": the braces make the user key the Redis Cluster hash
// tag, so that companion keys (a key's lease, for instance) land in the same slot.
//
// Every call is bounded by the per-call timeout. go-redis only honours a context
// deadline on its sockets when the client has ContextTimeoutEnabled set, so New
// refuses clients without it: an unbounded call to a hung node is exactly what a
// cache in front of a database must never make.
package remote

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"

	"github.com/tieredcache/tiered/internal/warm"
)

// ErrMiss reports that Redis holds no value for a key.
var ErrMiss = errors.New("remote: miss")

// Picker routes a key to the index of the node that owns it. ok is false when no
// node can take it.
type Picker interface {
	Owner(key string) (idx int, ok bool)
}

// Node is one shared-tier endpoint.
type Node struct {
	Name   string
	Client redis.UniversalClient
}

// Config configures the shared tier.
type Config struct {
	Nodes     []Node        // indexed as Picker indexes them
	Picker    Picker        // required when len(Nodes) > 1
	Namespace string        // key prefix; must not contain '{' or '}'
	Timeout   time.Duration // bound on each call to one node
	// OnBreaker, if set, is called with the breaker's name (the node's, or a
	// Cluster master's address) when a circuit breaker changes state.
	OnBreaker func(name string, to gobreaker.State)
	// OnMissed, if set, is called when a write could not be confirmed on the named
	// node, with the keys now remembered there (see Replay; MissedDeletes+1 once
	// they overflowed).
	OnMissed func(name string, pending int)
	// MissedDeletes bounds the keys remembered per node for a write that could not
	// be confirmed there (see Replay); required. The cache's Options.MissedDeletes
	// sets it, and holds its default.
	MissedDeletes int
	// HintTTL, if above 0, records missed writes as hints on other nodes too, kept
	// that long (see hints.go): the namespace's TTL.
	HintTTL time.Duration
}

// Redis is the shared tier over Redis. It is safe for concurrent use.
type Redis struct {
	nodes    atomic.Pointer[[]*node] // by index; append-only, replaced whole (AddNode)
	addMu    sync.Mutex              // serialises AddNode and Replace; protects replaced
	replaced []*node                 // nodes Replace took out, whose pipelines Wait waits for
	pick     Picker
	onChange func(name string, to gobreaker.State)
	onMissed func(name string, pending int)
	maxMiss  int
	prefix   string
	timeout  time.Duration
	channel  string        // invalidation channel
	hintKey  string        // the set of hints each node holds for the others
	hintTTL  time.Duration // Config.HintTTL
	seqKey   string        // per-node invalidation sequence
	epochKey string        // per-node epoch
	workers  warm.Pool     // goroutines for batches' node round trips and for pipelines, kept warm
}

type node struct {
	name    string
	c       redis.UniversalClient
	cluster bool       // MGET across slots is not allowed: pipeline GETs instead
	p       *pipeliner // single-key reads and fills, pipelined with other callers' (pipeline.go)
	cb      *gobreaker.CircuitBreaker[struct{}]
	masters sync.Map // Cluster master address -> its *gobreaker.CircuitBreaker

	// Writes that could not be confirmed on the node (see Replay). While any is
	// unapplied, reads of the node fail with ErrNodeUnavailable.
	unsynced atomic.Bool
	replayMu sync.Mutex        // serialises Replay
	mu       sync.Mutex        // protects missed, dirty, failures
	missed   map[string]uint64 // key -> failures when it was (last) remembered
	dirty    bool              // missed overflowed: clear the whole namespace
	failures uint64            // writes that failed on the node, ever
}

// The circuit breakers (github.com/sony/gobreaker/v2), one per standalone node and one
// per master of a Cluster (found with ClusterClient.MasterForKey): after BreakerTrips
// consecutive calls that fail without an answer from Redis (timeouts, refused or
// reset connections), calls to the node fail at once with ErrNodeUnavailable for
// BreakerOpenFor; then one probe call is let through, and its success closes the
// breaker. A reply from Redis, even an error reply or a miss, counts as a success.
const (
	BreakerTrips   = 3
	BreakerOpenFor = time.Second
)

// ErrNodeUnavailable is returned, wrapped, for calls to a node whose breaker is open.
var ErrNodeUnavailable = errors.New("remote: node unavailable (circuit breaker open)")

func (r *Redis) newBreaker(name string) *gobreaker.CircuitBreaker[struct{}] {
	return gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        name,
		MaxRequests: 1,
		Timeout:     BreakerOpenFor,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= BreakerTrips },
		IsSuccessful: func(err error) bool {
			if err == nil || errors.Is(err, redis.Nil) {
				return true
			}
			var reply redis.Error // the node answered (declared here: it escapes)
			return errors.As(err, &reply)
		},
		// A caller that gave up says nothing about the node.
		IsExcluded: func(err error) bool { return errors.Is(err, context.Canceled) },
		OnStateChange: func(name string, _, to gobreaker.State) {
			if r.onChange != nil {
				r.onChange(name, to)
			}
		},
	})
}

// do runs op through the node's breaker, or, on a Cluster, through the breaker of
// the master that serves key (master "" for the whole Cluster): one hung master
// must not send the keys of the others to the Loader.
func (r *Redis) do(ctx context.Context, n *node, master string, op func() error) error {
	cb := n.cb
	if n.cluster && master != "" {
		b, ok := n.masters.Load(master)
		if !ok {
			b, _ = n.masters.LoadOrStore(master, r.newBreaker(master))
		}
		cb = b.(*gobreaker.CircuitBreaker[struct{}])
	}
	_, err := cb.Execute(func() (struct{}, error) { return struct{}{}, op() })
	if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
		return fmt.Errorf("%w: %s", ErrNodeUnavailable, cb.Name())
	}
	return err
}

// master returns the address of the Cluster master that serves key on n, or "" if
// n is not a Cluster (or its slot map is not known yet).
func (r *Redis) master(ctx context.Context, n *node, key string) string {
	if !n.cluster {
		return ""
	}
	m, err := n.c.(*redis.ClusterClient).MasterForKey(ctx, r.Key(key))
	if err != nil {
		return ""
	}
	return m.Options().Addr
}

// doKey runs op, a call about key, through the breaker that guards it.
func (r *Redis) doKey(ctx context.Context, n *node, key string, op func() error) error {
	return r.do(ctx, n, r.master(ctx, n, key), op)
}

// New checks cfg and returns the shared tier. It does not contact Redis.
func New(cfg Config) (*Redis, error) {
	if len(cfg.Nodes) == 0 {
		return nil, errors.New("remote: no nodes")
	}
	if len(cfg.Nodes) > 1 && cfg.Picker == nil {
		return nil, errors.New("remote: several nodes need a Picker")
	}
	if strings.ContainsAny(cfg.Namespace, "{}") {
		return nil, fmt.Errorf("remote: namespace %q must not contain '{' or '}'", cfg.Namespace)
	}
	if cfg.Timeout <= 0 {
		return nil, errors.New("remote: Timeout must be positive")
	}
	if cfg.MissedDeletes <= 0 {
		return nil, errors.New("remote: MissedDeletes must be positive")
	}
	r := &Redis{
		pick: cfg.Picker, prefix: cfg.Namespace + ":{", timeout: cfg.Timeout,
		onChange: cfg.OnBreaker, onMissed: cfg.OnMissed, maxMiss: cfg.MissedDeletes,
		channel: cfg.Namespace + ":invalidate",
		seqKey:  cfg.Namespace + ":invalidate:seq",
		hintKey: cfg.Namespace + ":hints", hintTTL: cfg.HintTTL,
		epochKey: cfg.Namespace + ":invalidate:epoch",
	}
	r.nodes.Store(new([]*node))
	for _, n := range cfg.Nodes {
		if _, err := r.AddNode(n); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// AddNode appends a node and returns its index, which is the number of nodes added
// before it: indexes are never reused. Add a node here before a Picker may return
// its index.
func (r *Redis) AddNode(n Node) (int, error) {
	if n.Client == nil {
		return 0, fmt.Errorf("remote: node %q has a nil client", n.Name)
	}
	if err := checkClient(n.Name, n.Client); err != nil {
		return 0, err
	}
	r.addMu.Lock()
	defer r.addMu.Unlock()
	old := *r.nodes.Load()
	idx := len(old)
	_, cluster := n.Client.(*redis.ClusterClient)
	nodes := append(old[:len(old):len(old)], r.newNode(n, cluster))
	r.nodes.Store(&nodes)
	return idx, nil
}

func (r *Redis) newNode(n Node, cluster bool) *node {
	p := newPipeliner(n.Client, r.timeout, r.setCmd)
	p.pool = &r.workers
	return &node{name: n.Name, c: n.Client, cluster: cluster, cb: r.newBreaker(n.Name), p: p}
}

// Replace makes node idx reach Redis through n.Client from now on (the node moved to
// another address under the same name and index): a new breaker and pipeline, and
// no memory of the old address's missed writes. The node is dirty (see MarkDirty):
// its keys are not read until Replay has cleared them. Calls in flight finish on the
// old client.
func (r *Redis) Replace(idx int, n Node) error {
	if n.Client == nil {
		return fmt.Errorf("remote: node %q has a nil client", n.Name)
	}
	if err := checkClient(n.Name, n.Client); err != nil {
		return err
	}
	r.addMu.Lock()
	defer r.addMu.Unlock()
	old := *r.nodes.Load()
	if idx < 0 || idx >= len(old) {
		return errNoNode
	}
	_, cluster := n.Client.(*redis.ClusterClient)
	nodes := append([]*node(nil), old...)
	r.replaced = append(r.replaced, old[idx]) // for Wait
	nodes[idx] = r.newNode(n, cluster)
	r.nodes.Store(&nodes)
	r.MarkDirty(idx)
	return nil
}

func checkClient(name string, c redis.UniversalClient) error {
	var enabled bool
	switch c := c.(type) {
	case *redis.Client:
		enabled = c.Options().ContextTimeoutEnabled
	case *redis.ClusterClient:
		enabled = c.Options().ContextTimeoutEnabled
	default:
		return nil // cannot inspect; the caller owns its timeouts
	}
	if !enabled {
		return fmt.Errorf("remote: client for node %q has ContextTimeoutEnabled=false, "+
			"so go-redis would ignore per-call deadlines and a hung node could block callers "+
			"for ReadTimeout and every retry; set ContextTimeoutEnabled: true in its options", name)
	}
	return nil
}

// Wait waits for the pipelines still running in goroutines (a caller that gave up
// leaves its pipeline running until the node answers or Timeout passes). Call it
// once no call is in flight, after closing the clients the cache owns, which ends
// their pipelines at once; it then stops the goroutines kept for batches: it makes
// Close leave no goroutine of the shared tier.
func (r *Redis) Wait() {
	r.addMu.Lock()
	nodes := append(append([]*node(nil), *r.nodes.Load()...), r.replaced...)
	r.addMu.Unlock()
	for _, n := range nodes {
		n.p.wg.Wait()
	}
	r.workers.Stop()
}

// Key returns the Redis key that stores key.
func (r *Redis) Key(key string) string { return r.prefix + key + "}" }

// Nodes returns the number of nodes.
func (r *Redis) Nodes() int { return len(*r.nodes.Load()) }

// Name returns the name of node idx.
func (r *Redis) Name(idx int) string { return (*r.nodes.Load())[idx].name }

// Owner returns the index of the node that owns key, or -1 if none can.
func (r *Redis) Owner(key string) int {
	if r.pick == nil {
		return 0
	}
	idx, ok := r.pick.Owner(key)
	if !ok {
		return -1
	}
	return idx
}

// errNoNode is returned for a key whose node index names no node.
var errNoNode = errors.New("remote: no node owns the key")

func (r *Redis) node(idx int) (*node, error) {
	nodes := *r.nodes.Load()
	if idx < 0 || idx >= len(nodes) {
		return nil, errNoNode
	}
	return nodes[idx], nil
}

// readable returns node idx for a read of key, or an error if a write of key (or,
// on a dirty node, of any key) is still to be replayed there.
func (r *Redis) readable(idx int, key string) (*node, error) {
	n, err := r.node(idx)
	if err == nil && n.unsynced.Load() && n.blocks(key) {
		err = fmt.Errorf("%w: %s has a missed write of %q to replay", ErrNodeUnavailable, n.name, key)
	}
	return n, err
}

// blocks reports whether key must not be read from n before Replay.
func (n *node) blocks(key string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	_, missed := n.missed[key]
	return n.dirty || missed
}

// call runs op, one call about key on node idx, bounded by the per-call timeout and
// guarded by the key's breaker. A client whose own timeouts are each at most the
// per-call timeout (see pipeliner.bounded) bounds the call itself, so it gets no
// per-call context deadline (a timer and a context less per call). A read is refused (ErrNodeUnavailable) while key has
// a missed write to replay there. Errors name the operation, the key and the node.
func (r *Redis) call(ctx context.Context, idx int, key, what string, read bool, op func(context.Context, *node) error) error {
	n, err := r.node(idx)
	if read {
		n, err = r.readable(idx, key)
	}
	if err != nil {
		return err
	}
	if !n.p.bounded {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.timeout)
		defer cancel()
	}
	if err := r.doKey(ctx, n, key, func() error { return op(ctx, n) }); err != nil {
		return fmt.Errorf("remote %s %q on %s: %w", what, key, n.name, err)
	}
	return nil
}

// Get returns the bytes stored for key on node idx, or ErrMiss.
func (r *Redis) Get(ctx context.Context, idx int, key string) ([]byte, error) {
	var b []byte
	err := r.call(ctx, idx, key, "get", true, func(ctx context.Context, n *node) error {
		cmd := redis.NewStringCmd(ctx, "get", r.Key(key))
		if err := n.p.do(ctx, cmd); err != nil {
			return err
		}
		b = unsafeBytes(cmd.Val())
		return nil
	})
	if errors.Is(err, redis.Nil) || err == nil && IsPlaceholder(b) {
		return nil, ErrMiss // a placeholder: another caller holds the key's lease
	}
	return b, err
}

// Repair overwrites undecodable bytes stored for key with b, publishing nothing.
func (r *Redis) Repair(ctx context.Context, idx int, key string, b []byte, ttl time.Duration) error {
	return r.call(ctx, idx, key, "repair", false, func(ctx context.Context, n *node) error {
		return n.c.Set(ctx, r.Key(key), b, ttl).Err()
	})
}

// Set stores b for key on node idx for ttl and publishes the invalidation message
// payload builds for its key on the node's invalidation channel, atomically (see
// scripts.go). Concurrent Sets to one node may share one script call and one message
// (see write in pipeline.go); payload may then be called with their keys together.
// An error means the write may or may not have happened, and its message may or may
// not have been published.
func (r *Redis) Set(ctx context.Context, idx int, key string, b []byte, ttl time.Duration, payload func(keys []string) []byte) error {
	ms := max(ttl.Milliseconds(), 1)
	err := r.call(ctx, idx, key, "set", false, func(ctx context.Context, n *node) error {
		if n.cluster {
			return clusterSetScript.Run(ctx, n.c, []string{r.Key(key), r.LeaseKey(key)}, r.channel, payload([]string{key}), b, ms).Err()
		}
		return n.p.set(ctx, &write{key: key, b: b, ms: ms, payload: payload})
	})
	if err != nil {
		if n, nerr := r.node(idx); nerr == nil {
			r.remember(n, key)
			if herr := r.hintMiss(ctx, idx, []string{key}); herr != nil {
				err = errors.Join(err, herr)
			}
		}
	}
	return err
}

// setCmd is the script call that applies ws (one or more writes to one node) and
// publishes one message for all their keys, built by the first write's payload. Its
// arguments are pointers into a setCall (see there), so that a write's call is a few
// allocations rather than one per argument.
func (r *Redis) setCmd(ctx context.Context, ws []*write) *redis.Cmd {
	sc := &setCall{}
	sc.ws = sc.w1[:0]
	if len(ws) > len(sc.w1) {
		sc.ws = make([]setCallWrite, 0, len(ws))
	}
	args := sc.args[:0]
	if n := 5 + 2*len(ws) + 3 + 2*len(ws); n > len(sc.args) {
		args = make([]any, 0, n)
	}
	keys := sc.k1[:0]
	if len(ws) > len(sc.k1) {
		keys = make([]string, 0, len(ws))
	}
	for _, w := range ws {
		keys = append(keys, w.key)
		sc.ws = append(sc.ws, setCallWrite{ms: w.ms})
	}
	args = append(args, "evalsha", &setScriptHash, 2+2*len(ws), &r.seqKey, &r.epochKey)
	for i, w := range ws {
		cw := &sc.ws[i]
		lease := r.LeaseKey(w.key) // one allocation for both keys: the value key is its prefix
		cw.lease, cw.key = lease, lease[:len(lease)-len(leaseSuffix)]
		if w.ms != deleteTTL {
			cw.value = unsafe.String(unsafe.SliceData(w.b), len(w.b)) // the frame: nothing writes to it
		}
		args = append(args, &cw.key, &cw.lease)
	}
	epoch := strconv.AppendUint(sc.epochBuf[:0], rand.Uint64(), 36) // at most 13 bytes: in epochBuf
	sc.epoch = unsafe.String(unsafe.SliceData(epoch), len(epoch))
	payload := ws[0].payload(keys)
	sc.payload = unsafe.String(unsafe.SliceData(payload), len(payload))
	args = append(args, &r.channel, &sc.epoch, &sc.payload)
	for i := range sc.ws {
		args = append(args, &sc.ws[i].value, &sc.ws[i].ms)
	}
	sc.cmd = *redis.NewCmd(ctx, args...)
	return &sc.cmd
}

// setScriptHash is setScript's SHA1, as an argument go-redis can take by pointer.
var setScriptHash = setScript.Hash()

// setCall is one call of the write script with the strings and numbers its arguments
// point to, in one allocation for a lone write (most writes) besides its keys, epoch
// candidate and message: go-redis writes *string and *int64 arguments as it writes
// string and int64 ones, and boxing a pointer allocates nothing, where boxing a
// string, a []byte or an int64 does. Nothing writes to it once built.
type setCall struct {
	cmd      redis.Cmd
	args     [12]any // the arguments of a lone write
	ws       []setCallWrite
	w1       [1]setCallWrite
	k1       [1]string
	epoch    string // the epoch candidate (see scripts.go)
	epochBuf [16]byte
	payload  string // the message's payload
}

// setCallWrite is one write's part of a setCall.
type setCallWrite struct {
	key, lease string // the value key and its lease key
	value      string // the framed value ("" for a delete)
	ms         int64  // its TTL in milliseconds, or deleteTTL
}

// Channel returns the invalidation channel every node publishes on.
func (r *Redis) Channel() string { return r.channel }

// Client returns node idx's client.
func (r *Redis) Client(idx int) redis.UniversalClient { return (*r.nodes.Load())[idx].c }

// Breaker returns the state of node idx's circuit breaker; on a Cluster, the worst
// state among its masters' (open, then half-open, then closed).
func (r *Redis) Breaker(idx int) gobreaker.State {
	n, err := r.node(idx)
	if err != nil {
		return gobreaker.StateClosed
	}
	worst := n.cb.State()
	n.masters.Range(func(_, b any) bool {
		worst = worse(worst, b.(*gobreaker.CircuitBreaker[struct{}]).State())
		return true
	})
	return worst
}

func worse(a, b gobreaker.State) gobreaker.State {
	rank := func(s gobreaker.State) int {
		switch s {
		case gobreaker.StateOpen:
			return 2
		case gobreaker.StateHalfOpen:
			return 1
		}
		return 0
	}
	if rank(b) > rank(a) {
		return b
	}
	return a
}

// Addr returns the address node idx's client dials (a Cluster's seed addresses,
// comma-separated), or "" if the client's type does not tell.
func (r *Redis) Addr(idx int) string {
	switch c := r.Client(idx).(type) {
	case *redis.Client:
		return c.Options().Addr
	case *redis.ClusterClient:
		return strings.Join(c.Options().Addrs, ",")
	}
	return ""
}

func newEpoch() string { return strconv.FormatUint(rand.Uint64(), 36) }

// Item is one key of a batch, with the node that owns it.
type Item struct {
	Key  string
	Node int
	Val  []byte // GetMany: the bytes found (nil on a miss); FillMany: the bytes to store
	Err  error  // GetMany: ErrMiss, or the error reaching the node
	// Overwrite makes FillMany replace what is stored (undecodable bytes) rather
	// than fill only an absent key.
	Overwrite bool
	// LeaseMany, FillLeasedMany: the lease token, and the outcome of LeaseMany.
	Token string
	State LeaseState
	// Ref is the caller's own, untouched: which of its items this is.
	Ref int
}

// GetMany looks up items on their nodes: one round trip per node (MGET on a
// standalone node, a pipeline of GETs on a Cluster, which splits it by slot owner),
// the nodes in parallel. Results are written into the items; got, if not nil, is
// called with each node's items as soon as they have their results, in the goroutine
// that read them (concurrently for different nodes), so that the caller's work on
// one node's values overlaps the round trips to the others. Every item is passed to
// got exactly once before GetMany returns.
func (r *Redis) GetMany(ctx context.Context, items []Item, got func([]*Item)) {
	r.perNodeThen(ctx, items, got, func(ctx context.Context, n *node, batch []*Item) error {
		if batch = r.unblocked(n, batch); len(batch) == 0 {
			return nil
		}
		if !n.cluster {
			cmd := r.mget(ctx, batch)
			if err := n.c.Process(ctx, cmd); err != nil {
				return err
			}
			vals := cmd.Val()
			for i, it := range batch {
				switch v := vals[i].(type) {
				case string:
					it.Val, it.Err = unsafeBytes(v), nil // a reply nothing else holds: see unsafeBytes
					if IsPlaceholder(it.Val) {
						it.Val, it.Err = nil, ErrMiss
					}
				default: // nil: a miss
					it.Err = ErrMiss
				}
			}
			return nil
		}
		cmds := make([]*redis.StringCmd, len(batch))
		_, err := n.c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, it := range batch {
				cmds[i] = p.Get(ctx, r.Key(it.Key))
			}
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		for i, it := range batch {
			b, err := cmds[i].Bytes()
			switch {
			case err == nil && IsPlaceholder(b):
				it.Err = ErrMiss
			case err == nil:
				it.Val, it.Err = b, nil
			case errors.Is(err, redis.Nil):
				it.Err = ErrMiss
			default:
				it.Err = err
			}
		}
		return nil
	})
}

// mget is MGET of batch's keys, built with three allocations whatever their number:
// the Redis keys share one buffer, and the arguments point to them (go-redis writes a
// *string argument as a string; boxing a pointer allocates nothing).
func (r *Redis) mget(ctx context.Context, batch []*Item) *redis.SliceCmd {
	size := 0
	for _, it := range batch {
		size += len(r.prefix) + len(it.Key) + 1
	}
	buf := make([]byte, 0, size) // never grows: the keys' strings point into it
	keys := make([]string, len(batch))
	args := make([]any, 1+len(batch))
	args[0] = "mget"
	for i, it := range batch {
		start := len(buf)
		buf = append(append(append(buf, r.prefix...), it.Key...), '}')
		keys[i] = unsafe.String(&buf[start], len(buf)-start)
		args[1+i] = &keys[i]
	}
	return redis.NewSliceCmd(ctx, args...)
}

// FillMany stores each item's Val with SET NX PX ttls[i] (SET PX if the item is
// marked Overwrite), one pipeline per node, the nodes in parallel. Per-item errors
// are written into the items.
func (r *Redis) FillMany(ctx context.Context, items []Item, ttl func(i int) time.Duration) {
	pos := make(map[*Item]int, len(items))
	for i := range items {
		pos[&items[i]] = i
	}
	r.perNode(ctx, items, func(ctx context.Context, n *node, batch []*Item) error {
		cmds := make([]redis.Cmder, len(batch))
		_, err := n.c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, it := range batch {
				if it.Overwrite {
					cmds[i] = p.Set(ctx, r.Key(it.Key), it.Val, ttl(pos[it]))
				} else {
					cmds[i] = p.SetNX(ctx, r.Key(it.Key), it.Val, ttl(pos[it]))
				}
			}
			return nil
		})
		for i, it := range batch {
			it.Err = cmds[i].Err()
		}
		return err
	})
}

// perNode groups items by node and runs fn once per node, concurrently, each under
// the per-call timeout. A node-level error is recorded on each of its items, and
// returned once per node (per master of a Cluster), with one error for all the
// items whose node index names no node.
func (r *Redis) perNode(ctx context.Context, items []Item, fn func(context.Context, *node, []*Item) error) []error {
	return r.perNodeThen(ctx, items, nil, fn)
}

// perNodeThen is perNode, calling then (if not nil) with each node's items once fn
// has run for them (and their errors are set), in the goroutine that ran fn, and
// with the items that name no node before it waits for the others.
func (r *Redis) perNodeThen(ctx context.Context, items []Item, then func([]*Item), fn func(context.Context, *node, []*Item) error) []error {
	nodes := *r.nodes.Load()
	type group struct {
		idx    int
		master string // a Cluster is split by master, each behind its own breaker
	}
	// Each group's items in one backing array, sized by a first pass: no slice grows.
	gs := make([]group, len(items))
	sizes := make(map[group]int)
	var noNode []int
	var noNodeItems []*Item
	for i := range items {
		it := &items[i]
		n, err := r.node(it.Node)
		if err != nil {
			it.Err = err
			noNode = append(noNode, it.Node)
			noNodeItems = append(noNodeItems, it)
			gs[i].idx = -1
			continue
		}
		gs[i] = group{it.Node, r.master(ctx, n, it.Key)}
		sizes[gs[i]]++
	}
	backing := make([]*Item, 0, len(items))
	groups := make(map[group][]*Item, len(sizes))
	for g, size := range sizes {
		groups[g] = backing[len(backing) : len(backing) : len(backing)+size]
		backing = backing[:len(backing)+size]
	}
	for i := range items {
		if g := gs[i]; g.idx >= 0 {
			groups[g] = append(groups[g], &items[i])
		}
	}
	var errs []error
	if len(noNode) > 0 {
		errs = append(errs, fmt.Errorf("remote batch: %d keys of node indexes %v: %w", len(noNode), noNode, errNoNode))
	}
	var (
		wg sync.WaitGroup
		mu sync.Mutex // protects errs
	)
	run := func(g group, batch []*Item) {
		n := nodes[g.idx]
		ctx, cancel := context.WithTimeout(ctx, r.timeout)
		defer cancel()
		if err := r.do(ctx, n, g.master, func() error { return fn(ctx, n, batch) }); err != nil {
			err = fmt.Errorf("remote batch of %d keys on %s: %w", len(batch), n.name, err)
			for _, it := range batch {
				it.Err = err
			}
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}
		if then != nil {
			then(batch)
		}
	}
	// One group runs in this goroutine, the others each in its own: the caller's
	// stack has already grown to what a call needs, a new goroutine's has not.
	var last group
	inline := false
	for g, batch := range groups {
		if !inline {
			last, inline = g, true
			continue
		}
		wg.Add(1)
		r.workers.Go(func() {
			defer wg.Done()
			run(g, batch)
		})
	}
	if then != nil && len(noNodeItems) > 0 {
		then(noNodeItems)
	}
	if inline {
		run(last, groups[last])
	}
	wg.Wait()
	return errs
}

// Del deletes keys and publishes their invalidation: one script per owning node (per
// key on a Cluster), the nodes in parallel. On a standalone node the script goes
// through the node's pipeline, as Sets do: deletes and sets that queue behind a busy
// node share one script call and one message. payload builds the message for the
// keys of one node (with those of the writes it shares a call with). It returns an
// error naming every node where the delete could not be confirmed, one per node
// rather than per key. The errors are collected per node,
// not deduplicated by comparing them: an error of an uncomparable type (a struct
// holding a slice) would make == or a map key panic.
func (r *Redis) Del(ctx context.Context, items []Item, payload func(keys []string) []byte) error {
	errs := r.perNode(ctx, items, func(ctx context.Context, n *node, batch []*Item) error {
		if !n.cluster {
			// Through the node's pipeline: while other writes are in flight, these
			// join theirs in one script call and one message.
			ws := make([]write, len(batch))
			wp := make([]*write, len(batch))
			for i, it := range batch {
				ws[i] = write{key: it.Key, ms: deleteTTL, payload: payload}
				wp[i] = &ws[i]
			}
			return n.p.apply(ctx, wp)
		}
		keys := make([]string, len(batch))
		for i, it := range batch {
			keys[i] = it.Key
		}
		return r.delOn(ctx, n, keys, payload)
	})
	missed := make(map[int][]string)
	for _, it := range items {
		if it.Err != nil {
			if n, err := r.node(it.Node); err == nil {
				r.remember(n, it.Key)
				missed[it.Node] = append(missed[it.Node], it.Key)
			}
		}
	}
	for idx, keys := range missed {
		if herr := r.hintMiss(ctx, idx, keys); herr != nil {
			errs = append(errs, herr)
		}
	}
	return errors.Join(errs...)
}
