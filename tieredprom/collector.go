package tieredprom

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tieredcache/tiered"
)

// Source is what a Collector reads at each scrape: a *tiered.Cache[V] of any V.
type Source interface {
	Stats() tiered.Stats
	Nodes() []tiered.NodeStatus
}

// statCounter maps one field of tiered.Stats to a counter.
type statCounter struct {
	field string // the tiered.Stats field (for the tests and the reader)
	name  string // without the namespace
	help  string
	value func(*tiered.Stats) uint64
}

// statCounters are the Stats fields exposed as counters at each scrape. The others
// are exposed by the Recorder's per-node families (same counts, by node):
//
//	InvalidationsSent      invalidations_sent_total{node}
//	InvalidationsReceived  invalidations_received_total{node}
//	KeysInvalidated        invalidation_keys_received_total{node}
//	BreakerOpens           breaker_transitions_total{node,state="open"}
//	Flushes*               node_flushes_total{node,cause}
//	WritesReplayed         missed_writes_replayed_total{node}
//	NodesCleared           nodes_cleared_total{node}
//
// and DeliveryLagMax and DeliveryLagMean are left out: invalidation_lag_seconds is
// their histogram.
var statCounters = []statCounter{
	{"LocalHits", "near_hits_total", "Gets and GetMany keys answered by the near-cache.",
		func(s *tiered.Stats) uint64 { return s.LocalHits }},
	{"LocalMisses", "near_misses_total", "Gets and GetMany keys the near-cache did not answer (they went on to the shared tier or the Loader).",
		func(s *tiered.Stats) uint64 { return s.LocalMisses }},
	{"RemoteHits", "shared_hits_total", "Near-cache misses answered by the shared tier (Redis).",
		func(s *tiered.Stats) uint64 { return s.RemoteHits }},
	{"RemoteMisses", "shared_misses_total", "Near-cache misses for which the shared tier had no value.",
		func(s *tiered.Stats) uint64 { return s.RemoteMisses }},
	{"RemoteErrors", "shared_errors_total", "Shared-tier reads or writes that failed or timed out (a read then fell through to the Loader).",
		func(s *tiered.Stats) uint64 { return s.RemoteErrors }},
	{"DecodeErrors", "decode_errors_total", "Values in the shared tier that did not decode: treated as misses, never cached locally.",
		func(s *tiered.Stats) uint64 { return s.DecodeErrors }},
	{"Loads", "loads_total", "Keys loaded from the source of truth: Loader calls, and keys passed to the BatchLoader.",
		func(s *tiered.Stats) uint64 { return s.Loads }},
	{"LoadErrors", "load_errors_total", "Loads that failed with an error other than ErrNotFound (panics included); never cached.",
		func(s *tiered.Stats) uint64 { return s.LoadErrors }},
	{"NotFound", "load_not_found_total", "Loads that found the key absent at the source (ErrNotFound); the absence is cached for NegativeTTL.",
		func(s *tiered.Stats) uint64 { return s.NotFound }},
	{"Oversize", "oversize_values_total", "Loaded values larger than MaxValueSize: returned, not cached.",
		func(s *tiered.Stats) uint64 { return s.Oversize }},
	{"LeaseWaits", "lease_waits_total", "Loads that waited for another process's lease on their key.",
		func(s *tiered.Stats) uint64 { return s.LeaseWaits }},
	{"LeaseTimeouts", "lease_timeouts_total", "Lease waits that gave up after LeaseTTL and loaded without writing Redis.",
		func(s *tiered.Stats) uint64 { return s.LeaseTimeouts }},
	{"LeasesLost", "leases_lost_total", "Loads whose lease a write or delete voided: their value was not stored.",
		func(s *tiered.Stats) uint64 { return s.LeasesLost }},
	{"FillNotices", "lease_fill_notices_total", "Lease waits woken by the holder's fill notice or a write, rather than by the fallback poll.",
		func(s *tiered.Stats) uint64 { return s.FillNotices }},
	{"Refreshes", "refreshes_total", "Refresh-ahead reloads that won the key's lease and called the Loader.",
		func(s *tiered.Stats) uint64 { return s.Refreshes }},
	{"RefreshesSkipped", "refreshes_skipped_total", "Refresh-ahead reloads not queued because the refresh workers were saturated.",
		func(s *tiered.Stats) uint64 { return s.RefreshesSkipped }},
	{"LogsSuppressed", "logs_suppressed_total", "Warnings about a failing node left out of the log (at most one per node per second is logged).",
		func(s *tiered.Stats) uint64 { return s.LogsSuppressed }},
	{"SubscriptionsLost", "subscriptions_lost_total", "Times a node's invalidation subscription was lost: its keys bypassed the near-cache until it was re-established.",
		func(s *tiered.Stats) uint64 { return s.SubscriptionsLost }},
	{"NodesAdded", "nodes_added_total", "Nodes added to the shared tier by AddNode.",
		func(s *tiered.Stats) uint64 { return s.NodesAdded }},
	{"NodesRemoved", "nodes_removed_total", "Nodes removed from the shared tier by RemoveNode.",
		func(s *tiered.Stats) uint64 { return s.NodesRemoved }},
}

// scrapeDescs describe the metrics a Collector builds at each scrape.
type scrapeDescs struct {
	stats []*prometheus.Desc // by statCounters index

	up, since, confirmed, breaker, missed, overflowed, member, seq, info *prometheus.Desc
}

