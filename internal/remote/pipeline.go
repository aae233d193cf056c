package remote

import (
	"context"
	"errors"
	"math"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tieredcache/tiered/internal/warm"
)

// Pipelined node access ("natural batching", as rueidis does, with no timer).
//
// A command to a node is sent at once, inline in its caller, while fewer than
// maxInflight pipelines are on the wire to the node: a lone call pays no hand-off. A
// command that finds them all busy is queued; when a pipeline returns, whatever has
// queued meanwhile goes out as the next pipeline, one write syscall and one read for
// all of it, in a goroutine of its own. The busier the node, the larger the batches,
// and the fewer syscalls per command. A queue that grows deep while the pipeline is
// out goes out at once as a second one (maxDeep).
//
// Timeouts. A pipeline runs under its own deadline, Timeout after it starts (with
// ContextTimeoutEnabled, the socket deadline), not under a caller's: one caller's
// cancellation must not fail its batch-mates. A queued caller waits for its result or
// its own ctx, whichever comes first. Pipelines in flight end within Timeout, so a
// queued command is sent within Timeout of being queued, and one queued longer than
// Timeout (the node hung while it waited) is failed without being sent: a command
// never waits on a node more than twice Timeout, and a caller never longer than its
// ctx allows.

const (
	// maxInflight bounds the pipelines in flight to one node while its queue is
	// short; each takes one connection from the client's pool. One, as rueidis
	// does: Redis runs one command at a time anyway, and the fewer pipelines, the
	// larger each batch. BenchmarkGetRemoteHitParallel, 64 goroutines, same run
	// against raw go-redis's 23.5-25.4 us/op: 1 in flight 7.2-7.4 us/op, 2:
	// 7.6-7.9, 4: 9.7-11.4, 8: 13.3-13.5, 16: 14.0-14.8.
	maxInflight = 1
	// maxDeep is the pipelines in flight to one node once enough commands wait
	// behind the one in flight (enqueue): as many as the pipelines have been taking
	// lately (a moving average of their sizes), and at least deepMin. A queue that
	// long means callers come back faster than a pipeline turns round; a second
	// pipeline of that size shares its syscalls among as many commands as the first,
	// and where a round trip costs more than the callers' own work (wake-ups on a
	// virtual machine) it overlaps the first's. Interleaved rounds, medians of 4,
	// each set against its baseline in the same rounds: BenchmarkGetRemoteHitParallel
	// (64 goroutines), throughput against raw go-redis's: one in flight 2.06x, two
	// from the first queued command 2.17x, a second from 8 queued 2.25x, from 32
	// queued 2.47-2.56x, from the average 2.69x; but 6 later rounds of one in flight
	// against the average gave 2.39x for both, so at 64 goroutines the gain is within
	// the noise. The benchmarks module's SharedHit (16 goroutines), tiered-1node's time
	// against rueidis's: one in flight 1.10x, from 32 queued 1.08-1.17x, from 8 queued
	// 0.88x, from the average 0.91x (and 0.81x over run.sh's 6 runs, 1.39x in the run
	// before).
	maxDeep = 2
	deepMin = 8
	// maxBatch bounds the commands of one pipeline.
	maxBatch = 256
)

// errQueuedTooLong fails a command that waited for a pipeline longer than Timeout.
var errQueuedTooLong = errors.New("remote: queued longer than the timeout behind a slow node")

type pipeliner struct {
	c       redis.UniversalClient
	timeout time.Duration
	// bounded reports that the client's own timeouts (read, write, dial, pool) are
	// each at most timeout, so a lone call needs no per-call context deadline.
	bounded bool
	// limit is maxInflight for a standalone node. A Cluster client routes each
	// command to its slot's master, and one hung master must not hold up the
	// others' commands behind it, so there every command is sent at once (no limit).
	limit int
	deep  int // the slots a deep queue may take (maxDeep; limit on a Cluster)
	// sets builds the script call that applies writes and publishes their message.
	sets func(context.Context, []*write) *redis.Cmd

	mu       sync.Mutex // protects inflight, queue and batchAvg
	inflight int
	queue    []*queued
	batchAvg int            // 8 x a moving average of the batches' sizes, the last weighing 1/8
	spare    []*queued      // the array of a batch whose pipeline has run, for the queue to reuse
	wg       sync.WaitGroup // the pipelines running in goroutines (Redis.Wait)
	pool     *warm.Pool     // their goroutines, kept warm (nil: new ones)
}

