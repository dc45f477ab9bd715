package sqlite

import (
	"context"
	"fmt"
	"time"

	"github.com/mailpulse/mailpulse/services/archiver/store"
	"github.com/mailpulse/mailpulse/shared/metric"
)

// WriteSnapshots implements store.Store.
func (s *Store) WriteSnapshots(ctx context.Context, snaps []store.SnapshotRecord) error {
	if len(snaps) == 0 {
		return nil
	}
	if err := store.CheckSnapshots(snaps); err != nil {
		return err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	st, err := tx.PrepareContext(ctx, `INSERT OR IGNORE INTO snapshots(seq, ts, source, body) VALUES(?,?,?,?)`)
	if err != nil {
		return err
	}
	defer st.Close()
	for _, r := range snaps {
		b, err := r.Snapshot.Marshal()
		if err != nil {
			return err
		}
		if _, err := st.ExecContext(ctx, int64(r.Seq), r.Snapshot.Time.UnixNano(), r.Snapshot.Source, b); err != nil {
			return fmt.Errorf("store snapshot %d: %w", r.Seq, err)
		}
	}
	return tx.Commit()
}

// Snapshots implements store.Store. Parts of a split snapshot are stored as they came, one
// row each, and put back together here (metric.Merge).
func (s *Store) Snapshots(ctx context.Context, from, to time.Time, source string, limit int) ([]metric.Snapshot, error) {
	q := `SELECT body FROM snapshots WHERE ts BETWEEN ? AND ?`
	args := []any{store.Nanos(from), store.Nanos(to)}
	if source != "" {
		q, args = q+` AND source = ?`, append(args, source)
	}
	rows, err := s.r.QueryContext(ctx, q+` ORDER BY ts, seq LIMIT ?`, append(args, limit)...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []metric.Snapshot
	for rows.Next() {
		var b []byte
		if err := rows.Scan(&b); err != nil {
			return nil, err
		}
		snap, err := metric.Unmarshal(b)
		if err != nil {
			continue
		}
		out = append(out, snap)
	}
	return metric.Merge(out), rows.Err()
}
