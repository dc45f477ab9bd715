package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// createSchema creates the tables that are not per day: the dictionary, span summaries and
// metric snapshots. The day partitions are made by ensureDay as events arrive.
func createSchema(ctx context.Context, db *sql.DB) error {
	for _, q := range []string{
		`CREATE TABLE IF NOT EXISTS dict(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)`,
		`CREATE TABLE IF NOT EXISTS spans(
			span TEXT PRIMARY KEY, src INTEGER, kind INTEGER, start_ts INTEGER, end_ts INTEGER, duration INTEGER,
			remote_ip TEXT, queue_ids TEXT, from_addr TEXT, to_addrs TEXT, outcome INTEGER, events INTEGER, day INTEGER)`,
		`CREATE INDEX IF NOT EXISTS spans_day ON spans(day)`,
		`CREATE INDEX IF NOT EXISTS spans_start ON spans(start_ts)`,
		// Metric snapshots: one per source every few seconds, small; retention deletes rows.
		`CREATE TABLE IF NOT EXISTS snapshots(seq INTEGER PRIMARY KEY, ts INTEGER NOT NULL, source TEXT NOT NULL, body BLOB NOT NULL)`,
		`CREATE INDEX IF NOT EXISTS snapshots_ts ON snapshots(ts)`,
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return err
		}
	}
	return nil
}

// schemaVersion is kept in PRAGMA user_version. Version 2 put the time into the term index.
const schemaVersion = 2

func checkVersion(ctx context.Context, db *sql.DB) error {
	var v int
	if err := db.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&v); err != nil {
		return err
	}
	var tables int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE type='table' AND name LIKE 'ev_%'`).Scan(&tables); err != nil {
		return err
	}
	switch {
	case v == schemaVersion:
		return nil
	case v == 0 && tables == 0: // new file
		_, err := db.ExecContext(ctx, fmt.Sprintf(`PRAGMA user_version = %d`, schemaVersion))
		return err
	}
	return fmt.Errorf("history schema version %d, this mailpulse needs %d: move the file away and let the history be rebuilt from the log", v, schemaVersion)
}

func (s *Store) partitions(ctx context.Context, db *sql.DB) ([]int, error) {
	rows, err := db.QueryContext(ctx, `SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 'ev_%'`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []int
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return nil, err
		}
		if d, err := strconv.Atoi(strings.TrimPrefix(name, "ev_")); err == nil {
			out = append(out, d)
		}
	}
	sort.Ints(out)
	return out, rows.Err()
}

func dayOf(t time.Time) int {
	y, m, d := t.UTC().Date()
	return y*10000 + int(m)*100 + d
}

// tsecOf is the second within the day of a time in ns.
func tsecOf(ns int64, day int) int64 {
	return (ns - dayStart(day).UnixNano()) / int64(time.Second)
}

func dayStart(day int) time.Time {
	return time.Date(day/10000, time.Month(day/100%100), day%100, 0, 0, 0, 0, time.UTC)
}

func (s *Store) ensureDay(ctx context.Context, tx *sql.Tx, day int) error {
	d := strconv.Itoa(day)
	for _, q := range []string{
		`CREATE TABLE IF NOT EXISTS ev_` + d + `(seq INTEGER PRIMARY KEY, ts INTEGER NOT NULL, typ INTEGER NOT NULL,
			lvl INTEGER NOT NULL, src INTEGER NOT NULL, span TEXT, id TEXT NOT NULL, data BLOB)`,
		`CREATE INDEX IF NOT EXISTS ev_` + d + `_typ ON ev_` + d + `(typ, ts)`,
		`CREATE INDEX IF NOT EXISTS ev_` + d + `_ts ON ev_` + d + `(ts)`,
		`CREATE INDEX IF NOT EXISTS ev_` + d + `_span ON ev_` + d + `(span) WHERE span IS NOT NULL`,
		// tsec (seconds within the day, 3 bytes) lets a term lookup be a range scan of a time
		// window instead of a set of the whole day.
		`CREATE TABLE IF NOT EXISTS terms_` + d + `(term INTEGER NOT NULL, tsec INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY(term, tsec, seq)) WITHOUT ROWID`,
	} {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("create partition %d: %w", day, err)
		}
	}
	return nil
}

// missing reports whether any of the tables is absent from the schema as db sees it now.
// Readers call it after a query on a day's partition failed, rather than reading the
// error's text: retention drops whole days while queries run, and a day that is gone has
// nothing to read. Any failure of the check itself reports false, so that the caller
// returns its own, more telling error.
func missing(ctx context.Context, db *sql.DB, tables ...string) bool {
	args := make([]any, len(tables))
	for i, t := range tables {
		args[i] = t
	}
	var n int
	err := db.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE type='table' AND name IN (`+placeholders(len(tables))+`)`, args...).Scan(&n)
	return err == nil && n < len(tables)
}
