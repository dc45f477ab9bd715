package postgres

import (
	"context"
	"fmt"
	"strconv"
	"time"
)

// schema is every table but the day partitions (ensureDay makes those), created by Open
// under an advisory lock so that archivers starting together do not collide.
const schema = `
		SELECT pg_advisory_lock(7215384719);
		CREATE TABLE IF NOT EXISTS events (
			seq BIGINT NOT NULL, ts BIGINT NOT NULL, typ TEXT NOT NULL, lvl SMALLINT NOT NULL, src TEXT NOT NULL,
			span TEXT, id TEXT NOT NULL, data BYTEA, PRIMARY KEY (seq, ts)) PARTITION BY RANGE (ts);
		CREATE INDEX IF NOT EXISTS events_typ ON events (typ, ts);
		CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
		CREATE INDEX IF NOT EXISTS events_span ON events (span) WHERE span IS NOT NULL;
		CREATE TABLE IF NOT EXISTS terms (term BIGINT NOT NULL, ts BIGINT NOT NULL, seq BIGINT NOT NULL,
			PRIMARY KEY (term, ts, seq)) PARTITION BY RANGE (ts);
		CREATE TABLE IF NOT EXISTS spans (
			span TEXT PRIMARY KEY, src TEXT, kind TEXT, start_ts BIGINT, end_ts BIGINT, duration BIGINT,
			remote_ip TEXT, queue_ids TEXT[] NOT NULL DEFAULT '{}', from_addr TEXT, to_addrs TEXT[] NOT NULL DEFAULT '{}',
			outcome TEXT, events INT NOT NULL DEFAULT 0, day INT NOT NULL);
		CREATE INDEX IF NOT EXISTS spans_day ON spans (day);
		CREATE INDEX IF NOT EXISTS spans_start ON spans (start_ts);
		CREATE TABLE IF NOT EXISTS snapshots (seq BIGINT PRIMARY KEY, ts BIGINT NOT NULL, source TEXT NOT NULL, body BYTEA NOT NULL);
		CREATE INDEX IF NOT EXISTS snapshots_ts ON snapshots (ts);
		SELECT pg_advisory_unlock(7215384719);`

func dayOf(t time.Time) int {
	y, m, d := t.UTC().Date()
	return y*10000 + int(m)*100 + d
}

func dayStart(day int) time.Time {
	return time.Date(day/10000, time.Month(day/100%100), day%100, 0, 0, 0, 0, time.UTC)
}

// ensureDay creates a day's partitions, once, under an advisory lock: concurrent CREATE
// TABLE IF NOT EXISTS by two archivers can still collide.
func (s *Store) ensureDay(ctx context.Context, day int) error {
	s.mu.Lock()
	known := s.days[day]
	s.mu.Unlock()
	if known {
		return nil
	}
	d := strconv.Itoa(day)
	from, to := dayStart(day).UnixNano(), dayStart(day).Add(24*time.Hour).UnixNano()
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	for _, q := range []string{
		`SELECT pg_advisory_xact_lock(7215384720)`,
		fmt.Sprintf(`CREATE TABLE IF NOT EXISTS events_%s PARTITION OF events FOR VALUES FROM (%d) TO (%d)`, d, from, to),
		fmt.Sprintf(`CREATE TABLE IF NOT EXISTS terms_%s PARTITION OF terms FOR VALUES FROM (%d) TO (%d)`, d, from, to),
	} {
		if _, err := tx.Exec(ctx, q); err != nil {
			return fmt.Errorf("create partition %s: %w", d, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	s.days[day] = true
	s.mu.Unlock()
	return nil
}
