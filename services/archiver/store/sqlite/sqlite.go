// Package sqlite is the archiver's default store: one SQLite file (pure Go driver
// modernc.org/sqlite, chosen by measurement: see docs/architecture.md), events in one table
// per day so retention drops whole tables, the stream sequence as primary key (idempotent
// writes for free), dictionary ids for types and sources, a hashed term index for keywords
// and key filters, and a span summary table kept as events arrive.
package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	_ "modernc.org/sqlite" // the driver

	"github.com/mailpulse/mailpulse/services/archiver/store"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/history"
	"github.com/mailpulse/mailpulse/shared/metric"
)

// Store is the SQLite store.
type Store struct {
	path string
	w    *sql.DB // the one writer connection
	r    *sql.DB // readers

	wmu sync.Mutex // serializes writers (one SQLite writer at a time anyway)

	cmu   sync.RWMutex // guards the caches; never held across a database call
	days  map[int]bool
	dict  map[string]int64 // "t:"+type, "s:"+source -> id
	names map[int64]string // id -> type or source
}

func (s *Store) name(id int64) string {
	s.cmu.RLock()
	defer s.cmu.RUnlock()
	return s.names[id]
}

var _ store.Store = (*Store)(nil)

const pragmas = "_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=busy_timeout(10000)&_pragma=foreign_keys(OFF)"

