package service

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// User is one row of the users table, as the API serves it and the cache stores it
// (tiered's default codec stores the exported fields as CBOR, times to the
// nanosecond with their UTC offset).
type User struct {
	ID        int64     `json:"id"`
	Name      string    `json:"name"`
	Email     string    `json:"email"`
	UpdatedAt time.Time `json:"updated_at"`
	Version   int32     `json:"version"` // 1 on insert, +1 on every update
}

// Store is the users table in PostgreSQL: the source of truth behind the cache. It
// counts its queries, so that /stats can show how much of the read load the cache
// takes off the database.
type Store struct {
	pool  *pgxpool.Pool
	name  string // the table's name
	table string // the same, quoted for SQL

	selects    atomic.Uint64 // SELECT queries (Loader and BatchLoader calls)
	selectKeys atomic.Uint64 // ids asked for by those queries
	writes     atomic.Uint64 // INSERT, UPDATE and DELETE statements
}

// StoreStats are a Store's counters since it was created.
type StoreStats struct {
	Selects    uint64 `json:"selects"`     // read queries: one per Loader call, one per BatchLoader call
	SelectKeys uint64 `json:"select_keys"` // ids those queries asked for
	Writes     uint64 `json:"writes"`      // write statements
}

var tableName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// NewStore returns the Store of table in pool. The table name must be a plain
// lower-case SQL identifier (letters, digits, underscores).
func NewStore(pool *pgxpool.Pool, table string) (*Store, error) {
	if !tableName.MatchString(table) {
		return nil, fmt.Errorf("table name %q: want lower-case letters, digits and underscores, at most 63, not starting with a digit", table)
	}
	return &Store{pool: pool, name: table, table: pgx.Identifier{table}.Sanitize()}, nil
}

// Table returns the table's name.
func (s *Store) Table() string { return s.name }

// Stats returns the Store's counters.
func (s *Store) Stats() StoreStats {
	return StoreStats{Selects: s.selects.Load(), SelectKeys: s.selectKeys.Load(), Writes: s.writes.Load()}
}

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.pool.Ping(ctx) }

// CreateTable creates the table if it does not exist. Replicas starting together
// may all run it: concurrent CREATE TABLE IF NOT EXISTS statements can still collide
// in PostgreSQL's catalog (a unique violation on pg_type), so they take an advisory
// lock first and run one at a time.
func (s *Store) CreateTable(ctx context.Context) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('usersvc schema'))`); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+s.table+` (
			id         bigint      PRIMARY KEY,
			name       text        NOT NULL,
			email      text        NOT NULL,
			updated_at timestamptz NOT NULL DEFAULT now(),
			version    integer     NOT NULL DEFAULT 1
		)`)
		return err
	})
}

// DropTable drops the table if it exists.
func (s *Store) DropTable(ctx context.Context) error {
	_, err := s.pool.Exec(ctx, `DROP TABLE IF EXISTS `+s.table)
	return err
}

const columns = `id, name, email, updated_at, version`

func scanUser(row pgx.Row) (User, error) {
	var u User
	err := row.Scan(&u.ID, &u.Name, &u.Email, &u.UpdatedAt, &u.Version)
	return u, err
}

// ErrNoUser is returned by User and Delete when no row has the id.
var ErrNoUser = errors.New("no such user")

// User reads one user: one query.
func (s *Store) User(ctx context.Context, id int64) (User, error) {
	s.selects.Add(1)
	s.selectKeys.Add(1)
	u, err := scanUser(s.pool.QueryRow(ctx, `SELECT `+columns+` FROM `+s.table+` WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return User{}, ErrNoUser
	}
	return u, err
}

// Users reads the users with the given ids, in one query; ids with no row are
// absent from the map.
func (s *Store) Users(ctx context.Context, ids []int64) (map[int64]User, error) {
	s.selects.Add(1)
	s.selectKeys.Add(uint64(len(ids)))
	rows, err := s.pool.Query(ctx, `SELECT `+columns+` FROM `+s.table+` WHERE id = ANY($1)`, ids)
	if err != nil {
		return nil, err
	}
	users, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (User, error) { return scanUser(row) })
	if err != nil {
		return nil, err
	}
	out := make(map[int64]User, len(users))
	for _, u := range users {
		out[u.ID] = u
	}
	return out, nil
}

// Put inserts the user, or updates its name and email and increments its version,
// and returns the committed row.
func (s *Store) Put(ctx context.Context, id int64, name, email string) (User, error) {
	s.writes.Add(1)
	return scanUser(s.pool.QueryRow(ctx, `
		INSERT INTO `+s.table+` AS t (id, name, email) VALUES ($1, $2, $3)
		ON CONFLICT (id) DO UPDATE
		SET name = EXCLUDED.name, email = EXCLUDED.email, updated_at = now(), version = t.version + 1
		RETURNING `+columns, id, name, email))
}

// Delete deletes the user; ErrNoUser if there was none.
func (s *Store) Delete(ctx context.Context, id int64) error {
	s.writes.Add(1)
	tag, err := s.pool.Exec(ctx, `DELETE FROM `+s.table+` WHERE id = $1`, id)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return ErrNoUser
	}
	return nil
}
