// Package tiered is a two-tier, read-through cache for services that run as many
// replicas: an in-process near-cache in front of a shared tier of Redis nodes, with
// the caller's Loader behind both.
//
// # Tiers
//
//   - The near-cache is ristretto v2, bounded in bytes
//     (Options.LocalMaxCost). A hit costs one hash, one ristretto lookup and three
//     atomic loads, and allocates nothing.
//   - The shared tier is Redis: several standalone nodes spread over a
//     consistent-hash ring (Options.Nodes or Options.Addrs), or one
//     redis.UniversalClient for a single node or a Redis Cluster (Options.Client).
//   - The source of truth is the Loader. The cache never invents values: what it
//     serves was loaded or Set.
//
// Without a shared tier the Cache is a near-cache in front of the Loader; without a
// Loader it holds only what Set stored and a miss is ErrNotFound.
//
// # Read path
//
// Get looks in the near-cache. A key missing there has one flight in this process,
// which every caller that misses it joins, whichever call asked (Get, each key of
// GetMany, a refresh-ahead): the first caller reads the key's owner node; if Redis
// has no value, the flight takes the key's lease (see Leases), so that one process in
// the fleet calls the Loader, and every caller that joined receives the value as soon
// as the Loader returns it; the flight then fills Redis and the near-cache, and a
// caller that misses the key meanwhile is served the same value by the flight, as a
// near hit (TestGetReturnsBeforeFill): a caller waits for the Loader and one round
// trip, not for the fill. Each caller waits under its own ctx; none cancels
// the flight for the others. Absence (ErrNotFound from the Loader) is cached too, for
// Options.NegativeTTL. A shared tier that fails or times out (Options.Timeout) is
// counted in Stats, logged (at most once a second per node) and bypassed: the Loader
// answers. After three consecutive failures a node's circuit breaker opens and its
// calls fail at once for a second. Loader errors are never cached; panics become a
// *PanicError.
//
// GetMany does the same for many keys: it joins the flights already running for its
// keys, starts the others, reads them with one round trip per node, takes the leases
// of those still missing in one pipelined round trip per node, waits for keys other
// processes hold, calls the BatchLoader once for the keys it won, returns their values,
// and then fills them with one pipelined round trip per node, each value only while
// its lease holds.
//
// # Write path
//
// Set writes the owner node and then this process's near-cache; Delete deletes on
// the owner nodes and evicts from this process's near-cache; both publish an
// invalidation (see Coherence). A Get in this process that starts after Set or
// Delete returns sees its effect (read-your-writes), even
// though ristretto applies its own Sets asynchronously and may drop or reorder them:
// every near-cache entry is fenced by a generation that Set and Delete advance, so a
// copy from before the write can never be served, nor stored by a fill that was in
// flight during it.
//
// # Coherence
//
// Every Set and Delete runs one script on the key's owner node that writes (or
// deletes) the key, increments the node's invalidation sequence and publishes a
// message naming the keys, atomically; the writer updates or evicts its own
// near-cache before returning. Every Cache subscribes to every node. What is
// promised:
//
//   - Delivery. When a write returns nil, every other Cache whose subscription to the
//     node is up evicts the key when the message arrives: about a pub/sub delivery
//     time (TestC1InvalidationDelivery logs p50/p99; BenchmarkInvalidationLatency
//     measures it beside a raw PUBLISH). A write whose script fails returns an error
//     and evicts the writer's own copy: it never reports success for a write that may
//     leave stale copies behind.
//   - Fill fencing. A fill (shared-tier read, or Loader call) in flight when the
//     message arrives does not store its result in the near-cache, although the data
//     reply and the message travel on different connections in no particular order.
//   - Lost messages. Pub/sub is at-most-once. A gap in a node's sequence numbers and a
//     new node epoch (a restart that lost its data) flush that node's near-cache
//     entries, in O(1). A lost or silent subscription (noticed at once when the
//     connection fails, within Options.HealthCheck + Options.Timeout when the link
//     goes quiet: 350 ms by default) stops the node's keys from being stored in the
//     near-cache; what is there is served only within MaxStaleness of the node's last
//     confirmation (below), and the re-subscription flushes it.
//   - Confirmed freshness. Each node's subscriber pings on its subscription
//     connection every HealthCheck; the pong of a ping sent at s arrives behind every
//     message the node published before s, so it confirms them. A node's keys are
//     served from the near-cache only while the node is confirmed within
//     Options.MaxStaleness (default 1 s; one atomic load per hit, against the
//     near-cache's 10 ms clock); otherwise they are read from Redis, or the Loader.
//     So no near-cache hit is staler than MaxStaleness plus a clock tick, whatever the
//     link does: silent, slow (TestMaxStalenessOnSlowLink: 700 ms of latency, no read
//     staler than 250 ms with MaxStaleness 250 ms, against 699 ms without the bound),
//     or a subscriber starved of CPU. Also bounded by scheduling: the clock goroutine
//     running late lengthens the bound by as much. On a Redis Cluster (Options.Client)
//     confirmation is per master: a message published on a master reaches the
//     subscription's node over the cluster bus, which the pong does not cross, so
//     every HealthCheck the subscriber also publishes a timestamped confirmation on
//     each master (on a channel of its own; the masters found by reloading the
//     Cluster's slots); it travels the bus link from that master behind every
//     invalidation the master published before it. The Cluster is confirmed at the
//     oldest of its masters' latest confirmations and the pong, so the bound holds
//     on a slow bus link too (TestClusterMaxStalenessOnSlowBus: the bus into the
//     subscription's node slowed by 700 ms, reads at most 140 ms stale with
//     MaxStaleness 250 ms, against 735 ms without the bound), at a cost: one slow or unreachable master
//     stops the near-cache of the whole Cluster's keys until it confirms again
//     (they are read from Redis meanwhile), and each process publishes one message
//     per master per HealthCheck, which the Cluster broadcasts to every node.
//   - Bounded lifetime. In every case a near-cache copy lives at most
//     Options.LocalTTL (default 1 minute), and never longer than the time its value
//     had left in Redis when it was read (the expiry travels with the value).
//
// So a read that starts after a write was acknowledged returns the old value only
// while the message is in flight, and never for more than MaxStaleness; a lost
// subscription stops the node's near-cache within HealthCheck + Timeout, sooner than
// that bound by default.
//
// # Faults and membership
//
//   - A node that is down or hung costs a caller at most Options.Timeout; its circuit
//     breaker then fails calls at once (see Read path). Nothing is an error while the
//     Loader answers.
//   - Missed writes. A Set or Delete that cannot be confirmed on the key's node (down,
//     hung, breaker open, an error reply) returns an error, and the Cache remembers the
//     key (at most Options.MissedDeletes per node). This Cache does not read that key
//     from that node, loading it from the source instead, until it has been deleted
//     there, with its invalidation, which happens as soon as the node answers (within
//     Options.HealthCheck). Past the bound no key of the node is read until the node
//     is cleared of the namespace's keys (SCAN + UNLINK) and a flush message has made
//     every process drop its near-cache entries of the node. Another process may read
//     a value the write should have replaced from the node in the moment between its
//     return and the replay (TestMissedDeletesReplayed measures that window; the
//     replay's invalidation evicts any copy taken then).
//   - Hinted handoff. The missed write is also recorded as a hint on another node of
//     the ring, and every process replays the hints it finds for a node that answers,
//     within a repair interval (HealthCheck), so the delete happens even if the
//     writer has exited or been killed meanwhile (TestHintedHandoffSurvivesWriter:
//     the writer SIGKILLed, the hint replayed by another process 18 ms after the node
//     answered). Close tries the process's own missed writes once more and returns an
//     error naming what it could not (the keys are in the log). What remains: a node
//     unreachable only from the writer, while other processes kept reading it, serves
//     them the old value until a replay reaches it; a hint no other node took (every
//     node unreachable from the writer) lives only in the writer's memory; hints
//     expire after Options.TTL, as the values they would delete do.
//   - Runtime membership. AddNode and RemoveNode change the ring while the Cache
//     serves: about 1/N of the keys move to a new node, a removed node's keys spread
//     over the others. A joining node is cleared of the namespace's keys before it
//     serves (it may hold values from an earlier membership), and this process
//     subscribes to it before routing keys to it. Each process changes its own ring,
//     so for Options.TTL after a change a write of a key that moved also deletes it on
//     its previous owner, publishing there: processes that have not changed yet see
//     the write. A write through a process still on the old membership reaches only
//     the old owner: change membership in every process promptly.
//
// Connections and discovery. A Shared (NewShared) holds the shared tier's
// connections, one client and one pub/sub connection per node, for every Cache of the
// process that names it in Options.Shared, whatever their value types and namespaces
// (TestSharedConnections: five Caches, one pub/sub connection per node). A Cache made
// with Options.Nodes, Client or Addrs has a Shared of its own. The Shared's membership
// is every Cache's: Shared.AddNode, RemoveNode and SetNodes change it (SetNodes
// reconciles to a desired list: adds, removals, and address changes under the same
// name, which keep every key's owner and clear the node's keys before they are read),
// Members lists it. SharedOptions.Discovery keeps it in step with a source, polled:
// DNS (SRV or A/AAAA records) or a DiscoveryFunc (a config file, a registry). A node
// missing from one answer is not removed at once (SharedOptions.RemoveAfter), so a
// flapping source does not move keys back and forth (TestDiscoveryWhileServing).
//
// # Per-call loaders
//
// GetOrLoad takes a loader and a TTL of the call's own, for kinds of keys the Cache's
// Loader does not fit, with Get's guarantees (one flight per key, the lease, fencing):
// one Cache, and one set of connections, serves them all.
//
// # Writing through the cache: the patterns
//
//   - After writing the source of truth, Delete the key; do not Set it. Write-then-Set
//     is a dual write: two writers of one row can commit in one order and Set in the
//     other, leaving every replica serving the older row until the TTL ends. Delete
//     makes the next read load the committed row, and the lease keeps a load that read
//     the row before the Delete from filling Redis after it (invariant C3).
//   - A Set or Delete error after the source committed means the node may still hold
//     the old value. This process remembers the key and deletes it there, with its
//     invalidation, as soon as the node answers (see Faults below): retrying Delete is
//     safe and shortens nothing; report the error (it is in Stats.RemoteErrors and
//     Cache.Nodes' MissedWrites) rather than undo the source's write.
//   - When every Redis node is down, the near-cache answers what it holds until
//     MaxStaleness after each node's last confirmation; then every read goes to the
//     Loader: the source takes the whole load, bounded only by one flight per key per
//     process. Size the source for it, keep Redis highly available (a Redis Cluster,
//     or more ring nodes), or choose availability over freshness with a longer
//     MaxStaleness: the near-cache then keeps answering through the outage.
//
// # Observability
//
// Stats returns the counters; Nodes returns each node's state (breaker, subscription
// and since when, missed writes pending, the last epoch and sequence seen). A Recorder
// (Options.Recorder) receives what counters cannot hold: the latency of each Get that
// missed the near-cache by the tier that answered, of each load by outcome, of lease
// waits, invalidation delivery lag, flushes by cause and breaker transitions, by node.
// Near hits are not reported one by one, so a near hit costs the same with a Recorder
// attached. The modules github.com/tieredcache/tiered/tieredprom and
// github.com/tieredcache/tiered/tieredotel export all of it to Prometheus and
// OpenTelemetry. Every log line about a node names it; go-redis's own lines go to
// stderr unless routed with redis.SetLogger(RedisLogger(logger)).
//
// # Leases
//
// A Get that misses in Redis takes the key's lease on its node before calling the
// Loader (Facebook's memcache leases): other processes missing the same key wait for
// the holder's fill instead of loading too, for at most Options.LeaseTTL (a holder
// that dies is replaced when its lease expires), and a Set or Delete voids the lease,
// so that a Loader result read before the write is never filled into Redis after it.
//
// The lease lives in the value key, as in rueidisaside: the read of a near miss is
// SET key <placeholder> NX GET PX <LeaseTTL>, which returns the value, or takes the
// lease, or finds another holder's placeholder, in one native command (Redis 7.0 or
// later), and the fill is a compare-and-set of the placeholder: a near miss costs two
// round trips (TestNearMissTwoRoundTrips). A waiter marks the holder's placeholder;
// the holder's fill, or its giving up, then publishes the key on the fill channel
// that every process follows, with the filled value when it is at most 16 KiB: the
// waiter returns that value without reading it (or, after a release or a larger
// value, reads the key at once) rather than on a poll (TestLeaseWaiterWokenByFill;
// the poll remains as a fallback).
//
// Commands to one standalone node are pipelined: a lone call is sent at once, and the
// calls that arrive while one is on the wire go out together when it returns, one
// write and one read for all of them (as rueidis does); if as many queue as the recent
// batches held, they go out at once as a second pipeline (TestPipelinerDeepQueue).
// Sets among them go out as one
// script call with one sequence number and one invalidation message for all their
// keys (TestQueuedSetsShareOneMessage); a lone Set is never held back. A call is still
// bounded by Options.Timeout, or twice that if it waited behind a call to a node that
// hung.
//
// With Options.RefreshAhead, a near-cache hit on a value close to its expiry in Redis
// queues a background refresh (bounded workers the Cache owns). The refresh takes the
// key's lease too, only while the value is still close to expiry, so one process in
// the fleet refreshes a key; a Set or Delete during the refresh keeps its result out
// of both tiers; a refresh that fails leaves the old value served until its TTL ends.
//
// GetMany's batch loads take leases too (TestGetManyDeleteDuringBatchLoad,
// TestMultiProcessGetManyOneLoadPerKey).
//
// Out of scope, bounded by TTLs only: writes to Redis or to the source of truth that
// bypass this package (a Loader reading a source updated behind the cache's back
// serves the old value until the copies expire). On a Redis Cluster (Options.Client)
// writes publish without sequence numbers, so a lost message is detected only through
// a lost subscription; a message the cluster bus drops (a bus link that breaks and
// reconnects) is not detected, and the next confirmation from its master does not
// know of it.
//
// # Encoding
//
// Values travel to Redis in a versioned envelope: a header with the codec, the kind
// (value or absence) and the expiry, then the codec's bytes. []byte and string
// values are stored as they are; other types use CBOR unless Options.Codec says
// otherwise (see CBOR for what round-trips: exported fields, times to the nanosecond
// with their offset). Bytes that do not decode (written by another codec, another
// version or another program) are counted in Stats.DecodeErrors, never copied into
// the near-cache, and replaced by a fresh load.
//
// Every tier answers the same value: a loaded or Set value is encoded for Redis and
// decoded again, and that round trip is what the caller receives and the near-cache
// keeps, so a replica that reads the value from Redis decodes exactly what the
// replica that loaded it serves (TestEveryTierAnswersTheSameValue). It costs one
// decode per load or Set, never one per hit. A value the codec cannot encode is an
// error (from Set, or from the Get that loaded it), and New refuses a value type whose
// zero value the codec cannot round-trip.
//
// # Concurrency and lifecycle
//
// A Cache is safe for concurrent use. Close cancels loads in flight, lets the fills of
// values already returned finish (each bounded by Options.Timeout;
// TestCloseLetsFillsFinish), waits for every
// goroutine the Cache started and every call in progress, and is idempotent; calls
// after it return ErrClosed. Values are shared between callers and tiers: do not
// mutate a value after passing it to Set or receiving it from Get.
package tiered
