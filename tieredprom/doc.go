// Package tieredprom exposes the metrics of a github.com/tieredcache/tiered cache to
// Prometheus. It is a module of its own, so that the cache itself does not depend on
// the Prometheus client.
//
// A service needs these lines:
//
//	m := tieredprom.New(tieredprom.Options{Cache: "users"})
//	users, err := tiered.New(tiered.Options[User]{
//		Addrs:    []string{"redis-0:6379", "redis-1:6379"},
//		Loader:   tiered.LoaderFunc[User](loadUser),
//		Recorder: m,
//	})
//	if err != nil {
//		return err
//	}
//	prometheus.MustRegister(m.Collector(users))
//	http.Handle("/metrics", promhttp.Handler())
//
// New returns a tiered.Recorder that keeps latencies and per-node events as they
// happen; Collector exposes them together with the cache's counters (Cache.Stats) and
// the state of its nodes (Cache.Nodes), both read at each scrape, so that a near-cache
// hit costs nothing more than it did. Every metric carries the constant label cache
// (Options.Cache, default "default"): give each cache of a process its own Metrics,
// with its own Cache, and register each Collector. Names start with Options.Namespace
// (default "tiered"); below it is written <ns>.
//
// # Counters read from Cache.Stats
//
//	<ns>_near_hits_total             Gets and GetMany keys answered by the near-cache
//	<ns>_near_misses_total           ... not answered there
//	<ns>_shared_hits_total           near misses answered by Redis
//	<ns>_shared_misses_total         near misses Redis had no value for
//	<ns>_shared_errors_total         Redis reads or writes that failed or timed out
//	<ns>_decode_errors_total         values in Redis that did not decode
//	<ns>_loads_total                 keys loaded (Loader calls, BatchLoader keys)
//	<ns>_load_errors_total           loads that failed (other than ErrNotFound)
//	<ns>_load_not_found_total        loads that returned ErrNotFound
//	<ns>_oversize_values_total       loaded values over MaxValueSize (not cached)
//	<ns>_lease_waits_total           loads that waited for another process's lease
//	<ns>_lease_timeouts_total        ... and gave up after LeaseTTL
//	<ns>_leases_lost_total           loads whose lease a write voided
//	<ns>_lease_fill_notices_total    lease waits woken by the holder's fill notice
//	<ns>_refreshes_total             refresh-ahead reloads
//	<ns>_refreshes_skipped_total     refreshes not queued (workers saturated)
//	<ns>_logs_suppressed_total       node warnings left out of the log
//	<ns>_subscriptions_lost_total    invalidation subscriptions lost
//	<ns>_nodes_added_total           AddNode calls
//	<ns>_nodes_removed_total         RemoveNode calls
//
// # Recorded as they happen
//
//	<ns>_get_duration_seconds{tier}                 near misses by tier: shared, loader, none (caller's ctx ended)
//	<ns>_get_errors_total{tier}                     near misses that returned an error other than ErrNotFound
//	<ns>_load_duration_seconds{outcome}             Loader calls: ok, not_found, error
//	<ns>_lease_wait_duration_seconds{outcome}       lease waits: filled (another process's fill), loaded (loaded here)
//	<ns>_invalidation_lag_seconds{node}             writer's send to eviction here
//	<ns>_invalidations_sent_total{node}             messages published by this cache's writes
//	<ns>_invalidation_keys_sent_total{node}         ... and their keys
//	<ns>_invalidations_received_total{node}         messages from other processes applied
//	<ns>_invalidation_keys_received_total{node}     ... and the keys they evicted
//	<ns>_node_flushes_total{node,cause}             near-cache flushes of a node: resubscribe, gap, epoch, cleared
//	<ns>_breaker_transitions_total{node,state}      circuit breaker changes: closed, half-open, open
//	<ns>_missed_writes_total{node}                  Sets and Deletes not confirmed on the node
//	<ns>_missed_writes_replayed_total{node}         keys of those deleted there afterwards
//	<ns>_nodes_cleared_total{node}                  clearings of the node's keys (missed writes overflowed)
//
// The Stats fields InvalidationsSent, InvalidationsReceived, KeysInvalidated,
// BreakerOpens, Flushes*, WritesReplayed and NodesCleared are these counters summed
// over their labels, so they are not exposed twice; DeliveryLagMax and
// DeliveryLagMean are left to invalidation_lag_seconds.
//
// Histogram buckets, in seconds (see DefaultGetBuckets and the others, and the
// Options fields that replace them): get and lease wait 50 µs to 5 s, load 100 µs to
// 10 s, invalidation lag 50 µs to 1 s.
//
// # Gauges read from Cache.Nodes
//
//	<ns>_node_up{node}                                      1 while the node's invalidation subscription is confirmed
//	<ns>_node_subscription_changed_timestamp_seconds{node}  when node_up last changed
//	<ns>_node_confirmed_timestamp_seconds{node}             when its invalidations were last confirmed (MaxStaleness)
//	<ns>_node_breaker_state{node,state}                     1 for the breaker's current state, 0 for the others
//	<ns>_node_missed_writes{node}                           keys of missed writes not yet replayed
//	<ns>_node_missed_writes_overflowed{node}                1 if they exceeded MissedDeletes
//	<ns>_node_member{node}                                  0 for a removed node still in its handoff
//	<ns>_node_last_sequence{node}                           sequence number of the last invalidation received
//	<ns>_node_info{node,addr,epoch}                         always 1
//
// Some queries:
//
//	# near-cache hit ratio
//	rate(tiered_near_hits_total[5m]) / (rate(tiered_near_hits_total[5m]) + rate(tiered_near_misses_total[5m]))
//	# p99 of Gets that went to Redis
//	histogram_quantile(0.99, sum by (cache, le) (rate(tiered_get_duration_seconds_bucket{tier="shared"}[5m])))
//	# nodes whose keys bypass the near-cache
//	tiered_node_up == 0
//	# seconds since each node was confirmed: past Options.MaxStaleness (1 s by
//	# default) its keys are read from Redis, not the near-cache (a slow or silent link)
//	time() - tiered_node_confirmed_timestamp_seconds
package tieredprom