func newScrapeDescs(ns string, constLabels prometheus.Labels) scrapeDescs {
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(ns, "", name), help, labels, constLabels)
	}
	d := scrapeDescs{
		up: desc("node_up",
			"1 if this process's invalidation subscription to the node is confirmed (its keys are served from the near-cache), 0 if not.", "node"),
		since: desc("node_subscription_changed_timestamp_seconds",
			"When node_up last changed (or the subscriber started, if it never has), in seconds since the Unix epoch.", "node"),
		confirmed: desc("node_confirmed_timestamp_seconds",
			"When the node's invalidations were last confirmed (Options.MaxStaleness), in seconds since the Unix epoch: "+
				"its keys are served from the near-cache only until MaxStaleness after it. Absent before the first confirmation.", "node"),
		breaker: desc("node_breaker_state",
			"State of the node's circuit breaker: 1 for the current state (closed, half-open or open), 0 for the others. "+
				"On a Redis Cluster, the worst among its masters'.", "node", "state"),
		missed: desc("node_missed_writes",
			"Keys of Sets and Deletes that could not be confirmed on the node and are not replayed yet; those keys are not read there until they are.", "node"),
		overflowed: desc("node_missed_writes_overflowed",
			"1 if the node's missed writes exceeded MissedDeletes: none of its keys is read until the node is cleared.", "node"),
		member: desc("node_member",
			"1 if the node is on the ring, 0 if it was removed by RemoveNode and is still in its handoff.", "node"),
		seq: desc("node_last_sequence",
			"Sequence number of the last invalidation message received from the node, within its epoch (see node_info); 0 before the first.", "node"),
		info: desc("node_info",
			"Always 1: the node's address (a Cluster's seed addresses, comma-separated) and the epoch of its last invalidation message.",
			"node", "addr", "epoch"),
	}
	for _, sc := range statCounters {
		d.stats = append(d.stats, desc(sc.name, sc.help))
	}
	return d
}

func (d *scrapeDescs) all() []*prometheus.Desc {
	return append([]*prometheus.Desc{d.up, d.since, d.confirmed, d.breaker, d.missed, d.overflowed, d.member, d.seq, d.info}, d.stats...)
}

// Collector returns the prometheus.Collector of the cache src, whose Options.Recorder
// is m: it collects m's histograms and per-node counters, and at each scrape reads
// src.Stats() into counters and src.Nodes() into per-node gauges. Register it once
// (prometheus.MustRegister(m.Collector(cache))). A nil src collects m's metrics alone.
//
// The per-node counters of every node that src.Nodes() lists are exposed from the
// first scrape, at 0 until the node's first event. A node removed by RemoveNode keeps
// its counters; its gauges go when its handoff ends.
func (m *Metrics) Collector(src Source) prometheus.Collector {
	return &collector{m: m, src: src}
}

type collector struct {
	m   *Metrics
	src Source
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, f := range c.m.families() {
		f.Describe(ch)
	}
	if c.src != nil {
		for _, d := range c.m.descs.all() {
			ch <- d
		}
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	var nodes []tiered.NodeStatus
	if c.src != nil {
		nodes = c.src.Nodes()
		for _, n := range nodes {
			c.m.node(n.Name) // its per-node counters, at 0 until its first event
		}
	}
	for _, f := range c.m.families() {
		f.Collect(ch)
	}
	if c.src == nil {
		return
	}
	d := &c.m.descs
	st := c.src.Stats()
	for i, sc := range statCounters {
		send(ch, d.stats[i], prometheus.CounterValue, float64(sc.value(&st)))
	}
	seen := make(map[string]bool, len(nodes))
	for _, n := range nodes {
		if seen[n.Name] { // names are unique on a ring; never send a duplicate series
			continue
		}
		seen[n.Name] = true
		name := labelValue(n.Name)
		send(ch, d.up, prometheus.GaugeValue, bool01(n.Subscribed), name)
		if !n.Since.IsZero() {
			send(ch, d.since, prometheus.GaugeValue, float64(n.Since.UnixNano())/1e9, name)
		}
		if !n.Confirmed.IsZero() {
			send(ch, d.confirmed, prometheus.GaugeValue, float64(n.Confirmed.UnixNano())/1e9, name)
		}
		for s := range breakerCount {
			state := tiered.BreakerState(s)
			send(ch, d.breaker, prometheus.GaugeValue, bool01(n.Breaker == state), name, state.String())
		}
		send(ch, d.missed, prometheus.GaugeValue, float64(n.MissedWrites), name)
		send(ch, d.overflowed, prometheus.GaugeValue, bool01(n.Overflowed), name)
		send(ch, d.member, prometheus.GaugeValue, bool01(n.Member), name)
		send(ch, d.seq, prometheus.GaugeValue, float64(n.Seq), name)
		send(ch, d.info, prometheus.GaugeValue, 1, name, labelValue(n.Addr), labelValue(n.Epoch))
	}
}

// send sends a constant metric, or an invalid one that fails the scrape with err
// rather than a panic.
func send(ch chan<- prometheus.Metric, d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
	m, err := prometheus.NewConstMetric(d, t, v, labels...)
	if err != nil {
		m = prometheus.NewInvalidMetric(d, err)
	}
	ch <- m
}

func bool01(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
