package sqlite

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/mailpulse/mailpulse/services/archiver/store"
)

// DropSnapshotsBefore implements store.Store.
func (s *Store) DropSnapshotsBefore(ctx context.Context, t time.Time) (int64, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	res, err := s.w.ExecContext(ctx, `DELETE FROM snapshots WHERE ts < ?`, store.Nanos(t))
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// DropBefore implements store.Store: whole days, then the freed pages go back to the disk.
func (s *Store) DropBefore(ctx context.Context, t time.Time) (int, error) {
	return s.drop(ctx, func(day int) bool { return dayStart(day).Add(24 * time.Hour).Before(t) })
}

// DropAfter implements store.Store.
func (s *Store) DropAfter(ctx context.Context, t time.Time) (int, error) {
	return s.drop(ctx, func(day int) bool { return dayStart(day).After(t) })
}

// vacuumStep is the most pages given back to the disk under one hold of the write lock.
const vacuumStep = 4096

// drop removes the days for which gone is true. Each day is dropped in a transaction of its
// own, and so are the steps of the vacuum after, taking the write lock for each: the
// archiver's writes go on between them. (One pass holding the lock for every day kept the
// history from being written for 8 minutes while it dropped the 14,000 tables of a flood of
// distinct dates.)
func (s *Store) drop(ctx context.Context, gone func(day int) bool) (int, error) {
	days, err := s.partitions(ctx, s.r)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, d := range days {
		if !gone(d) {
			continue
		}
		if err := s.dropDay(ctx, d); err != nil {
			return n, err
		}
		n++
	}
	if n == 0 {
		return 0, nil
	}
	// Until nothing is free, or nothing more is freed (a file made without incremental
	// auto-vacuum frees nothing this way).
	for last := -1; ; {
		free, err := s.vacuumStep(ctx)
		if err != nil || free == 0 || free == last {
			return n, err
		}
		last = free
	}
}

func (s *Store) dropDay(ctx context.Context, day int) (err error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("drop partition %d: %w", day, err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	ds := strconv.Itoa(day)
	for _, q := range []string{`DROP TABLE IF EXISTS ev_` + ds, `DROP TABLE IF EXISTS terms_` + ds, `DELETE FROM spans WHERE day = ` + ds} {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("drop partition %d: %w", day, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("drop partition %d: %w", day, err)
	}
	s.cmu.Lock()
	delete(s.days, day)
	s.cmu.Unlock()
	return nil
}

// vacuumStep gives up to vacuumStep free pages back to the disk, and returns how many
// free pages are left.
func (s *Store) vacuumStep(ctx context.Context) (free int, err error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if _, err := s.w.ExecContext(ctx, `PRAGMA incremental_vacuum(`+strconv.Itoa(vacuumStep)+`)`); err != nil {
		return 0, err
	}
	err = s.w.QueryRowContext(ctx, `PRAGMA freelist_count`).Scan(&free)
	return free, err
}
