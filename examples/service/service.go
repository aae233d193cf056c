// Package service is a small HTTP JSON API for users over PostgreSQL, with tiered as
// its read-through cache: the way a replicated service is meant to use it.
//
//	GET    /users/{id}       one user (Cache.Get; the Loader is one SELECT)
//	GET    /users?ids=1,2,3  many users (Cache.GetMany; the BatchLoader is one SELECT ... = ANY($1))
//	PUT    /users/{id}       insert or update, then Cache.Delete
//	DELETE /users/{id}       delete, then Cache.Delete
//	GET    /stats            tiered's Stats, the shared tier's nodes, the database's query counters
//	GET    /healthz          Cache.Ping and a database ping
//
// cmd/usersvc runs it; cmd/demo runs three replicas of it over three Redis nodes
// and drives them with the load generator in package loadgen.
package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tieredcache/tiered"
)

// Config configures a Service.
type Config struct {
	Store      *Store
	RedisAddrs []string // the shared tier's nodes ("host:port"); none: near-caches only, which a write through one replica does not invalidate in the others
	Name       string   // this replica's name in /stats
	Logger     *slog.Logger

	// Cache settings; zero selects tiered's default.
	TTL      time.Duration // in Redis (default 10 min)
	LocalTTL time.Duration // in the near-cache (default 1 min)
	Timeout  time.Duration // bounds each call to a Redis node (default 100 ms)
}

// Service serves the API. Its methods are safe for concurrent use.
type Service struct {
	store *Store
	cache *tiered.Cache[User]
	log   *slog.Logger
	name  string

	requests     atomic.Uint64 // HTTP requests served
	deleteErrors atomic.Uint64 // Cache.Delete errors after a committed write
}

// New returns a Service over cfg.Store with a tiered cache in front of it. Close
// releases the cache; the Store's pool stays the caller's.
func New(cfg Config) (*Service, error) {
	if cfg.Store == nil {
		return nil, errors.New("service: Config.Store is nil")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Service{store: cfg.Store, log: cfg.Logger, name: cfg.Name}
	cache, err := tiered.New(tiered.Options[User]{
		// Get's misses: one SELECT per key (and one per key across the whole fleet,
		// however many replicas miss it at once: tiered's leases).
		Loader: tiered.LoaderFunc[User](s.load),
		// GetMany's misses: one SELECT ... WHERE id = ANY($1) for all of them.
		BatchLoader: tiered.BatchLoaderFunc[User](s.loadMany),
		Addrs:       cfg.RedisAddrs,
		// One namespace per table, so that services sharing Redis nodes (or tests
		// with tables of their own) never read each other's keys.
		Namespace: "usersvc:" + cfg.Store.Table(),
		TTL:       cfg.TTL,
		LocalTTL:  cfg.LocalTTL,
		Timeout:   cfg.Timeout,
		Logger:    cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	s.cache = cache
	return s, nil
}

// Close closes the cache: the Redis clients, subscriptions and goroutines it owns.
func (s *Service) Close() error { return s.cache.Close() }

// key is the cache key of a user. It is made from the parsed id, never from the raw
// path or query text: "/users/042" and "/users/42" are one row, and two cache keys
// for one row would let a write delete one while the other stays stale.
func key(id int64) string { return strconv.FormatInt(id, 10) }

func parseID(s string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, fmt.Errorf("id %q: want a positive integer", s)
	}
	return id, nil
}

// load is the Loader: one SELECT. No row is tiered.ErrNotFound, which tiered caches
// as an absence for NegativeTTL, so a missing id does not cost a query per request.
func (s *Service) load(ctx context.Context, k string) (User, error) {
	id, err := parseID(k)
	if err != nil {
		return User{}, err
	}
	u, err := s.store.User(ctx, id)
	if errors.Is(err, ErrNoUser) {
		return User{}, tiered.ErrNotFound
	}
	return u, err
}

// loadMany is the BatchLoader: one SELECT for every key GetMany must load. Keys left
// out of the map are absent at the source (negative-cached like ErrNotFound).
func (s *Service) loadMany(ctx context.Context, keys []string) (map[string]User, error) {
	ids := make([]int64, 0, len(keys))
	for _, k := range keys {
		id, err := parseID(k)
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	rows, err := s.store.Users(ctx, ids)
	if err != nil {
		return nil, err
	}
	out := make(map[string]User, len(rows))
	for id, u := range rows {
		out[key(id)] = u
	}
	return out, nil
}

// Handler returns the API's routes.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /users/{id}", s.getUser)
	mux.HandleFunc("GET /users", s.getUsers)
	mux.HandleFunc("PUT /users/{id}", s.putUser)
	mux.HandleFunc("DELETE /users/{id}", s.deleteUser)
	mux.HandleFunc("GET /stats", s.stats)
	mux.HandleFunc("GET /healthz", s.healthz)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		mux.ServeHTTP(w, r)
	})
}

