package postgres

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/mailpulse/mailpulse/services/archiver/store"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/history"
)

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
