package archiver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailpulse/mailpulse/services/archiver/store"
	"github.com/mailpulse/mailpulse/services/archiver/store/postgres"
	"github.com/mailpulse/mailpulse/services/archiver/store/sqlite"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/metric"
)

// OpenStore opens the configured history store: PostgreSQL, or the SQLite file
// history.db in dataDir.
func OpenStore(ctx context.Context, cfg Config, dataDir string) (store.Store, error) {
	if cfg.Store == "postgresql" {
		return postgres.Open(ctx, cfg.PostgresURL)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	return sqlite.Open(ctx, filepath.Join(dataDir, "history.db"))
}

// RebuildReport says what a rebuild did.
type RebuildReport struct {
	Events, Snapshots int
	LastSeq           uint64
	Where             string
	Took              time.Duration
}

// RebuildHistory recreates the history from the log. SQLite: into a new file, swapped in
// only when complete (the old one is kept as history.db.old). PostgreSQL: emptied, then
// filled again (the archivers must be stopped; if it is interrupted, run it again). Then
// both consumers are moved after the rebuilt points, so the archivers continue from there.
func RebuildHistory(ctx context.Context, js jetstream.JetStream, cfg Config, dataDir string, log *slog.Logger) (RebuildReport, error) {
	cfg.setDefaults()
	start := time.Now()
	var st store.Store
	path := filepath.Join(dataDir, "history.db")
	tmp := path + ".rebuild"
	var err error
	if cfg.Store == "postgresql" {
		pg, err := postgres.Open(ctx, cfg.PostgresURL)
		if err != nil {
			return RebuildReport{}, err
		}
		if err := pg.Reset(ctx); err != nil {
			pg.Close()
			return RebuildReport{}, fmt.Errorf("empty the PostgreSQL history: %w", err)
		}
		st = pg
	} else {
		for _, suffix := range []string{"", "-wal", "-shm"} {
			_ = os.Remove(tmp + suffix)
		}
		if st, err = sqlite.Open(ctx, tmp); err != nil {
			return RebuildReport{}, err
		}
	}
	var rep RebuildReport
	var lastSnap uint64
	rep.Events, rep.LastSeq, err = Rebuild(ctx, js, st, cfg, log)
	if err == nil {
		rep.Snapshots, lastSnap, err = RebuildMetrics(ctx, js, st)
	}
	if cerr := st.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return rep, fmt.Errorf("rebuild: %w", err)
	}
	rep.Where = "PostgreSQL"
	if cfg.Store != "postgresql" {
		for _, suffix := range []string{"", "-wal", "-shm"} {
			if _, err := os.Stat(path + suffix); err == nil {
				if err := os.Rename(path+suffix, path+".old"+suffix); err != nil {
					return rep, err
				}
			}
			if _, err := os.Stat(tmp + suffix); err == nil {
				if err := os.Rename(tmp+suffix, path+suffix); err != nil {
					return rep, err
				}
			}
		}
		rep.Where = path + " (the previous file is " + path + ".old)"
	}
	if err := ResetConsumer(ctx, js, cfg.Consumer, rep.LastSeq); err != nil {
		return rep, err
	}
	if err := ResetMetricsConsumer(ctx, js, cfg.Consumer, lastSnap); err != nil {
		return rep, err
	}
	rep.Took = time.Since(start)
	return rep, nil
}

// Rebuild replays the whole EVENTS log into st (a new, empty store), in batches, and
// returns how many events were stored and the last sequence read. Events the keep filters
// reject and undecodable messages are skipped; events dated out of the history's window
// are left out or filed under their arrival, as the archiver does (window.go). The caller
// then points the durable consumer after that sequence (ResetConsumer), so the archiver
// continues from there.
func Rebuild(ctx context.Context, js jetstream.JetStream, st store.Store, cfg Config, log *slog.Logger) (stored int, last uint64, err error) {
	cfg.setDefaults()
	recs := make([]store.Record, 0, cfg.BatchSize)
	var outside [3]int // by placement
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
	res, err := bus.ReadRange(ctx, js, bus.Range{Stream: bus.StreamEvents, OnGap: func(bus.Gap) error {
		return nil // the log's retention dropped them while the rebuild ran: they are gone for good
	}}, func(m bus.Message) error {
		if e, err := event.Decode(m.Data); err == nil && cfg.keep(&e) {
			p := cfg.place(&e, m.Time, time.Now())
			outside[p]++
			if p != tooOld {
				recs = append(recs, store.Record{Seq: m.Seq, Event: e})
			}
		}
		if len(recs) == cap(recs) {
			if err := flush(); err != nil {
				return err
			}
		}
		if log != nil && time.Since(progress) > 5*time.Second {
			log.Info("rebuilding the history", "at_seq", m.Seq, "stored", stored)
			progress = time.Now()
		}
		return nil
	})
	if log != nil && outside[tooOld]+outside[refiled] > 0 {
		log.Warn("events dated out of the history's window", "not_kept", outside[tooOld], "filed_under_arrival", outside[refiled])
	}
	if err != nil {
		return stored, res.Last, err
	}
	return stored, res.End, flush()
}

// RebuildMetrics replays the METRICS log into st and returns the snapshots stored and the
// last sequence read; ResetMetricsConsumer continues from there.
func RebuildMetrics(ctx context.Context, js jetstream.JetStream, st store.Store) (stored int, last uint64, err error) {
	var recs []store.SnapshotRecord
	flush := func() error {
		if err := st.WriteSnapshots(ctx, recs); err != nil {
			return err
		}
		stored += len(recs)
		recs = recs[:0]
		return nil
	}
	res, err := bus.ReadRange(ctx, js, bus.Range{Stream: bus.StreamMetrics, OnGap: func(bus.Gap) error { return nil }}, func(m bus.Message) error {
		// A time the store cannot hold would fail the whole rebuild: such a snapshot is
		// left out (the next one of its producer supersedes it).
		if snap, err := metric.Unmarshal(m.Data); err == nil && event.Representable(snap.Time) {
			recs = append(recs, store.SnapshotRecord{Seq: m.Seq, Snapshot: snap})
		}
		if len(recs) == 500 {
			return flush()
		}
		return nil
	})
	if err != nil {
		return stored, res.Last, err
	}
	return stored, res.End, flush()
}

// ResetConsumer recreates the archivers' durable consumer so that it delivers from the
// sequence after last.
func ResetConsumer(ctx context.Context, js jetstream.JetStream, name string, last uint64) error {
	return resetConsumer(ctx, js, bus.StreamEvents, bus.SubjectEvents, name, last)
}

// ResetMetricsConsumer recreates the metrics consumer to deliver after last.
func ResetMetricsConsumer(ctx context.Context, js jetstream.JetStream, name string, last uint64) error {
	return resetConsumer(ctx, js, bus.StreamMetrics, bus.SubjectMetrics, name+"-metrics", last)
}

func resetConsumer(ctx context.Context, js jetstream.JetStream, stream, subject, name string, last uint64) error {
	if name == "" || name == "-metrics" {
		name = "archiver" + name
	}
	if err := js.DeleteConsumer(ctx, stream, name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("delete consumer %s: %w", name, err)
	}
	_, err := js.CreateConsumer(ctx, stream, jetstream.ConsumerConfig{
		Durable: name, FilterSubjects: []string{subject}, AckPolicy: jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: last + 1,
	})
	return err
}
