package postgres

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/mailpulse/mailpulse/services/archiver/store"
)

// Reset empties the store (every partition, spans, snapshots), for a rebuild from the log.
// No archiver may be writing meanwhile.
func (s *Store) Reset(ctx context.Context) error {
	rows, err := s.pool.Query(ctx, `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent IN ('events'::regclass, 'terms'::regclass)`)
	if err != nil {
		return err
	}
	var parts []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			rows.Close()
			return err
		}
		parts = append(parts, name)
	}
	rows.Close()
	for _, p := range parts {
		if _, err := s.pool.Exec(ctx, `DROP TABLE IF EXISTS `+pgx.Identifier{p}.Sanitize()); err != nil {
			return err
		}
	}
	if _, err := s.pool.Exec(ctx, `TRUNCATE spans, snapshots`); err != nil {
		return err
	}
	s.mu.Lock()
	s.days = map[int]bool{}
	s.mu.Unlock()
	return nil
}

// DropSnapshotsBefore implements store.Store.
func (s *Store) DropSnapshotsBefore(ctx context.Context, t time.Time) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM snapshots WHERE ts < $1`, store.Nanos(t))
	return tag.RowsAffected(), err
}

// DropBefore implements store.Store.
func (s *Store) DropBefore(ctx context.Context, t time.Time) (int, error) {
	return s.drop(ctx, func(day int) bool { return dayStart(day).Add(24 * time.Hour).Before(t) })
}

// DropAfter implements store.Store.
func (s *Store) DropAfter(ctx context.Context, t time.Time) (int, error) {
	return s.drop(ctx, func(day int) bool { return dayStart(day).After(t) })
}

// drop removes the days for which gone is true, each in a statement of its own.
func (s *Store) drop(ctx context.Context, gone func(day int) bool) (int, error) {
	rows, err := s.pool.Query(ctx, `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'events'::regclass`)
	if err != nil {
		return 0, err
	}
	var days []int
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			rows.Close()
			return 0, err
		}
		if d, err := strconv.Atoi(strings.TrimPrefix(name, "events_")); err == nil {
			days = append(days, d)
		}
	}
	rows.Close()
	n := 0
	for _, d := range days {
		if !gone(d) {
			continue
		}
		ds := strconv.Itoa(d)
		if _, err := s.pool.Exec(ctx, `DROP TABLE IF EXISTS events_`+ds+`; DROP TABLE IF EXISTS terms_`+ds+`; DELETE FROM spans WHERE day = `+ds); err != nil {
			return n, fmt.Errorf("drop partition %d: %w", d, err)
		}
		s.mu.Lock()
		delete(s.days, d)
		s.mu.Unlock()
		n++
	}
	return n, nil
}
