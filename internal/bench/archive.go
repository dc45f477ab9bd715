package bench

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"time"

	"github.com/mailpulse/mailpulse/services/archiver"
	"github.com/mailpulse/mailpulse/services/archiver/store"
	"github.com/mailpulse/mailpulse/services/archiver/store/sqlite"
	"github.com/mailpulse/mailpulse/services/producer"
	"github.com/mailpulse/mailpulse/shared/broker"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/history"
)

// archive measures the history: the store's write rate against a raw batched insert of the
// same events into SQLite, the archiver's sustained rate through JetStream, bytes per
// stored event, and query latencies on a store of N events.
func archive(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("bench archive", flag.ContinueOnError)
	n := fs.Int("events", 5_000_000, "events in the store for the query phase")
	pipeline := fs.Int("pipeline-events", 200_000, "events for the write-rate phases")
	span := fs.Duration("span", 72*time.Hour, "event time covered by the store")
	queries := fs.Int("queries", 200, "queries of each kind")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the store.Write phase to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "mailpulse-bench-archive-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()
	start := time.Now().Add(-*span).Truncate(time.Hour)
	gen := func(count int, seq0 uint64) []store.Record {
		step := *span / time.Duration(max(count, 1))
		t := start
		sim := producer.NewSimulator(7, "mx1.example.org", func() time.Time { t = t.Add(step); return t })
		recs := make([]store.Record, count)
		for i := range recs {
			recs[i] = store.Record{Seq: seq0 + uint64(i) + 1, Event: sim.Next()}
		}
		return recs
	}

	// 1. Raw batched insert of the same events: one table, the JSON as it is, no index.
	recs := gen(*pipeline, 0)
	rawRate, err := rawInsert(ctx, filepath.Join(dir, "raw.db"), recs)
	if err != nil {
		return err
	}
	// 2. The store's own write path, directly.
	st, err := sqlite.Open(ctx, filepath.Join(dir, "store.db"))
	if err != nil {
		return err
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		_ = pprof.StartCPUProfile(f)
	}
	t0 := time.Now()
	for i := 0; i < len(recs); i += 1000 {
		if err := st.Write(ctx, recs[i:min(i+1000, len(recs))]); err != nil {
			return err
		}
	}
	storeRate := float64(len(recs)) / time.Since(t0).Seconds()
	if *cpuprofile != "" {
		pprof.StopCPUProfile()
	}
	st.Close()
	// 3. Sustained: through JetStream and the archiver service.
	arcRate, rss, err := sustained(ctx, dir, recs)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "%d simulated events (mean %d bytes of JSON)\n", len(recs), meanSize(recs))
	fmt.Fprintf(out, "bare insert (JSON, no index; for scale) %6.0f events/s\n", rawRate)
	fmt.Fprintf(out, "raw batched insert of the store      %7.0f events/s   (store.Write: its schema, indexes and terms, 1000 per transaction)\n", storeRate)
	fmt.Fprintf(out, "archiver via JetStream, sustained   %8.0f events/s   ratio to the store's raw insert %.2f (target ≥ 0.80, and ≥ 25k/s); max RSS of the run %d MB\n", arcRate, arcRate/storeRate, rss/1024)

	// 4. A store of n events over the span: size and query latencies.
	path := filepath.Join(dir, "big.db")
	st, err = sqlite.Open(ctx, path)
	if err != nil {
		return err
	}
	defer st.Close()
	const chunk = 100_000
	var spans []string
	var tos []string
	for i := 0; i < *n; i += chunk {
		part := genRange(start, *span, *n, i, min(chunk, *n-i))
		for j := 0; j < len(part); j += 1000 {
			if err := st.Write(ctx, part[j:min(j+1000, len(part))]); err != nil {
				return err
			}
		}
		for _, r := range part[:50] {
			if id := r.Event.Data.Get("spanId").String(); id != "" {
				spans = append(spans, id)
			}
			if to := r.Event.Data.Get("to"); to.Exists() {
				if to.IsArray() {
					tos = append(tos, to.Array()[0].Str)
				} else {
					tos = append(tos, to.Str)
				}
			}
		}
	}
	db, err := sql.Open("sqlite", "file:"+path)
	if err == nil {
		_, _ = db.Exec("PRAGMA wal_checkpoint(TRUNCATE)")
		db.Close()
	}
	stats, err := st.Stats(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "store of %d events over %s: %d MB on disk, %d bytes per event (target ≤ 250)\n", stats.Events, *span, stats.Bytes>>20, stats.Bytes/max(stats.Events, 1))

	rng := rand.New(rand.NewPCG(1, 2))
	measure := func(name string, fn func() error) error {
		var lat []time.Duration
		for range *queries {
			t := time.Now()
			if err := fn(); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			lat = append(lat, time.Since(t))
		}
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		fmt.Fprintf(out, "%-44s p50 %6.2f ms  p99 %6.2f ms\n", name, ms(lat[len(lat)/2]), ms(lat[len(lat)*99/100]))
		return nil
	}
	randHour := func() time.Time { return start.Add(time.Duration(rng.Int64N(int64(*span - time.Hour)))) }
	if err := measure("type + 1 h + key filter, limit 100 (≤ 20 ms)", func() error {
		f := randHour()
		_, err := st.Query(ctx, history.Query{From: f, To: f.Add(time.Hour), Types: []string{"smtp.*"}, Keys: map[string]string{"remoteIp": fmt.Sprintf("203.0.113.%d", 1+rng.IntN(60))}, Limit: 100, Desc: true})
		return err
	}); err != nil {
		return err
	}
	if err := measure("keyword over 24 h, limit 100 (≤ 50 ms)", func() error {
		f := start.Add(time.Duration(rng.Int64N(int64(max(*span-24*time.Hour, time.Hour)))))
		_, err := st.Query(ctx, history.Query{From: f, To: f.Add(24 * time.Hour), Terms: []string{tos[rng.IntN(len(tos))]}, Limit: 100, Desc: true})
		return err
	}); err != nil {
		return err
	}
	return measure("open a span (≤ 10 ms)", func() error {
		_, _, err := st.Span(ctx, spans[rng.IntN(len(spans))])
		if err == store.ErrNotFound {
			return nil
		}
		return err
	})
}