func (s *Service) getUser(w http.ResponseWriter, r *http.Request) {
	id, err := parseID(r.PathValue("id"))
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	u, err := s.cache.Get(r.Context(), key(id))
	switch {
	case errors.Is(err, tiered.ErrNotFound):
		writeError(w, http.StatusNotFound, ErrNoUser)
	case err != nil:
		s.serverError(w, r, "get user", err)
	default:
		writeJSON(w, http.StatusOK, u)
	}
}

// maxBatch bounds the ids of one GET /users.
const maxBatch = 1000

// UsersResponse is the body of GET /users?ids=...: the users found, in the order
// asked (each id once), and the ids that have no user.
type UsersResponse struct {
	Users   []User  `json:"users"`
	Missing []int64 `json:"missing"`
}

func (s *Service) getUsers(w http.ResponseWriter, r *http.Request) {
	raw := r.URL.Query().Get("ids")
	if raw == "" {
		writeError(w, http.StatusBadRequest, errors.New("want ?ids=1,2,3"))
		return
	}
	parts := strings.Split(raw, ",")
	if len(parts) > maxBatch {
		writeError(w, http.StatusBadRequest, fmt.Errorf("at most %d ids", maxBatch))
		return
	}
	ids := make([]int64, 0, len(parts))
	keys := make([]string, 0, len(parts))
	seen := make(map[int64]bool, len(parts))
	for _, p := range parts {
		id, err := parseID(p)
		if err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
			keys = append(keys, key(id))
		}
	}
	found, err := s.cache.GetMany(r.Context(), keys)
	if err != nil {
		s.serverError(w, r, "get users", err)
		return
	}
	resp := UsersResponse{Users: make([]User, 0, len(found)), Missing: []int64{}}
	for i, k := range keys {
		if u, ok := found[k]; ok {
			resp.Users = append(resp.Users, u)
		} else {
			resp.Missing = append(resp.Missing, ids[i])
		}
	}
	writeJSON(w, http.StatusOK, resp)
}

// PutRequest is the body of PUT /users/{id}.
type PutRequest struct {
	Name  string `json:"name"`
	Email string `json:"email"`
}

// InvalidationHeader is set to "pending" on a write's response when the write was
// committed but the cache could not confirm the delete of the key (see putUser).
const InvalidationHeader = "X-Cache-Invalidation"

func (s *Service) putUser(w http.ResponseWriter, r *http.Request) {
	id, err := parseID(r.PathValue("id"))
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	var req PutRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("body: %w", err))
		return
	}
	if req.Name == "" || len(req.Name) > 200 || req.Email == "" || len(req.Email) > 320 {
		writeError(w, http.StatusBadRequest, errors.New("want a name (at most 200 bytes) and an email (at most 320)"))
		return
	}
	u, err := s.store.Put(r.Context(), id, req.Name, req.Email)
	if err != nil {
		s.serverError(w, r, "put user", err)
		return
	}
	// The database has committed the row. Now the cache: Delete the key, do not Set
	// the new row. Writing the database and then Set is the classic dual-write race:
	//
	//	writer A: UPDATE ... RETURNING -> version 7 committed
	//	writer B: UPDATE ... RETURNING -> version 8 committed
	//	writer B: Set(v8)
	//	writer A: Set(v7)                 the cache holds v7 until its TTL; the database has v8
	//
	// Deletes have no order to get wrong: whichever lands last, the cache holds
	// nothing and the next read loads the committed row. The remaining race is a read
	// that loaded the old row just before the UPDATE and fills the cache just after
	// the Delete; tiered closes it with leases: a Delete voids the key's lease, and a
	// fill whose lease was voided is written neither to Redis nor to a near-cache.
	// The Delete also publishes an invalidation that evicts the key from every
	// replica's near-cache, and it is read-your-writes in this process.
	s.invalidate(w, r, id)
	writeJSON(w, http.StatusOK, u)
}

