package postgres

import (
	"context"
	"strconv"
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
	seqs, tss, srcs, bodies := make([]int64, len(snaps)), make([]int64, len(snaps)), make([]string, len(snaps)), make([][]byte, len(snaps))
	for i, r := range snaps {
		b, err := r.Snapshot.Marshal()
		if err != nil {
			return err
		}
		seqs[i], tss[i], srcs[i], bodies[i] = int64(r.Seq), r.Snapshot.Time.UnixNano(), r.Snapshot.Source, b
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO snapshots (seq, ts, source, body) SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bytea[]) ON CONFLICT DO NOTHING`, seqs, tss, srcs, bodies)
	return err
}

// Snapshots implements store.Store. Parts of a split snapshot are stored as they came, one
// row each, and put back together here (metric.Merge).
func (s *Store) Snapshots(ctx context.Context, from, to time.Time, source string, limit int) ([]metric.Snapshot, error) {
	q := `SELECT body FROM snapshots WHERE ts BETWEEN $1 AND $2`
	args := []any{store.Nanos(from), store.Nanos(to)}
	if source != "" {
		q, args = q+` AND source = $3`, append(args, source)
	}
	args = append(args, limit)
	rows, err := s.pool.Query(ctx, q+` ORDER BY ts, seq LIMIT $`+strconv.Itoa(len(args)), args...)
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
		if snap, err := metric.Unmarshal(b); err == nil {
			out = append(out, snap)
		}
	}
	return metric.Merge(out), rows.Err()
}
