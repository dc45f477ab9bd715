package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/mailpulse/mailpulse/services/archiver/store"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/history"
)

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
			if missing(ctx, s.r, "ev_"+strconv.Itoa(d)) {
				continue // no such day: the session did not cross midnight, or retention dropped it
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
