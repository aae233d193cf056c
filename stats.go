package tiered

import (
	"sync/atomic"
	"time"
)

// Stats are the cache's counters since New. Every field only grows.
type Stats struct {
	LocalHits    uint64 // Gets and GetMany keys answered by the near-cache (or by a load of the key on its way into it)
	LocalMisses  uint64 // ... that went on to the shared tier
	RemoteHits   uint64 // answered by the shared tier (Redis)
	RemoteMisses uint64 // the shared tier had no value (never counted without a shared tier)
	RemoteErrors uint64 // a shared-tier read or write failed or timed out (the read fell through to the Loader)
	BreakerOpens uint64 // times a node's circuit breaker opened (its calls then fail at once for a while)
	DecodeErrors uint64 // bytes in the shared tier that did not decode: treated as a miss, never cached locally
	Loads        uint64 // Loader calls, and keys passed to the BatchLoader
	LoadErrors   uint64 // Loader failures other than ErrNotFound (including panics); never cached
	NotFound     uint64 // loads that found the key absent at the source (negative-cached)
	Oversize     uint64 // loaded values over MaxValueSize: returned, not cached

	// Leases (see Options.LeaseTTL).
	LeaseWaits    uint64 // loads that waited for another process's lease
	LeaseTimeouts uint64 // ... and gave up after LeaseTTL, loading without writing Redis
	LeasesLost    uint64 // loads whose lease a write or delete voided: their value was not stored
	FillNotices   uint64 // lease waits woken by the holder's fill notice or a write, rather than by the fallback poll

	// Refresh-ahead (see Options.RefreshAhead).
	Refreshes        uint64 // background refreshes that won the key's lease and called the Loader
	RefreshesSkipped uint64 // refreshes not queued because the workers were saturated

	// LogsSuppressed counts warnings about a failing node left out of the log: at
	// most one per node per second is logged.
	LogsSuppressed uint64

	// Coherence (see the package documentation).
	InvalidationsSent     uint64 // writes (Set, Delete per node) whose invalidation was published
	InvalidationsReceived uint64 // messages from other processes applied to the near-cache
	KeysInvalidated       uint64 // keys those messages evicted
	SubscriptionsLost     uint64 // times a node's subscription was lost: its keys bypassed the near-cache until FlushesResubscribe
	FlushesResubscribe    uint64 // node flushes on a (re)subscription, including the first
	FlushesGap            uint64 // node flushes on a gap in a node's sequence (a lost message)
	FlushesEpoch          uint64 // node flushes on a new node epoch (restart or failover)
	FlushesCleared        uint64 // node flushes because a process cleared the node's keys

	// Faults and membership (see Options.MissedDeletes, AddNode, RemoveNode).
	WritesReplayed  uint64 // keys deleted on a node after a Set or Delete there could not be confirmed
	NodesCleared    uint64 // nodes this process cleared of the namespace's keys (missed writes overflowed, or AddNode)
	NodesAdded      uint64
	NodesRemoved    uint64
	DeliveryLagMax  time.Duration // longest writer-to-eviction delay seen (writer's clock to ours)
	DeliveryLagMean time.Duration // mean of the same
}

// hitStripes spreads the near-hit counter over padded cache lines, so that hits on
// different cores do not contend on one atomic.
const hitStripes = 16

type paddedCounter struct {
	n atomic.Uint64
	_ [56]byte
}

type counters struct {
	localHits                                     [hitStripes]paddedCounter
	localMisses, remoteHits, remoteMisses         atomic.Uint64
	remoteErrors, decodeErrors, loads, loadErrors atomic.Uint64
	notFound, oversize, breakerOpens              atomic.Uint64
	leaseWaits, leaseTimeouts, leasesLost         atomic.Uint64
	refreshes, refreshesSkipped                   atomic.Uint64
	logsSuppressed, fillNotices                   atomic.Uint64

	invalidationsSent, invalidationsReceived, keysInvalidated atomic.Uint64
	nodeDowns, flushesResubscribe, flushesGap, flushesEpoch   atomic.Uint64
	flushesCleared, writesReplayed, nodesCleared              atomic.Uint64
	nodesAdded, nodesRemoved                                  atomic.Uint64
	lagSumUs, lagMaxUs                                        atomic.Int64
}

func (s *counters) localHit(h uint64) { s.localHits[h%hitStripes].n.Add(1) }

func (s *counters) snapshot() Stats {
	var hits uint64
	for i := range s.localHits {
		hits += s.localHits[i].n.Load()
	}
	st := Stats{
		LocalHits:    hits,
		LocalMisses:  s.localMisses.Load(),
		RemoteHits:   s.remoteHits.Load(),
		RemoteMisses: s.remoteMisses.Load(),
		RemoteErrors: s.remoteErrors.Load(),
		BreakerOpens: s.breakerOpens.Load(),
		DecodeErrors: s.decodeErrors.Load(),
		Loads:        s.loads.Load(),
		LoadErrors:   s.loadErrors.Load(),
		NotFound:     s.notFound.Load(),
		Oversize:     s.oversize.Load(),

		LeaseWaits:    s.leaseWaits.Load(),
		LeaseTimeouts: s.leaseTimeouts.Load(),
		LeasesLost:    s.leasesLost.Load(),

		Refreshes:        s.refreshes.Load(),
		RefreshesSkipped: s.refreshesSkipped.Load(),
		LogsSuppressed:   s.logsSuppressed.Load(),
		FillNotices:      s.fillNotices.Load(),

		InvalidationsSent:     s.invalidationsSent.Load(),
		InvalidationsReceived: s.invalidationsReceived.Load(),
		KeysInvalidated:       s.keysInvalidated.Load(),
		SubscriptionsLost:     s.nodeDowns.Load(),
		FlushesResubscribe:    s.flushesResubscribe.Load(),
		FlushesGap:            s.flushesGap.Load(),
		FlushesEpoch:          s.flushesEpoch.Load(),
		FlushesCleared:        s.flushesCleared.Load(),
		WritesReplayed:        s.writesReplayed.Load(),
		NodesCleared:          s.nodesCleared.Load(),
		NodesAdded:            s.nodesAdded.Load(),
		NodesRemoved:          s.nodesRemoved.Load(),
		DeliveryLagMax:        time.Duration(s.lagMaxUs.Load()) * time.Microsecond,
	}
	if n := st.InvalidationsReceived; n > 0 {
		st.DeliveryLagMean = time.Duration(s.lagSumUs.Load()/int64(n)) * time.Microsecond
	}
	return st
}