func (s *Service) deleteUser(w http.ResponseWriter, r *http.Request) {
	id, err := parseID(r.PathValue("id"))
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	err = s.store.Delete(r.Context(), id)
	if err != nil && !errors.Is(err, ErrNoUser) {
		s.serverError(w, r, "delete user", err)
		return
	}
	// As after a PUT (and even if there was no row: deleting a key the cache does
	// not hold is cheap, and it drops a cached absence or a copy left by a write that
	// bypassed the service).
	s.invalidate(w, r, id)
	if errors.Is(err, ErrNoUser) {
		writeError(w, http.StatusNotFound, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// invalidate deletes user id's key from the cache after a committed write.
//
// It runs under a context that the client's going away does not cancel: the write
// is committed whether or not anyone waits for the answer, so the key must go too.
//
// An error here does not undo the write, and the handler still answers success:
// the row is committed, and the client must not retry a write that succeeded.
// What the error means: the key's Redis node did not confirm the delete (it is
// down, hung or unreachable), and no invalidation was published. tiered has
// already evicted the key from this process's near-cache; it remembers the key,
// does not read it from that node until it is deleted there, and deletes it
// (publishing its invalidation) when the node answers again, at a health-check tick
// (Options.HealthCheck). Until then other replicas that reach the node may serve
// the row as it was before the write (the demo measures this window). The memory
// is this process's: if it exits before the node answers, a node that comes back
// with its data (it was hung or partitioned, not restarted) serves the old row to
// the other replicas until its TTL. So the error is logged, counted in /stats
// (cache_delete_errors) and flagged on the response (X-Cache-Invalidation:
// pending): alert on the counter. Retrying the Delete is always safe (it is
// idempotent); a service that must not depend on this process surviving keeps the
// key in a durable outbox and retries until it succeeds.
func (s *Service) invalidate(w http.ResponseWriter, r *http.Request, id int64) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 2*time.Second)
	defer cancel()
	if err := s.cache.Delete(ctx, key(id)); err != nil {
		s.deleteErrors.Add(1)
		s.log.ErrorContext(ctx, "cache delete failed after a committed write; tiered replays it when the node answers",
			"id", id, "method", r.Method, "err", err)
		w.Header().Set(InvalidationHeader, "pending") // before the caller writes the status
	}
}

// Stats is the body of GET /stats.
type Stats struct {
	Replica           string       `json:"replica"`
	Requests          uint64       `json:"requests"`            // HTTP requests served
	CacheDeleteErrors uint64       `json:"cache_delete_errors"` // Cache.Delete errors after a committed write
	DB                StoreStats   `json:"db"`
	Cache             tiered.Stats `json:"cache"`
	Nodes             []NodeStats  `json:"nodes"`
}

// NodeStats is one Redis node as this replica sees it (tiered.NodeStatus).
type NodeStats struct {
	Name         string `json:"name"`
	Breaker      string `json:"breaker"`    // closed, half-open or open
	Subscribed   bool   `json:"subscribed"` // its invalidations arrive: its keys may be served from the near-cache
	MissedWrites int    `json:"missed_writes"`
}

// Stats returns what GET /stats serves.
func (s *Service) Stats() Stats {
	st := Stats{
		Replica:           s.name,
		Requests:          s.requests.Load(),
		CacheDeleteErrors: s.deleteErrors.Load(),
		DB:                s.store.Stats(),
		Cache:             s.cache.Stats(),
		Nodes:             []NodeStats{},
	}
	for _, n := range s.cache.Nodes() {
		st.Nodes = append(st.Nodes, NodeStats{Name: n.Name, Breaker: n.Breaker.String(), Subscribed: n.Subscribed, MissedWrites: n.MissedWrites})
	}
	return st
}

func (s *Service) stats(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.Stats())
}

// Health is the body of GET /healthz.
type Health struct {
	Status string `json:"status"`          // "ok", "degraded" (the cache's shared tier is not all there) or "down" (the database is not)
	DB     string `json:"db,omitempty"`    // the database's error
	Cache  string `json:"cache,omitempty"` // Cache.Ping's error
}

// healthz answers 200 while the database answers, with status "degraded" if some
// Redis node does not answer or its invalidations are not confirmed (Cache.Ping),
// and 503 when the database does not answer. A Redis outage does not make the
// replica unready on purpose: the cache fails open (the database answers what
// Redis cannot), and a readiness probe that failed on it would take every replica
// out of service at once, turning a cache outage into a full one.
func (s *Service) healthz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), time.Second)
	defer cancel()
	var h Health
	code := http.StatusOK
	if err := s.store.Ping(ctx); err != nil {
		h.DB, code = err.Error(), http.StatusServiceUnavailable
	}
	if err := s.cache.Ping(ctx); err != nil {
		h.Cache = err.Error()
	}
	switch {
	case h.DB != "":
		h.Status = "down"
	case h.Cache != "":
		h.Status = "degraded"
	default:
		h.Status = "ok"
	}
	writeJSON(w, code, h)
}

func (s *Service) serverError(w http.ResponseWriter, r *http.Request, what string, err error) {
	if r.Context().Err() != nil { // the client went away
		return
	}
	s.log.ErrorContext(r.Context(), what, "path", r.URL.Path, "err", err)
	writeError(w, http.StatusInternalServerError, fmt.Errorf("%s: %w", what, err))
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"error": err.Error()})
}
