package postgres

import (
	"context"
	"fmt"

	"github.com/mailpulse/mailpulse/services/archiver/store"
)

// Write implements store.Store.
func (s *Store) Write(ctx context.Context, recs []store.Record) error {
	if len(recs) == 0 {
		return nil
	}
	if err := store.CheckRecords(recs); err != nil {
		return err
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