// Open opens (creating if needed) the store in the file path.
func Open(ctx context.Context, path string) (*Store, error) {
	w, err := sql.Open("sqlite", "file:"+path+"?"+pragmas+"&_pragma=auto_vacuum(INCREMENTAL)")
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	s := &Store{path: path, w: w, days: map[int]bool{}, dict: map[string]int64{}, names: map[int64]string{}}
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
		if _, err := w.ExecContext(ctx, q); err != nil {
			w.Close()
			return nil, fmt.Errorf("create schema in %s: %w", path, err)
		}
	}
	if err := checkVersion(ctx, w); err != nil {
		w.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	r, err := sql.Open("sqlite", "file:"+path+"?"+pragmas+"&mode=ro")
	if err != nil {
		w.Close()
		return nil, err
	}
	r.SetMaxOpenConns(4)
	s.r = r
	if err := s.load(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
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

func (s *Store) load(ctx context.Context) error {
	rows, err := s.w.QueryContext(ctx, `SELECT id, name FROM dict`)
	if err != nil {
		return err
	}
	for rows.Next() {
		var id int64
		var name string
		if err := rows.Scan(&id, &name); err != nil {
			rows.Close()
			return err
		}
		s.dict[name] = id
		s.names[id] = name[2:]
	}
	rows.Close()
	days, err := s.partitions(ctx, s.w)
	for _, d := range days {
		s.days[d] = true
	}
	return err
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

// SetMaxBytes bounds the file's size (0: no bound). Past it a write fails with SQLite's
// "database or disk is full", as it would on a full disk: the archiver then stores and
// acknowledges nothing until there is room again.
func (s *Store) SetMaxBytes(ctx context.Context, n int64) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var pageSize int64
	if err := s.w.QueryRowContext(ctx, `PRAGMA page_size`).Scan(&pageSize); err != nil {
		return err
	}
	pages := int64(1073741823) // SQLite's maximum
	if n > 0 {
		pages = max(n/pageSize, 1)
	}
	_, err := s.w.ExecContext(ctx, fmt.Sprintf(`PRAGMA max_page_count = %d`, pages))
	return err
}

// Close closes the store.
func (s *Store) Close() error {
	var errs []error
	if s.r != nil {
		errs = append(errs, s.r.Close())
	}
	errs = append(errs, s.w.Close())
	return errors.Join(errs...)
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

// id returns the dictionary id of a type ("t:") or source ("s:"), adding it in tx; ids
// added in tx wait in pending until the commit.
func (s *Store) id(ctx context.Context, tx *sql.Tx, name string, pending map[string]int64) (int64, error) {
	s.cmu.RLock()
	id, ok := s.dict[name]
	s.cmu.RUnlock()
	if ok {
		return id, nil
	}
	if id, ok := pending[name]; ok {
		return id, nil
	}
	res, err := tx.ExecContext(ctx, `INSERT INTO dict(name) VALUES(?)`, name)
	if err != nil {
		return 0, err
	}
	id, err = res.LastInsertId()
	if err != nil {
		return 0, err
	}
	pending[name] = id
	return id, nil
}

// Write implements store.Store.
func (s *Store) Write(ctx context.Context, recs []store.Record) (err error) {
	if len(recs) == 0 {
		return nil
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	// Cache entries made in the transaction join the caches only once it commits.
	newDays := map[int]bool{}
	pending := map[string]int64{}
	defer func() {
		if err != nil {
			return
		}
		s.cmu.Lock()
		defer s.cmu.Unlock()
		for d := range newDays {
			s.days[d] = true
		}
		for n, id := range pending {
			s.dict[n] = id
			s.names[id] = n[2:]
		}
	}()
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	// Group by day; skip what is stored already (one query per day), then insert the rest
	// with multi-row statements: per-statement overhead was most of the cost.
	byDay := map[int][]*store.Record{}
	var order []int
	for i := range recs {
		d := dayOf(recs[i].Event.CreatedAt)
		if _, ok := byDay[d]; !ok {
			order = append(order, d)
		}
		byDay[d] = append(byDay[d], &recs[i])
	}
	var inserted []store.Record
	for _, day := range order {
		s.cmu.RLock()
		known := s.days[day]
		s.cmu.RUnlock()
		if !known && !newDays[day] {
			if err := s.ensureDay(ctx, tx, day); err != nil {
				return err
			}
			newDays[day] = true
		}
		fresh, err := s.notStored(ctx, tx, day, byDay[day])
		if err != nil {
			return err
		}
		if err := s.insertRows(ctx, tx, day, fresh, pending); err != nil {
			return err
		}
		for _, r := range fresh {
			inserted = append(inserted, *r)
		}
	}
	if err := s.upsertSpans(ctx, tx, store.SpanUpdates(inserted), pending); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// notStored returns the records of one day whose sequence is not in the table yet: a
// redelivered or replayed event is stored once.
func (s *Store) notStored(ctx context.Context, tx *sql.Tx, day int, recs []*store.Record) ([]*store.Record, error) {
	have := map[uint64]bool{}
	for i := 0; i < len(recs); i += 500 {
		part := recs[i:min(i+500, len(recs))]
		args := make([]any, len(part))
		for j, r := range part {
			args[j] = int64(r.Seq)
		}
		rows, err := tx.QueryContext(ctx, `SELECT seq FROM ev_`+strconv.Itoa(day)+` WHERE seq IN (`+placeholders(len(part))+`)`, args...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var seq int64
			if err := rows.Scan(&seq); err != nil {
				rows.Close()
				return nil, err
			}
			have[uint64(seq)] = true
		}
		rows.Close()
	}
	out := recs[:0:0]
	for _, r := range recs {
		if !have[r.Seq] {
			have[r.Seq] = true // a batch may hold the same sequence twice
			out = append(out, r)
		}
	}
	return out, nil
}

// insertRows writes events and their terms with multi-row statements.
func (s *Store) insertRows(ctx context.Context, tx *sql.Tx, day int, recs []*store.Record, pending map[string]int64) error {
	d := strconv.Itoa(day)
	const rowsPer = 100
	args := make([]any, 0, rowsPer*8)
	var terms []any
	for i := 0; i < len(recs); i += rowsPer {
		part := recs[i:min(i+rowsPer, len(recs))]
		args = args[:0]
		for _, r := range part {
			e := &r.Event
			typ, err := s.id(ctx, tx, "t:"+e.Type, pending)
			if err != nil {
				return err
			}
			src, err := s.id(ctx, tx, "s:"+e.Source, pending)
			if err != nil {
				return err
			}
			var span any
			if v := e.Data.Get("spanId").String(); v != "" {
				span = v
			}
			var data any
			if len(e.Data) > 0 {
				data = []byte(e.Data)
			}
			args = append(args, int64(r.Seq), e.CreatedAt.UnixNano(), typ, int(e.Level), src, span, e.ID, data)
			tsec := tsecOf(e.CreatedAt.UnixNano(), day)
			for _, t := range store.Terms(e) {
				terms = append(terms, t, tsec, int64(r.Seq))
			}
		}
		q := `INSERT INTO ev_` + d + `(seq, ts, typ, lvl, src, span, id, data) VALUES ` + strings.TrimSuffix(strings.Repeat("(?,?,?,?,?,?,?,?),", len(part)), ",")
		if _, err := tx.ExecContext(ctx, q, args...); err != nil {
			return fmt.Errorf("insert events into %s: %w", d, err)
		}
	}
	for i := 0; i < len(terms); i += 3 * 300 {
		part := terms[i:min(i+3*300, len(terms))]
		q := `INSERT OR IGNORE INTO terms_` + d + `(term, tsec, seq) VALUES ` + strings.TrimSuffix(strings.Repeat("(?,?,?),", len(part)/3), ",")
		if _, err := tx.ExecContext(ctx, q, part...); err != nil {
			return fmt.Errorf("index events in %s: %w", d, err)
		}
	}
	return nil
}

func (s *Store) upsertSpans(ctx context.Context, tx *sql.Tx, ups []store.SpanUpdate, pending map[string]int64) error {
	if len(ups) == 0 {
		return nil
	}
	get, err := tx.PrepareContext(ctx, `SELECT src, kind, start_ts, end_ts, duration, remote_ip, queue_ids, from_addr, to_addrs, outcome, events FROM spans WHERE span = ?`)
	if err != nil {
		return err
	}
	defer get.Close()
	put, err := tx.PrepareContext(ctx, `INSERT OR REPLACE INTO spans(span, src, kind, start_ts, end_ts, duration, remote_ip, queue_ids, from_addr, to_addrs, outcome, events, day) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)`)
	if err != nil {
		return err
	}
	defer put.Close()
	for _, u := range ups {
		var (
			src, kind, outcome, startTS, endTS, duration, events sql.NullInt64
			remote, queues, from, to                             sql.NullString
		)
		err := get.QueryRowContext(ctx, u.ID).Scan(&src, &kind, &startTS, &endTS, &duration, &remote, &queues, &from, &to, &outcome, &events)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		cur := store.SpanUpdate{ID: u.ID}
		if err == nil {
			cur.Source = s.nameIn(src.Int64, pending)
			cur.Kind = s.nameIn(kind.Int64, pending)
			cur.Start = time.Unix(0, startTS.Int64).UTC()
			if endTS.Valid {
				cur.End = time.Unix(0, endTS.Int64).UTC()
			}
			cur.Duration, cur.RemoteIP, cur.From, cur.Events = duration.Int64, remote.String, from.String, int(events.Int64)
			cur.Outcome = s.nameIn(outcome.Int64, pending)
			_ = json.Unmarshal([]byte(queues.String), &cur.QueueIDs)
			_ = json.Unmarshal([]byte(to.String), &cur.To)
		}
		merged := merge(cur, u, err != nil)
		srcID, err := s.id(ctx, tx, "s:"+merged.Source, pending)
		if err != nil {
			return err
		}
		var kindID, outID any
		if merged.Kind != "" {
			if kindID, err = s.id(ctx, tx, "t:"+merged.Kind, pending); err != nil {
				return err
			}
		}
		if merged.Outcome != "" {
			if outID, err = s.id(ctx, tx, "t:"+merged.Outcome, pending); err != nil {
				return err
			}
		}
		var end any
		if !merged.End.IsZero() {
			end = merged.End.UnixNano()
		}
		q, _ := json.Marshal(merged.QueueIDs)
		t, _ := json.Marshal(merged.To)
		if _, err := put.ExecContext(ctx, merged.ID, srcID, kindID, merged.Start.UnixNano(), end, merged.Duration,
			merged.RemoteIP, string(q), merged.From, string(t), outID, merged.Events, dayOf(merged.Start)); err != nil {
			return fmt.Errorf("span %s: %w", u.ID, err)
		}
	}
	return nil
}

// nameIn looks an id up in the caches, then in the ids pending in this transaction.
func (s *Store) nameIn(id int64, pending map[string]int64) string {
	if n := s.name(id); n != "" {
		return n
	}
	for n, pid := range pending {
		if pid == id {
			return n[2:]
		}
	}
	return ""
}

func merge(cur, u store.SpanUpdate, isNew bool) store.SpanUpdate {
	if isNew {
		return u
	}
	if cur.Source == "" {
		cur.Source = u.Source
	}
	if u.Kind != "" {
		cur.Kind, cur.Start = u.Kind, u.Start
	} else if u.Start.Before(cur.Start) {
		cur.Start = u.Start
	}
	if !u.End.IsZero() {
		cur.End, cur.Duration = u.End, u.Duration
	}
	if cur.RemoteIP == "" {
		cur.RemoteIP = u.RemoteIP
	}
	if cur.From == "" {
		cur.From = u.From
	}
	for _, q := range u.QueueIDs {
		if !contains(cur.QueueIDs, q) && len(cur.QueueIDs) < 16 {
			cur.QueueIDs = append(cur.QueueIDs, q)
		}
	}
	for _, t := range u.To {
		if !contains(cur.To, t) && len(cur.To) < 64 {
			cur.To = append(cur.To, t)
		}
	}
	if u.Outcome != "" {
		cur.Outcome = u.Outcome
	}
	cur.Events += u.Events
	return cur
}

func contains(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}

// Query implements store.Store. Results are ordered by event time, then log sequence.
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
	s.cmu.RLock()
	var typeIDs, srcIDs []int64
	for name, id := range s.dict {
		switch {
		case strings.HasPrefix(name, "t:") && len(q.Types) > 0:
			for _, p := range q.Types {
				if history.MatchType(p, name[2:]) {
					typeIDs = append(typeIDs, id)
					break
				}
			}
		case strings.HasPrefix(name, "s:") && len(q.Sources) > 0:
			for _, src := range q.Sources {
				if name[2:] == src {
					srcIDs = append(srcIDs, id)
				}
			}
		}
	}
	s.cmu.RUnlock()
	if (len(q.Types) > 0 && len(typeIDs) == 0) || (len(q.Sources) > 0 && len(srcIDs) == 0) {
		return history.Page{Events: []history.Stored{}}, nil
	}
	days, err := s.partitions(ctx, s.r)
	if err != nil {
		return history.Page{}, err
	}
	from, to := q.From, q.To
	if to.IsZero() {
		to = time.Now().Add(24 * time.Hour)
	}
	var sel []int
	for _, d := range days {
		start := dayStart(d)
		if !from.IsZero() && start.Add(24*time.Hour).Before(from) || start.After(to) {
			continue
		}
		sel = append(sel, d)
	}
	if q.Desc {
		sort.Sort(sort.Reverse(sort.IntSlice(sel)))
	}
	page := history.Page{Events: []history.Stored{}}
	var last history.Cursor
	for _, d := range sel {
		for len(page.Events) < q.Limit {
			rows, err := s.queryDay(ctx, d, &q, typeIDs, srcIDs, cur, q.Limit-len(page.Events))
			if err != nil {
				return history.Page{}, err
			}
			got := 0
			for _, row := range rows {
				got++
				c := history.Cursor{TS: row.ts, Seq: row.seq}
				cur, last = &c, c
				e := event.Event{ID: row.id, CreatedAt: time.Unix(0, row.ts).UTC(), Type: s.name(row.typ), Level: event.Level(row.lvl), Source: s.name(row.src), Data: event.Data(row.data)}
				if !store.Matches(&e, &q) {
					continue
				}
				page.Events = append(page.Events, history.NewStored(row.seq, e.AppendJSON(nil)))
				if len(page.Events) == q.Limit {
					break
				}
			}
			if got == 0 {
				break
			}
		}
		if len(page.Events) == q.Limit {
			break
		}
		// The next partition starts over, without the cursor of this one.
		if q.Cursor == "" {
			cur = nil
		}
	}
	if len(page.Events) == q.Limit {
		page.Next = history.EncodeCursor(last)
	}
	return page, nil
}

type row struct {
	seq      uint64
	ts       int64
	typ, src int64
	lvl      int
	id       string
	data     []byte
}

// queryDay reads up to limit candidate rows of one partition, after the cursor. A query
// with a keyword or an indexed key filter is driven from the term index, one time window at
// a time (newest first for desc): each window is a range scan of (term, tsec), so a common
// term costs the rows of an hour, not of the day. Windows partition time, so ordering by
// (ts, seq) inside each keeps the whole result in order.
func (s *Store) queryDay(ctx context.Context, day int, q *history.Query, typeIDs, srcIDs []int64, cur *history.Cursor, limit int) ([]row, error) {
	var terms []int64
	for _, t := range q.Terms {
		terms = append(terms, store.KeywordTerm(t))
	}
	for k, v := range q.Keys {
		if _, err := strconv.ParseFloat(v, 64); err == nil || v == "true" || v == "false" {
			continue // numbers and booleans are not indexed: checked row by row
		}
		terms = append(terms, store.Term(k, v))
	}
	if len(terms) == 0 {
		return s.queryRange(ctx, day, q, typeIDs, srcIDs, cur, limit, nil, -1, -1)
	}
	// The window of the whole query within this day, in seconds of the day.
	lo, hi := int64(0), int64(86399)
	if !q.From.IsZero() {
		lo = max(lo, tsecOf(q.From.UnixNano(), day))
	}
	if !q.To.IsZero() {
		hi = min(hi, tsecOf(q.To.UnixNano(), day))
	}
	if cur != nil {
		if q.Desc {
			hi = min(hi, tsecOf(cur.TS, day))
		} else {
			lo = max(lo, tsecOf(cur.TS, day))
		}
	}
	const window = 3600
	var out []row
	for w := 0; lo <= hi && len(out) < limit; w++ {
		var a, b int64
		if q.Desc {
			a, b = max(lo, hi-window+1), hi
			hi = a - 1
		} else {
			a, b = lo, min(hi, lo+window-1)
			lo = b + 1
		}
		rows, err := s.queryRange(ctx, day, q, typeIDs, srcIDs, cur, limit-len(out), terms, a, b)
		if err != nil {
			return nil, err
		}
		out = append(out, rows...)
	}
	return out, nil
}

// queryRange runs one query on a partition. With terms, the first drives the scan between
// the seconds a and b of the day; the others are point lookups.
func (s *Store) queryRange(ctx context.Context, day int, q *history.Query, typeIDs, srcIDs []int64, cur *history.Cursor, limit int, terms []int64, a, b int64) ([]row, error) {
	d := strconv.Itoa(day)
	var where []string
	var args []any
	from := "ev_" + d + " e"
	if len(terms) > 0 {
		from = "terms_" + d + " t JOIN ev_" + d + " e ON e.seq = t.seq"
		where, args = append(where, "t.term = ?", "t.tsec BETWEEN ? AND ?"), append(args, terms[0], a, b)
		for _, t := range terms[1:] {
			where = append(where, "EXISTS (SELECT 1 FROM terms_"+d+" t2 WHERE t2.term = ? AND t2.tsec = t.tsec AND t2.seq = e.seq)")
			args = append(args, t)
		}
	}
	if !q.From.IsZero() {
		where, args = append(where, "e.ts >= ?"), append(args, q.From.UnixNano())
	}
	if !q.To.IsZero() {
		where, args = append(where, "e.ts <= ?"), append(args, q.To.UnixNano())
	}
	if len(typeIDs) > 0 {
		where = append(where, "e.typ IN ("+placeholders(len(typeIDs))+")")
		for _, id := range typeIDs {
			args = append(args, id)
		}
	}
	if len(srcIDs) > 0 {
		where = append(where, "e.src IN ("+placeholders(len(srcIDs))+")")
		for _, id := range srcIDs {
			args = append(args, id)
		}
	}
	if q.MinLevel != nil {
		where, args = append(where, "e.lvl >= ?"), append(args, int(*q.MinLevel))
	}
	order := "e.ts ASC, e.seq ASC"
	if cur != nil {
		op := ">"
		if q.Desc {
			op = "<"
		}
		where, args = append(where, "(e.ts, e.seq) "+op+" (?, ?)"), append(args, cur.TS, int64(cur.Seq))
	}
	if q.Desc {
		order = "e.ts DESC, e.seq DESC"
	}
	sqlq := "SELECT e.seq, e.ts, e.typ, e.lvl, e.src, e.id, e.data FROM " + from
	if len(where) > 0 {
		sqlq += " WHERE " + strings.Join(where, " AND ")
	}
	sqlq += " ORDER BY " + order + " LIMIT ?"
	args = append(args, limit)
	rows, err := s.r.QueryContext(ctx, sqlq, args...)
	if err != nil {
		if strings.Contains(err.Error(), "no such table") {
			return nil, nil // dropped by retention meanwhile
		}
		return nil, fmt.Errorf("query partition %d: %w", day, err)
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

func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?,", n), ",")
}

// Span implements store.Store.
func (s *Store) Span(ctx context.Context, id string) (history.Span, []history.Stored, error) {
	var (
		src, kind, outcome, startTS, endTS, duration, events, day sql.NullInt64
		remote, queues, from, to                                  sql.NullString
	)
	err := s.r.QueryRowContext(ctx, `SELECT src, kind, start_ts, end_ts, duration, remote_ip, queue_ids, from_addr, to_addrs, outcome, events, day FROM spans WHERE span = ?`, id).
		Scan(&src, &kind, &startTS, &endTS, &duration, &remote, &queues, &from, &to, &outcome, &events, &day)
	if errors.Is(err, sql.ErrNoRows) {
		return history.Span{}, nil, store.ErrNotFound
	}
	if err != nil {
		return history.Span{}, nil, err
	}
	sp := history.Span{ID: id, Source: s.name(src.Int64), Kind: s.name(kind.Int64), Start: time.Unix(0, startTS.Int64).UTC(),
		Duration: duration.Int64, RemoteIP: remote.String, From: from.String, Outcome: s.name(outcome.Int64), Events: int(events.Int64)}
	if endTS.Valid {
		sp.End = time.Unix(0, endTS.Int64).UTC()
	}
	_ = json.Unmarshal([]byte(queues.String), &sp.QueueIDs)
	_ = json.Unmarshal([]byte(to.String), &sp.To)
	// A session may cross midnight: read its start day and the next.
	var out []history.Stored
	for _, d := range []int{int(day.Int64), dayOf(dayStart(int(day.Int64)).Add(24 * time.Hour))} {
		rows, err := s.r.QueryContext(ctx, `SELECT seq, ts, typ, lvl, src, id, data FROM ev_`+strconv.Itoa(d)+` WHERE span = ? ORDER BY ts, seq`, id)
		if err != nil {
			if strings.Contains(err.Error(), "no such table") {
				continue
			}
			return history.Span{}, nil, err
		}
		for rows.Next() {
			var r row
			var seq int64
			if err := rows.Scan(&seq, &r.ts, &r.typ, &r.lvl, &r.src, &r.id, &r.data); err != nil {
				rows.Close()
				return history.Span{}, nil, err
			}
			e := event.Event{ID: r.id, CreatedAt: time.Unix(0, r.ts).UTC(), Type: s.name(r.typ), Level: event.Level(r.lvl), Source: s.name(r.src), Data: event.Data(r.data)}
			out = append(out, history.NewStored(uint64(seq), e.AppendJSON(nil)))
		}
		rows.Close()
	}
	return sp, out, nil
}

// Spans implements store.Store. Kind and time are in SQL; the queue id and terms are
// verified on each candidate summary.
func (s *Store) Spans(ctx context.Context, q store.SpanQuery) ([]history.Span, int, error) {
	where := []string{"start_ts BETWEEN ? AND ?"}
	args := []any{q.From.UnixNano(), q.To.UnixNano()}
	if q.Kind != "" {
		s.cmu.RLock()
		id, ok := s.dict["t:"+q.Kind]
		s.cmu.RUnlock()
		if !ok {
			return []history.Span{}, 0, nil
		}
		where, args = append(where, "kind = ?"), append(args, id)
	}
	if q.QueueID != "" {
		where, args = append(where, `queue_ids LIKE ? ESCAPE '\'`), append(args, "%"+likeEscape(strconvQuote(q.QueueID))+"%")
	}
	rows, err := s.r.QueryContext(ctx, `SELECT span, src, kind, start_ts, end_ts, duration, remote_ip, queue_ids, from_addr, to_addrs, outcome, events
		FROM spans WHERE `+strings.Join(where, " AND ")+` ORDER BY start_ts DESC, span DESC`, args...)
	if err != nil {
		return nil, 0, err
	}
	defer rows.Close()
	out := []history.Span{}
	total := 0
	for rows.Next() {
		var (
			id                                                string
			src, kind, outcome, startTS, endTS, duration, evs sql.NullInt64
			remote, queues, from, to                          sql.NullString
		)
		if err := rows.Scan(&id, &src, &kind, &startTS, &endTS, &duration, &remote, &queues, &from, &to, &outcome, &evs); err != nil {
			return nil, 0, err
		}
		sp := history.Span{ID: id, Source: s.name(src.Int64), Kind: s.name(kind.Int64), Start: time.Unix(0, startTS.Int64).UTC(),
			Duration: duration.Int64, RemoteIP: remote.String, From: from.String, Outcome: s.name(outcome.Int64), Events: int(evs.Int64)}
		if endTS.Valid {
			sp.End = time.Unix(0, endTS.Int64).UTC()
		}
		_ = json.Unmarshal([]byte(queues.String), &sp.QueueIDs)
		_ = json.Unmarshal([]byte(to.String), &sp.To)
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

func strconvQuote(s string) string { b, _ := json.Marshal(s); return string(b) }

func likeEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, "%", `\%`, "_", `\_`).Replace(s)
}

// WriteSnapshots implements store.Store.
func (s *Store) WriteSnapshots(ctx context.Context, snaps []store.SnapshotRecord) error {
	if len(snaps) == 0 {
		return nil
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

// Snapshots implements store.Store.
func (s *Store) Snapshots(ctx context.Context, from, to time.Time, source string, limit int) ([]metric.Snapshot, error) {
	q := `SELECT body FROM snapshots WHERE ts BETWEEN ? AND ?`
	args := []any{from.UnixNano(), to.UnixNano()}
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
	return out, rows.Err()
}

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

// Stats implements store.Store.
func (s *Store) Stats(ctx context.Context) (store.Stats, error) {
	days, err := s.partitions(ctx, s.r)
	if err != nil {
		return store.Stats{}, err
	}
	st := store.Stats{Partitions: len(days)}
	for _, d := range days {
		var n int64
		if err := s.r.QueryRowContext(ctx, `SELECT count(*) FROM ev_`+strconv.Itoa(d)).Scan(&n); err == nil {
			st.Events += n
		}
	}
	for _, suffix := range []string{"", "-wal"} {
		if fi, err := os.Stat(s.path + suffix); err == nil {
			st.Bytes += fi.Size()
		}
	}
	return st, nil
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
