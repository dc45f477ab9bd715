package archiver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailpulse/mailpulse/services/archiver/store"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/metric"
)

// Rebuild replays the whole EVENTS log into st (a new, empty store), in batches, and
// returns how many events were stored and the last sequence read. Events the keep filters
// reject and undecodable messages are skipped. The caller then points the durable consumer
// after that sequence (ResetConsumer), so the archiver continues from there.
func Rebuild(ctx context.Context, js jetstream.JetStream, st store.Store, cfg Config, log *slog.Logger) (stored int, last uint64, err error) {
	cfg.setDefaults()
	stream, err := js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		return 0, 0, fmt.Errorf("stream %s: %w", bus.StreamEvents, err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return 0, 0, err
	}
	end := info.State.LastSeq
	if end == 0 {
		return 0, 0, nil
	}
	cons, err := js.OrderedConsumer(ctx, bus.StreamEvents, jetstream.OrderedConsumerConfig{FilterSubjects: []string{bus.SubjectEvents}, DeliverPolicy: jetstream.DeliverAllPolicy})
	if err != nil {
		return 0, 0, err
	}
	recs := make([]store.Record, 0, cfg.BatchSize)
	flush := func() error {
		if len(recs) == 0 {
			return nil
		}
		if err := st.Write(ctx, recs); err != nil {
			return err
		}
		stored += len(recs)
		recs = recs[:0]
		return nil
	}
	progress := time.Now()
	for last < end {
		batch, err := cons.Fetch(cfg.BatchSize, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return stored, last, err
		}
		got := 0
		for m := range batch.Messages() {
			got++
			meta, err := m.Metadata()
			if err != nil {
				continue
			}
			last = meta.Sequence.Stream
			if e, err := event.Decode(m.Data()); err == nil && cfg.keep(&e) {
				recs = append(recs, store.Record{Seq: last, Event: e})
			}
			if len(recs) == cap(recs) {
				if err := flush(); err != nil {
					return stored, last, err
				}
			}
			if last >= end {
				break
			}
		}
		if got == 0 {
			return stored, last, errors.New("the log stopped delivering before its end")
		}
		if log != nil && time.Since(progress) > 5*time.Second {
			log.Info("rebuilding the history", "at_seq", last, "of", end, "stored", stored)
			progress = time.Now()
		}
	}
	return stored, last, flush()
}

// ResetConsumer recreates the archivers' durable consumer so that it delivers from the
// sequence after last.
func ResetConsumer(ctx context.Context, js jetstream.JetStream, name string, last uint64) error {
	if name == "" {
		name = "archiver"
	}
	if err := js.DeleteConsumer(ctx, bus.StreamEvents, name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("delete consumer %s: %w", name, err)
	}
	_, err := js.CreateConsumer(ctx, bus.StreamEvents, jetstream.ConsumerConfig{
		Durable: name, FilterSubject: bus.SubjectEvents, AckPolicy: jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: last + 1,
	})
	return err
}

// RebuildMetrics replays the METRICS log into st and returns the snapshots stored and the
// last sequence read; ResetConsumer with the metrics consumer's name continues from there.
func RebuildMetrics(ctx context.Context, js jetstream.JetStream, st store.Store) (stored int, last uint64, err error) {
	stream, err := js.Stream(ctx, bus.StreamMetrics)
	if err != nil {
		return 0, 0, fmt.Errorf("stream %s: %w", bus.StreamMetrics, err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return 0, 0, err
	}
	end := info.State.LastSeq
	if end == 0 || info.State.Msgs == 0 {
		return 0, end, nil
	}
	cons, err := js.OrderedConsumer(ctx, bus.StreamMetrics, jetstream.OrderedConsumerConfig{FilterSubjects: []string{bus.SubjectMetrics}})
	if err != nil {
		return 0, 0, err
	}
	for last < end {
		batch, err := cons.Fetch(500, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return stored, last, err
		}
		var recs []store.SnapshotRecord
		got := 0
		for m := range batch.Messages() {
			got++
			meta, err := m.Metadata()
			if err != nil {
				continue
			}
			last = meta.Sequence.Stream
			if snap, err := metric.Unmarshal(m.Data()); err == nil {
				recs = append(recs, store.SnapshotRecord{Seq: last, Snapshot: snap})
			}
			if last >= end {
				break // do not wait for the rest of a batch that will never fill
			}
		}
		if err := st.WriteSnapshots(ctx, recs); err != nil {
			return stored, last, err
		}
		stored += len(recs)
		if got == 0 {
			return stored, last, errors.New("the metrics log stopped delivering before its end")
		}
	}
	return stored, last, nil
}

// ResetMetricsConsumer recreates the metrics consumer to deliver after last.
func ResetMetricsConsumer(ctx context.Context, js jetstream.JetStream, name string, last uint64) error {
	if name == "" {
		name = "archiver"
	}
	name += "-metrics"
	if err := js.DeleteConsumer(ctx, bus.StreamMetrics, name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("delete consumer %s: %w", name, err)
	}
	_, err := js.CreateConsumer(ctx, bus.StreamMetrics, jetstream.ConsumerConfig{
		Durable: name, FilterSubject: bus.SubjectMetrics, AckPolicy: jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: last + 1,
	})
	return err
}