type queued struct {
	cmd  redis.Cmder   // a command, or
	ws   []*write      // writes, sent with the batch's other writes as one script call
	at   time.Time     // when it was queued
	done chan struct{} // receives once when cmd or ws have their result (buffered: 1)
}

// queuedPool recycles the queue entries (with their channels) of the callers that
// waited for their result: under load most calls queue, and an entry and its channel
// are two allocations. An entry whose caller gave up waiting (its ctx ended) is left
// to the garbage collector, since the pipeline will still signal it.
var queuedPool = sync.Pool{New: func() any { return &queued{done: make(chan struct{}, 1)} }}

func newQueued(cmd redis.Cmder, ws []*write) *queued {
	q := queuedPool.Get().(*queued)
	q.cmd, q.ws, q.at = cmd, ws, time.Now()
	return q
}

// await waits for q's result or for ctx to end, and reports which; q is recycled in
// the first case.
func (q *queued) await(ctx context.Context) bool {
	select {
	case <-q.done:
		q.cmd, q.ws = nil, nil
		queuedPool.Put(q)
		return true
	case <-ctx.Done():
		return false
	}
}

// A write is a Set, or the delete of one key of a Delete, on its way to the node. A
// lone one (or a Delete's keys on the node) is sent at once, as one script
// call; writes that queue behind a busy node go out together, as one call of the same
// script over all their keys, with one sequence number and one invalidation message
// for all of them (Redis.setCmd): under concurrent writes the node runs one script
// and publishes one message per batch rather than per write, and every subscriber
// reads one message. A lone write is never held back to wait for company.
type write struct {
	key     string // the user's key
	b       []byte // the framed value (nil for a delete)
	ms      int64  // its TTL, in milliseconds, or deleteTTL: delete the key
	payload func(keys []string) []byte
	err     error     // set when it has its result
	one     [1]*write // this write, as a batch of one (set), without an allocation
}

func newPipeliner(c redis.UniversalClient, timeout time.Duration, sets func(context.Context, []*write) *redis.Cmd) *pipeliner {
	p := &pipeliner{c: c, timeout: timeout, limit: math.MaxInt, deep: math.MaxInt, sets: sets}
	if cl, ok := c.(*redis.Client); ok {
		p.limit, p.deep = maxInflight, maxDeep
		o := cl.Options()
		p.bounded = o.ReadTimeout > 0 && o.ReadTimeout <= timeout && o.WriteTimeout > 0 && o.WriteTimeout <= timeout &&
			o.DialTimeout > 0 && o.DialTimeout <= timeout && o.PoolTimeout > 0 && o.PoolTimeout <= timeout
	}
	return p
}

// do runs cmd on the node, alone or in a pipeline with other callers' commands, and
// returns its error; after an abandoned error (the caller's ctx ended while cmd was
// queued) the caller must not read cmd: it may still be sent, and written to, by a
// pipeline.
func (p *pipeliner) do(ctx context.Context, cmd redis.Cmder) error {
	p.mu.Lock()
	if p.inflight < p.limit {
		p.inflight++
		p.mu.Unlock()
		p.one(ctx, cmd)
		p.next()
		return cmd.Err()
	}
	q := newQueued(cmd, nil)
	p.enqueue(q)
	if q.await(ctx) {
		return cmd.Err()
	}
	return abandoned{ctx.Err()}
}

