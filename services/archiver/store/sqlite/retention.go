package sqlite

import (
	"context"
	"fmt"
	"strconv"
	"time"
)

// DropSnapshotsBefore implements store.Store.
func (s *Store) DropSnapshotsBefore(ctx context.Context, t time.Time) (int64, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	res, err := s.w.ExecContext(ctx, `DELETE FROM snapshots WHERE ts < ?`, t.UnixNano())
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// DropBefore implements store.Store: whole days, then the freed pages go back to the disk.
func (s *Store) DropBefore(ctx context.Context, t time.Time) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	days, err := s.partitions(ctx, s.w)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, d := range days {
		if !dayStart(d).Add(24 * time.Hour).Before(t) {
			continue
		}
		ds := strconv.Itoa(d)
		for _, q := range []string{`DROP TABLE IF EXISTS ev_` + ds, `DROP TABLE IF EXISTS terms_` + ds, `DELETE FROM spans WHERE day = ` + ds} {
			if _, err := s.w.ExecContext(ctx, q); err != nil {
				return n, fmt.Errorf("drop partition %d: %w", d, err)
			}
		}
		s.cmu.Lock()
		delete(s.days, d)
		s.cmu.Unlock()
		n++
	}
	if n > 0 {
		if _, err := s.w.ExecContext(ctx, `PRAGMA incremental_vacuum`); err != nil {
			return n, err
		}
	}
	return n, nil
}
