// Package postgres is the archiver's store for several archiver replicas sharing one
// database: events and terms in tables partitioned by day (retention drops partitions),
// (seq, ts) as the key with ON CONFLICT DO NOTHING (a redelivery, a replica's duplicate or a
// rebuild stores an event once), and span summaries merged by one atomic upsert, so
// concurrent archivers never lose each other's updates.
package postgres

import (
	"context"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/mailpulse/mailpulse/services/archiver/store"
)

// Store is the PostgreSQL store.
type Store struct {
	pool *pgxpool.Pool

	mu   sync.Mutex
	days map[int]bool // partitions known to exist
}

var _ store.Store = (*Store)(nil)

// Open connects to the database of dsn and creates the schema if needed.
func Open(ctx context.Context, dsn string) (*Store, error) {
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	s := &Store{pool: pool, days: map[int]bool{}}
	_, err = pool.Exec(ctx, schema)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: create schema: %w", err)
	}
	return s, nil
}

// Close closes the pool.
func (s *Store) Close() error { s.pool.Close(); return nil }

// Stats implements store.Store.
func (s *Store) Stats(ctx context.Context) (store.Stats, error) {
	var st store.Stats
	err := s.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM events), pg_database_size(current_database()),
		(SELECT count(*) FROM pg_inherits WHERE inhparent = 'events'::regclass)`).Scan(&st.Events, &st.Bytes, &st.Partitions)
	return st, err
}
