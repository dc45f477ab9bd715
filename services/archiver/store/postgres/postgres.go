// Package postgres is the archiver's store for several archiver replicas sharing one
// database: events and terms in tables partitioned by day (retention drops partitions),
// (seq, ts) as the key with ON CONFLICT DO NOTHING (a redelivery, a replica's duplicate or a
// rebuild stores an event once), and span summaries merged by one atomic upsert, so
// concurrent archivers never lose each other's updates.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/mailpulse/mailpulse/services/archiver/store"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/history"
	"github.com/mailpulse/mailpulse/shared/metric"
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
	_, err = pool.Exec(ctx, `
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
		SELECT pg_advisory_unlock(7215384719);`)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: create schema: %w", err)
	}
	return s, nil
}

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

// Close closes the pool.
func (s *Store) Close() error { s.pool.Close(); return nil }

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

// Write implements store.Store.
func (s *Store) Write(ctx context.Context, recs []store.Record) error {
	if len(recs) == 0 {
		return nil
	}
	for _, r := range recs {
		if err := s.ensureDay(ctx, dayOf(r.Event.CreatedAt)); err != nil {
			return err
		}
	}
	n := len(recs)
	seqs, tss, lvls := make([]int64, n), make([]int64, n), make([]int16, n)
	typs, srcs, ids := make([]string, n), make([]string, n), make([]string, n)
	spans := make([]*string, n)
	datas := make([][]byte, n)
	for i := range recs {
		e := &recs[i].Event
		seqs[i], tss[i], lvls[i] = int64(recs[i].Seq), e.CreatedAt.UnixNano(), int16(e.Level)
		typs[i], srcs[i], ids[i] = e.Type, e.Source, e.ID
		if v := e.Data.Get("spanId").String(); v != "" {
			spans[i] = &v
		}
		if len(e.Data) > 0 {
			datas[i] = e.Data
		}
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback(ctx)
	rows, err := tx.Query(ctx, `
		INSERT INTO events (seq, ts, typ, lvl, src, span, id, data)
		SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::smallint[], $5::text[], $6::text[], $7::text[], $8::bytea[])
		ON CONFLICT DO NOTHING RETURNING seq`, seqs, tss, typs, lvls, srcs, spans, ids, datas)
	if err != nil {
		return fmt.Errorf("insert events: %w", err)
	}
	fresh := map[int64]bool{}
	for rows.Next() {
		var seq int64
		if err := rows.Scan(&seq); err != nil {
			rows.Close()
			return err
		}
		fresh[seq] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("insert events: %w", err)
	}
	var inserted []store.Record
	var tTerms, tTS, tSeq []int64
	for i := range recs {
		if !fresh[int64(recs[i].Seq)] {
			continue // stored before: a redelivery, another replica, a rebuild
		}
		inserted = append(inserted, recs[i])
		for _, t := range store.Terms(&recs[i].Event) {
			tTerms, tTS, tSeq = append(tTerms, t), append(tTS, tss[i]), append(tSeq, seqs[i])
		}
	}
	if len(tTerms) > 0 {
		if _, err := tx.Exec(ctx, `INSERT INTO terms (term, ts, seq) SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) ON CONFLICT DO NOTHING`, tTerms, tTS, tSeq); err != nil {
			return fmt.Errorf("index events: %w", err)
		}
	}
	if err := upsertSpans(ctx, tx, store.SpanUpdates(inserted)); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// upsertSpans merges each update into its span row in one statement, so two archivers
// updating the same span at once both count.
func upsertSpans(ctx context.Context, tx pgx.Tx, ups []store.SpanUpdate) error {
	batch := &pgx.Batch{}
	for _, u := range ups {
		var end *int64
		if !u.End.IsZero() {
			v := u.End.UnixNano()
			end = &v
		}
		queues, to := u.QueueIDs, u.To
		if queues == nil {
			queues = []string{}
		}
		if to == nil {
			to = []string{}
		}
		batch.Queue(`
			INSERT INTO spans AS s (span, src, kind, start_ts, end_ts, duration, remote_ip, queue_ids, from_addr, to_addrs, outcome, events, day)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
			ON CONFLICT (span) DO UPDATE SET
				src = COALESCE(s.src, EXCLUDED.src),
				kind = COALESCE(EXCLUDED.kind, s.kind),
				start_ts = CASE WHEN EXCLUDED.kind IS NOT NULL THEN EXCLUDED.start_ts ELSE LEAST(s.start_ts, EXCLUDED.start_ts) END,
				day = CASE WHEN EXCLUDED.kind IS NOT NULL THEN EXCLUDED.day ELSE s.day END,
				end_ts = COALESCE(EXCLUDED.end_ts, s.end_ts),
				duration = CASE WHEN EXCLUDED.end_ts IS NOT NULL THEN EXCLUDED.duration ELSE s.duration END,
				remote_ip = COALESCE(s.remote_ip, EXCLUDED.remote_ip),
				queue_ids = ARRAY(SELECT DISTINCT unnest(s.queue_ids || EXCLUDED.queue_ids) LIMIT 16),
				from_addr = COALESCE(s.from_addr, EXCLUDED.from_addr),
				to_addrs = ARRAY(SELECT DISTINCT unnest(s.to_addrs || EXCLUDED.to_addrs) LIMIT 64),
				outcome = COALESCE(EXCLUDED.outcome, s.outcome),
				events = s.events + EXCLUDED.events`,
			u.ID, nullable(u.Source), nullable(u.Kind), u.Start.UnixNano(), end, u.Duration, nullable(u.RemoteIP),
			queues, nullable(u.From), to, nullable(u.Outcome), u.Events, dayOf(u.Start))
	}
	if batch.Len() == 0 {
		return nil
	}
	if err := tx.SendBatch(ctx, batch).Close(); err != nil {
		return fmt.Errorf("spans: %w", err)
	}
	return nil
}

// likePattern turns a type pattern (smtp.*, *.connection-start, smtp.conn*) into LIKE.
func likePattern(p string) string {
	if p == "*" {
		return "%"
	}
	if !strings.Contains(p, ".") {
		p += ".*"
	}
	return strings.ReplaceAll(p, "*", "%") // types hold no % or _
}

// Query implements store.Store: the same semantics as the SQLite store (ordered by event
// time then sequence; term-driven queries in one-hour windows).
func (s *Store) Query(ctx context.Context, q history.Query) (history.Page, error) {
	if q.Limit <= 0 || q.Limit > history.MaxLimit {
		q.Limit = history.DefaultLimit
	}
	var cur *history.Cursor
	if q.Cursor != "" {
		c, err := history.DecodeCursor(q.Cursor)
		if err != nil {
			return history.Page{}, fmt.Errorf("%w: %v", store.ErrInvalid, err)
		}
		cur = &c
	}
	var terms []int64
	for _, t := range q.Terms {
		terms = append(terms, store.KeywordTerm(t))
	}
	for k, v := range q.Keys {
		if _, err := strconv.ParseFloat(v, 64); err == nil || v == "true" || v == "false" {
			continue
		}
		terms = append(terms, store.Term(k, v))
	}
	from, to := q.From, q.To
	if to.IsZero() {
		to = time.Now().Add(24 * time.Hour)
	}
	if from.IsZero() {
		from = to.Add(-366 * 24 * time.Hour)
	}
	page := history.Page{Events: []history.Stored{}}
	var last history.Cursor
	// Windows: the whole range at once without terms; one hour at a time with them.
	window := to.Sub(from) + time.Nanosecond
	if len(terms) > 0 {
		window = time.Hour
	}
	lo, hi := from, to
	if cur != nil {
		if q.Desc {
			hi = minTime(hi, time.Unix(0, cur.TS))
		} else {
			lo = maxTime(lo, time.Unix(0, cur.TS))
		}
	}
	for !hi.Before(lo) && len(page.Events) < q.Limit {
		a, b := lo, hi
		if q.Desc {
			a = maxTime(lo, hi.Add(-window+time.Nanosecond))
		} else {
			b = minTime(hi, lo.Add(window-time.Nanosecond))
		}
		for len(page.Events) < q.Limit {
			rows, err := s.queryWindow(ctx, &q, terms, a, b, cur, q.Limit-len(page.Events))
			if err != nil {
				return history.Page{}, err
			}
			for _, r := range rows {
				c := history.Cursor{TS: r.ts, Seq: r.seq}
				cur, last = &c, c
				e := event.Event{ID: r.id, CreatedAt: time.Unix(0, r.ts).UTC(), Type: r.typ, Level: event.Level(r.lvl), Source: r.src, Data: event.Data(r.data)}
				if !store.Matches(&e, &q) {
					continue
				}
				page.Events = append(page.Events, history.NewStored(r.seq, e.AppendJSON(nil)))
				if len(page.Events) == q.Limit {
					break
				}
			}
			if len(rows) == 0 {
				break
			}
		}
		if q.Desc {
			hi = a.Add(-time.Nanosecond)
		} else {
			lo = b.Add(time.Nanosecond)
		}
	}
	if len(page.Events) == q.Limit {
		page.Next = history.EncodeCursor(last)
	}
	return page, nil
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

type row struct {
	seq          uint64
	ts           int64
	typ, src, id string
	lvl          int16
	data         []byte
}

func (s *Store) queryWindow(ctx context.Context, q *history.Query, terms []int64, a, b time.Time, cur *history.Cursor, limit int) ([]row, error) {
	var where []string
	var args []any
	arg := func(v any) string { args = append(args, v); return "$" + strconv.Itoa(len(args)) }
	from := "events e"
	if len(terms) > 0 {
		from = "terms t JOIN events e ON e.seq = t.seq AND e.ts = t.ts"
		where = append(where, "t.term = "+arg(terms[0]), "t.ts BETWEEN "+arg(a.UnixNano())+" AND "+arg(b.UnixNano()))
		for _, t := range terms[1:] {
			where = append(where, "EXISTS (SELECT 1 FROM terms t2 WHERE t2.term = "+arg(t)+" AND t2.ts = e.ts AND t2.seq = e.seq)")
		}
	}
	where = append(where, "e.ts BETWEEN "+arg(a.UnixNano())+" AND "+arg(b.UnixNano()))
	if len(q.Types) > 0 {
		var ors []string
		for _, p := range q.Types {
			ors = append(ors, "e.typ LIKE "+arg(likePattern(p)))
		}
		where = append(where, "("+strings.Join(ors, " OR ")+")")
	}
	if len(q.Sources) > 0 {
		where = append(where, "e.src = ANY("+arg(q.Sources)+")")
	}
	if q.MinLevel != nil {
		where = append(where, "e.lvl >= "+arg(int16(*q.MinLevel)))
	}
	order := "e.ts ASC, e.seq ASC"
	if cur != nil {
		op := ">"
		if q.Desc {
			op = "<"
		}
		where = append(where, "(e.ts, e.seq) "+op+" ("+arg(cur.TS)+", "+arg(int64(cur.Seq))+")")
	}
	if q.Desc {
		order = "e.ts DESC, e.seq DESC"
	}
	sql := "SELECT e.seq, e.ts, e.typ, e.lvl, e.src, e.id, e.data FROM " + from + " WHERE " + strings.Join(where, " AND ") + " ORDER BY " + order + " LIMIT " + arg(limit)
	rows, err := s.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("query: %w", err)
	}
	defer rows.Close()
	var out []row
	for rows.Next() {
		var r row
		var seq int64
		if err := rows.Scan(&seq, &r.ts, &r.typ, &r.lvl, &r.src, &r.id, &r.data); err != nil {
			return nil, err
		}
		r.seq = uint64(seq)
		out = append(out, r)
	}
	return out, rows.Err()
}

// Span implements store.Store.
func (s *Store) Span(ctx context.Context, id string) (history.Span, []history.Stored, error) {
	var (
		src, kind, remote, from, outcome *string
		startTS                          int64
		endTS                            *int64
		duration                         int64
		queues, to                       []string
		events                           int
	)
	err := s.pool.QueryRow(ctx, `SELECT src, kind, start_ts, end_ts, duration, remote_ip, queue_ids, from_addr, to_addrs, outcome, events FROM spans WHERE span = $1`, id).
		Scan(&src, &kind, &startTS, &endTS, &duration, &remote, &queues, &from, &to, &outcome, &events)
	if errors.Is(err, pgx.ErrNoRows) {
		return history.Span{}, nil, store.ErrNotFound
	}
	if err != nil {
		return history.Span{}, nil, err
	}
	str := func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	}
	sort.Strings(queues)
	sort.Strings(to)
	sp := history.Span{ID: id, Source: str(src), Kind: str(kind), Start: time.Unix(0, startTS).UTC(), Duration: duration,
		RemoteIP: str(remote), QueueIDs: queues, From: str(from), To: to, Outcome: str(outcome), Events: events}
	if endTS != nil {
		sp.End = time.Unix(0, *endTS).UTC()
	}
	rows, err := s.pool.Query(ctx, `SELECT seq, ts, typ, lvl, src, id, data FROM events WHERE span = $1 ORDER BY ts, seq`, id)
	if err != nil {
		return history.Span{}, nil, err
	}
	defer rows.Close()
	var out []history.Stored
	for rows.Next() {
		var r row
		var seq int64
		if err := rows.Scan(&seq, &r.ts, &r.typ, &r.lvl, &r.src, &r.id, &r.data); err != nil {
			return history.Span{}, nil, err
		}
		e := event.Event{ID: r.id, CreatedAt: time.Unix(0, r.ts).UTC(), Type: r.typ, Level: event.Level(r.lvl), Source: r.src, Data: event.Data(r.data)}
		out = append(out, history.NewStored(uint64(seq), e.AppendJSON(nil)))
	}
	return sp, out, rows.Err()
}

// Spans implements store.Store.
func (s *Store) Spans(ctx context.Context, q store.SpanQuery) ([]history.Span, int, error) {
	where := []string{"start_ts BETWEEN $1 AND $2"}
	args := []any{q.From.UnixNano(), q.To.UnixNano()}
	if q.Kind != "" {
		args = append(args, q.Kind)
		where = append(where, "kind = $"+strconv.Itoa(len(args)))
	}
	if q.QueueID != "" {
		args = append(args, []string{q.QueueID})
		where = append(where, "queue_ids @> $"+strconv.Itoa(len(args)))
	}
	rows, err := s.pool.Query(ctx, `SELECT span, src, kind, start_ts, end_ts, duration, remote_ip, queue_ids, from_addr, to_addrs, outcome, events
		FROM spans WHERE `+strings.Join(where, " AND ")+` ORDER BY start_ts DESC, span DESC`, args...)
	if err != nil {
		return nil, 0, err
	}
	defer rows.Close()
	str := func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	}
	out := []history.Span{}
	total := 0
	for rows.Next() {
		var (
			id                               string
			src, kind, remote, from, outcome *string
			startTS, duration                int64
			endTS                            *int64
			queues, to                       []string
			events                           int
		)
		if err := rows.Scan(&id, &src, &kind, &startTS, &endTS, &duration, &remote, &queues, &from, &to, &outcome, &events); err != nil {
			return nil, 0, err
		}
		sp := history.Span{ID: id, Source: str(src), Kind: str(kind), Start: time.Unix(0, startTS).UTC(), Duration: duration,
			RemoteIP: str(remote), QueueIDs: queues, From: str(from), To: to, Outcome: str(outcome), Events: events}
		if endTS != nil {
			sp.End = time.Unix(0, *endTS).UTC()
		}
		if !store.SpanMatches(&sp, &q) {
			continue
		}
		if total >= q.Offset && len(out) < q.Limit {
			out = append(out, sp)
		}
		total++
	}
	return out, total, rows.Err()
}

