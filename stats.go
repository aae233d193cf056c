package tiered

import "sync/atomic"

// Stats are the cache's counters since New. Every field only grows.
type Stats struct {
	LocalHits    uint64 // Gets and GetMany keys answered by the near-cache
	LocalMisses  uint64 // ... that went on to the shared tier
	RemoteHits   uint64 // answered by the shared tier (Redis)
	RemoteMisses uint64 // the shared tier had no value
	RemoteErrors uint64 // a shared-tier read or write failed or timed out (the read fell through to the Loader)
	DecodeErrors uint64 // bytes in the shared tier that did not decode: treated as a miss, never cached locally
	Loads        uint64 // Loader calls, and keys passed to the BatchLoader
	LoadErrors   uint64 // Loader failures other than ErrNotFound (including panics); never cached
	NotFound     uint64 // loads that found the key absent at the source (negative-cached)
	Oversize     uint64 // loaded values over MaxValueSize: returned, not cached
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
	notFound, oversize                            atomic.Uint64
}

func (s *counters) localHit(h uint64) { s.localHits[h%hitStripes].n.Add(1) }

func (s *counters) snapshot() Stats {
	var hits uint64
	for i := range s.localHits {
		hits += s.localHits[i].n.Load()
	}
	return Stats{
		LocalHits:    hits,
		LocalMisses:  s.localMisses.Load(),
		RemoteHits:   s.remoteHits.Load(),
		RemoteMisses: s.remoteMisses.Load(),
		RemoteErrors: s.remoteErrors.Load(),
		DecodeErrors: s.decodeErrors.Load(),
		Loads:        s.loads.Load(),
		LoadErrors:   s.loadErrors.Load(),
		NotFound:     s.notFound.Load(),
		Oversize:     s.oversize.Load(),
	}
}