// genRange makes events i..i+count of n spread evenly over span from start.
func genRange(start time.Time, span time.Duration, n, i, count int) []store.Record {
	step := span / time.Duration(n)
	t := start.Add(step * time.Duration(i))
	sim := producer.NewSimulator(int64(11+i), "mx1.example.org", func() time.Time { t = t.Add(step); return t })
	recs := make([]store.Record, count)
	for k := range recs {
		recs[k] = store.Record{Seq: uint64(i + k + 1), Event: sim.Next()}
	}
	return recs
}

func meanSize(recs []store.Record) int {
	total := 0
	for _, r := range recs {
		total += len(r.Event.AppendJSON(nil))
	}
	return total / max(len(recs), 1)
}

func rawInsert(ctx context.Context, path string, recs []store.Record) (float64, error) {
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)")
	if err != nil {
		return 0, err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	if _, err := db.ExecContext(ctx, `CREATE TABLE raw(seq INTEGER PRIMARY KEY, body BLOB)`); err != nil {
		return 0, err
	}
	bodies := make([][]byte, len(recs))
	for i := range recs {
		bodies[i] = recs[i].Event.AppendJSON(nil)
	}
	t0 := time.Now()
	for i := 0; i < len(recs); i += 1000 {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return 0, err
		}
		st, err := tx.PrepareContext(ctx, `INSERT INTO raw(seq, body) VALUES(?, ?)`)
		if err != nil {
			return 0, err
		}
		for j := i; j < min(i+1000, len(recs)); j++ {
			if _, err := st.ExecContext(ctx, int64(recs[j].Seq), bodies[j]); err != nil {
				return 0, err
			}
		}
		st.Close()
		if err := tx.Commit(); err != nil {
			return 0, err
		}
	}
	return float64(len(recs)) / time.Since(t0).Seconds(), nil
}

// sustained publishes the events to EVENTS, then measures the archiver storing all of them.
func sustained(ctx context.Context, dir string, recs []store.Record) (float64, int64, error) {
	srv, err := broker.Start(broker.Config{StoreDir: filepath.Join(dir, "nats")}, nil)
	if err != nil {
		return 0, 0, err
	}
	defer srv.Shutdown()
	nc, err := srv.Connect()
	if err != nil {
		return 0, 0, err
	}
	defer nc.Close()
	pub, err := bus.NewPublisher(nc, bus.PublisherConfig{})
	if err != nil {
		return 0, 0, err
	}
	if err := bus.Provision(ctx, pub.JetStream(), bus.Limits{}, nil); err != nil {
		return 0, 0, err
	}
	msgs := make([]bus.Msg, len(recs))
	for i := range recs {
		msgs[i] = bus.Msg{Subject: recs[i].Event.Subject(), ID: recs[i].Event.ID, Data: recs[i].Event.AppendJSON(nil)}
	}
	errs := make([]error, len(msgs))
	pub.PublishAll(ctx, msgs, errs)
	for _, err := range errs {
		if err != nil {
			return 0, 0, err
		}
	}
	st, err := sqlite.Open(ctx, filepath.Join(dir, "archiver.db"))
	if err != nil {
		return 0, 0, err
	}
	defer st.Close()
	a, err := archiver.New(archiver.Config{}, archiver.Deps{Conn: nc, Store: st, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		return 0, 0, err
	}
	actx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	t0 := time.Now()
	go func() { done <- a.Run(actx) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(10 * time.Minute)
	for time.Now().Before(deadline) {
		s, err := st.Stats(ctx)
		if err == nil && s.Events >= int64(len(recs)) {
			return float64(len(recs)) / time.Since(t0).Seconds(), rssKB(), nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return 0, 0, fmt.Errorf("the archiver did not store %d events in 10 minutes", len(recs))
}