// WriteSnapshots implements store.Store.
func (s *Store) WriteSnapshots(ctx context.Context, snaps []store.SnapshotRecord) error {
	if len(snaps) == 0 {
		return nil
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

// Snapshots implements store.Store.
func (s *Store) Snapshots(ctx context.Context, from, to time.Time, source string, limit int) ([]metric.Snapshot, error) {
	q := `SELECT body FROM snapshots WHERE ts BETWEEN $1 AND $2`
	args := []any{from.UnixNano(), to.UnixNano()}
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
	return out, rows.Err()
}

// DropSnapshotsBefore implements store.Store.
func (s *Store) DropSnapshotsBefore(ctx context.Context, t time.Time) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM snapshots WHERE ts < $1`, t.UnixNano())
	return tag.RowsAffected(), err
}

// Stats implements store.Store.
func (s *Store) Stats(ctx context.Context) (store.Stats, error) {
	var st store.Stats
	err := s.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM events), pg_database_size(current_database()),
		(SELECT count(*) FROM pg_inherits WHERE inhparent = 'events'::regclass)`).Scan(&st.Events, &st.Bytes, &st.Partitions)
	return st, err
}

// DropBefore implements store.Store.
func (s *Store) DropBefore(ctx context.Context, t time.Time) (int, error) {
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
		if !dayStart(d).Add(24 * time.Hour).Before(t) {
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