// enqueue queues q (p.mu held; enqueue releases it). A queue that has grown as
// long as the recent batches while the pipeline is out goes out at once as a second
// pipeline (see maxDeep), rather than waiting for the first to return.
func (p *pipeliner) enqueue(q *queued) {
	p.queue = append(p.queue, q)
	if len(p.queue) < max(deepMin, p.batchAvg/8) || p.inflight >= p.deep {
		p.mu.Unlock()
		return
	}
	p.inflight++
	batch := p.takeLocked()
	p.wg.Add(1)
	p.mu.Unlock()
	p.start(batch)
}

// start runs batch, and what queues behind it, on a pool goroutine; the caller has
// taken its slot and counted it in p.wg.
func (p *pipeliner) start(batch []*queued) {
	p.pool.Go(func() {
		defer p.wg.Done()
		p.runAll(batch)
	})
}

// set applies w on the node, alone at once if the node is idle, or queued and then
// together with the other writes of its batch; the error is as do's.
func (p *pipeliner) set(ctx context.Context, w *write) error {
	w.one[0] = w
	return p.apply(ctx, w.one[:])
}

// apply applies ws (writes to the node: sets, deletes) as set applies one: all in
// the same script call, with the other writes of their batch if they queue. Each
// write's err is set, the same for all; apply returns it, or do's abandoned error.
func (p *pipeliner) apply(ctx context.Context, ws []*write) error {
	p.mu.Lock()
	if p.inflight < p.limit {
		p.inflight++
		p.mu.Unlock()
		p.sendSets(ctx, ws, nil)
		p.next()
		return ws[0].err
	}
	q := newQueued(nil, ws)
	p.enqueue(q)
	if q.await(ctx) {
		return ws[0].err
	}
	return abandoned{ctx.Err()}
}

// sendSets sends ws as one script call, alone, or in pipe (which the caller then
// executes) when pipe is not nil. It returns the call, whose reply finish hands to ws.
func (p *pipeliner) sendSets(ctx context.Context, ws []*write, pipe redis.Pipeliner) *redis.Cmd {
	cmd := p.sets(ctx, ws)
	if pipe != nil {
		_ = pipe.Process(ctx, cmd)
		return cmd
	}
	_ = p.c.Process(ctx, cmd)
	p.finishSets(ctx, cmd, ws)
	return cmd
}

// finishSets hands cmd's result to ws, loading the script into the node first and
// sending the call again if the node did not know it (restarted, or new): the script
// did not run, so nothing is applied twice.
func (p *pipeliner) finishSets(ctx context.Context, cmd *redis.Cmd, ws []*write) {
	if redis.HasErrorPrefix(cmd.Err(), "NOSCRIPT") {
		if err := setScript.Load(ctx, p.c).Err(); err != nil {
			cmd.SetErr(err)
		} else {
			cmd = p.sets(ctx, ws)
			_ = p.c.Process(ctx, cmd)
		}
	}
	for _, w := range ws {
		w.err = cmd.Err()
	}
}

// abandoned is do's error when the caller's ctx ended while its command was queued:
// the command still belongs to a pipeline, so the caller must not read it.
type abandoned struct{ err error }

func (a abandoned) Error() string { return a.err.Error() }
func (a abandoned) Unwrap() error { return a.err }

// one runs a lone command inline, under the caller's ctx (which Redis.call bounds
// by the timeout unless the client's own timeouts do).
func (p *pipeliner) one(ctx context.Context, cmd redis.Cmder) {
	_ = p.c.Process(ctx, cmd)
}

// next is called when a lone command returns: the commands queued meanwhile go out
// as the next pipeline, or the slot is freed.
func (p *pipeliner) next() {
	batch := p.take(nil)
	if batch == nil {
		return
	}
	// Counted while this caller's own call still holds its slot, so the count
	// never falls to zero while a successor is being started.
	p.wg.Add(1)
	p.start(batch)
}

// take returns the next batch of queued commands, keeping the slot for it, or frees
// the slot and returns nil if none is queued. ran, if not nil, is the batch whose
// pipeline has just run: its array becomes the queue's next, rather than a new one
// grown from nothing (an allocation a read under load: BenchmarkGetRemoteHitParallel).
func (p *pipeliner) take(ran []*queued) []*queued {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ran != nil && p.spare == nil {
		clear(ran)
		p.spare = ran[:0]
	}
	if len(p.queue) == 0 {
		p.inflight--
		return nil
	}
	return p.takeLocked()
}

