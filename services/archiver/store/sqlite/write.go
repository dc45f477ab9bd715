package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"

	"github.com/mailpulse/mailpulse/services/archiver/store"
)

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
	if err := store.CheckRecords(recs); err != nil {
		return err
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
