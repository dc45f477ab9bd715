package sqlite

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/mailpulse/mailpulse/services/archiver/store"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/history"
)

// Query implements store.Store. Results are ordered by event time, then log sequence.
func (s *Store) Query(ctx context.Context, q history.Query) (history.Page, error) {
	if q.Limit <= 0 || q.Limit > history.MaxLimit {
		q.Limit = history.DefaultLimit
	}
	q.From, q.To = store.Clamp(q.From), store.Clamp(q.To) // never a wrapped bound
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
		lo = max(lo, tsecOf(store.Nanos(q.From), day))
	}
	if !q.To.IsZero() {
		hi = min(hi, tsecOf(store.Nanos(q.To), day))
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
		where, args = append(where, "e.ts >= ?"), append(args, store.Nanos(q.From))
	}
	if !q.To.IsZero() {
		where, args = append(where, "e.ts <= ?"), append(args, store.Nanos(q.To))
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
		tables := []string{"ev_" + d}
		if len(terms) > 0 {
			tables = append(tables, "terms_"+d)
		}
		if missing(ctx, s.r, tables...) {
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