// takeLocked takes the next batch off the queue, which is not empty (p.mu held).
func (p *pipeliner) takeLocked() []*queued {
	n := min(len(p.queue), maxBatch)
	p.batchAvg += n - p.batchAvg/8
	batch := p.queue[:n:n]
	if n == len(p.queue) {
		p.queue, p.spare = p.spare, nil
	} else {
		p.queue = append([]*queued(nil), p.queue[n:]...)
	}
	return batch
}

// runAll sends batch, then whatever queued meanwhile, in this goroutine, until the
// queue is empty: under sustained load one goroutine (whose stack has grown to what
// a pipeline needs) sends pipeline after pipeline, rather than a new one each time.
func (p *pipeliner) runAll(batch []*queued) {
	for ; batch != nil; batch = p.take(batch) {
		p.run(batch)
	}
}

// run sends batch as one pipeline under its own deadline.
func (p *pipeliner) run(batch []*queued) {
	ctx, cancel := context.WithTimeout(context.Background(), p.timeout)
	defer cancel()
	send := batch[:0:0]
	var ws []*write
	for _, q := range batch {
		switch {
		case time.Since(q.at) > p.timeout:
			if q.ws != nil {
				for _, w := range q.ws {
					w.err = errQueuedTooLong
				}
			} else {
				q.cmd.SetErr(errQueuedTooLong)
			}
		case q.ws != nil:
			ws = append(ws, q.ws...)
		default:
			send = append(send, q)
		}
	}
	switch {
	case len(send) == 0 && len(ws) > 0:
		p.sendSets(ctx, ws, nil)
	case len(send) == 1 && len(ws) == 0:
		_ = p.c.Process(ctx, send[0].cmd)
	case len(send) > 0:
		pipe := p.c.Pipeline()
		var sets *redis.Cmd
		if len(ws) > 0 {
			sets = p.sendSets(ctx, ws, pipe)
		}
		for _, q := range send {
			_ = pipe.Process(ctx, q.cmd)
		}
		_, _ = pipe.Exec(ctx) // each command carries its own reply or error
		if sets != nil {
			p.finishSets(ctx, sets, ws)
		}
	}
	for _, q := range batch {
		q.done <- struct{}{} // the last use of q here: its caller may recycle it at once
	}
}

// evalsha runs script through the pipeliner, loading it into the node first if the
// node does not know it (restarted, or new): EVALSHA cannot fall back to EVAL inside a
// pipeline.
func (p *pipeliner) evalsha(ctx context.Context, script *redis.Script, keys []string, args ...any) *redis.Cmd {
	cmdArgs := make([]any, 0, 3+len(keys)+len(args))
	cmdArgs = append(cmdArgs, "evalsha", script.Hash(), len(keys))
	for _, k := range keys {
		cmdArgs = append(cmdArgs, k)
	}
	cmdArgs = append(cmdArgs, args...)
	cmd := redis.NewCmd(ctx, cmdArgs...)
	err := p.do(ctx, cmd)
	var ab abandoned
	if errors.As(err, &ab) {
		return failedCmd(ctx, ab.err) // cmd is still the pipeline's: hand back another
	}
	if err == nil || !redis.HasErrorPrefix(err, "NOSCRIPT") {
		return cmd
	}
	if err := script.Load(ctx, p.c).Err(); err != nil {
		cmd.SetErr(err)
		return cmd
	}
	cmd = redis.NewCmd(ctx, cmdArgs...)
	if err := p.do(ctx, cmd); errors.As(err, &ab) {
		return failedCmd(ctx, ab.err)
	}
	return cmd
}

// failedCmd returns a command that failed with err without being sent.
func failedCmd(ctx context.Context, err error) *redis.Cmd {
	cmd := redis.NewCmd(ctx)
	cmd.SetErr(err)
	return cmd
}
