// Package tieredotel exposes the metrics of a github.com/tieredcache/tiered Cache as
// OpenTelemetry instruments. It is a module of its own, so that the cache itself
// depends on no metrics library.
//
// A service creates one Metrics per Cache on its MeterProvider (the one its OTLP or
// Prometheus exporter reads: any go.opentelemetry.io/otel/sdk/metric reader works),
// passes it to the Cache as its Recorder, then observes the Cache:
//
//	m, err := tieredotel.New(provider, tieredotel.Options{Cache: "users"})
//	if err != nil {
//		return err
//	}
//	c, err := tiered.New(tiered.Options[User]{Addrs: addrs, Loader: loadUser, Recorder: m})
//	if err != nil {
//		return err
//	}
//	defer c.Close()
//	reg, err := m.Observe(c)
//	if err != nil {
//		return err
//	}
//	defer reg.Unregister()
//
// As a Recorder the Metrics records, as they happen, what a counter cannot hold:
// latencies and per-node events. Observe registers a callback that reads
// Cache.Stats and Cache.Nodes at each collection, and nothing in between: near-cache
// hits, which cost tens of nanoseconds, are counted by the Cache and read here.
// Observing a Cache whose Recorder is something else still exports every counter and
// gauge below; the histograms and the per-node counters need the Recorder.
//
// # Instruments
//
// Names follow the OpenTelemetry semantic conventions: dotted lowercase under
// "tiered.", units in UCUM ("s", or a count of {things}), no "_total" suffix (a
// Prometheus exporter adds it, and turns dots into underscores:
// tiered.near.hits is tiered_near_hits_total, tiered.get.duration is
// tiered_get_duration_seconds). Every measurement has the attribute tiered.cache
// (Options.Cache); the others are named with each instrument. Most counters by node
// (tiered.node.*) break down a cache-wide total named the same without ".node":
// tiered.node.flushes sums to tiered.flushes.
//
// Histograms (the Recorder), float64 seconds with explicit bucket boundaries advised:
//
//	tiered.get.duration         {tiered.tier, tiered.get.outcome}  Gets and GetMany keys that missed the near-cache; 50µs..5s
//	tiered.load.duration        {tiered.load.outcome}              Loader and BatchLoader calls; 100µs..10s
//	tiered.lease.wait.duration  {tiered.lease.outcome}             waits for another process's lease; 50µs..5s
//	tiered.invalidation.lag     {tiered.node}                      writer's send to eviction here (clocks may skew it); 50µs..1s
//
// tiered.tier is "shared" or "loader" (what answered), or "none" (the caller's ctx
// ended first); the outcomes are "ok", "not_found" or "error" for gets and loads,
// "filled" (another process's fill answered) or "loaded" (the wait ended and this
// process loaded) for lease waits.
//
// Counters (the Recorder), by tiered.node:
//
//	tiered.node.invalidation.sent      {message}     invalidations this cache's writes published
//	tiered.node.invalidation.received  {message}     invalidations from other processes applied
//	tiered.node.flushes                {flush}       near-cache entries of the node dropped, by tiered.flush.cause
//	tiered.node.breaker.transitions    {transition}  circuit breaker changes, by the new tiered.breaker.state
//	tiered.node.writes.missed          {write}       Sets and Deletes not confirmed on the node
//	tiered.node.writes.replayed        {key}         keys deleted there by the replay of missed writes
//	tiered.node.cleared                {clear}       the node's keys all cleared (missed writes overflowed)
//
// Observable counters (Observe, from Stats; see tiered.Stats for each field):
//
//	tiered.near.hits               {get}           LocalHits
//	tiered.near.misses             {get}           LocalMisses
//	tiered.shared.hits             {get}           RemoteHits
//	tiered.shared.misses           {get}           RemoteMisses
//	tiered.shared.errors           {error}         RemoteErrors
//	tiered.shared.decode_errors    {error}         DecodeErrors
//	tiered.breaker.opens           {transition}    BreakerOpens
//	tiered.load.keys               {key}           Loads
//	tiered.load.errors             {error}         LoadErrors
//	tiered.load.not_found          {key}           NotFound
//	tiered.load.oversize           {key}           Oversize
//	tiered.lease.waits             {wait}          LeaseWaits
//	tiered.lease.timeouts          {wait}          LeaseTimeouts
//	tiered.lease.lost              {lease}         LeasesLost
//	tiered.lease.fill_notices      {wait}          FillNotices
//	tiered.refresh.runs            {refresh}       Refreshes
//	tiered.refresh.skipped         {refresh}       RefreshesSkipped
//	tiered.log.suppressed          {log_record}    LogsSuppressed
//	tiered.invalidation.sent       {message}       InvalidationsSent
//	tiered.invalidation.received   {message}       InvalidationsReceived
//	tiered.invalidation.keys       {key}           KeysInvalidated
//	tiered.subscription.lost       {subscription}  SubscriptionsLost
//	tiered.flushes                 {flush}         FlushesResubscribe, FlushesGap, FlushesEpoch, FlushesCleared by tiered.flush.cause
//	tiered.writes.replayed         {key}           WritesReplayed
//	tiered.nodes.cleared           {node}          NodesCleared
//	tiered.nodes.added             {node}          NodesAdded
//	tiered.nodes.removed           {node}          NodesRemoved
//
// Observable gauges (Observe, from Nodes), by tiered.node:
//
//	tiered.node.subscribed         1          1 while its invalidation subscription is confirmed, else 0
//	tiered.node.breaker.state      1          1 for its breaker's current tiered.breaker.state, 0 for the two others
//	tiered.node.writes.pending     {key}      keys of missed writes not yet replayed (NodeStatus.MissedWrites)
//	tiered.node.writes.overflowed  1          1 while they exceed Options.MissedDeletes, else 0
//	tiered.node.sequence           {message}  sequence number of the last invalidation received from it
//	tiered.node.member             1          1 on the ring, 0 removed and still in its handoff
//	tiered.node.confirmation.age   s          time since its invalidations were last confirmed (a float64
//	                                          gauge, absent before the first): past Options.MaxStaleness its
//	                                          keys are read from Redis, not the near-cache
//
// The breaker's state is a set of three points per node, one of them 1, rather than
// a number standing for a state: a dashboard sums or filters them by
// tiered.breaker.state ("closed", "half-open", "open") without a legend.
//
// # Cost
//
// The Recorder methods run on the cache's paths, from many goroutines: their
// attribute sets are built once (per tier and outcome in New, per node on its first
// event) and they allocate nothing.
package tieredotel
