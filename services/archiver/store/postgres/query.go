package postgres

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/mailpulse/mailpulse/services/archiver/store"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/history"
)

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
	q.From, q.To = store.Clamp(q.From), store.Clamp(q.To) // never a wrapped bound
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
