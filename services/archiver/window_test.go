package archiver_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailpulse/mailpulse/services/archiver"
	"github.com/mailpulse/mailpulse/services/archiver/store"
	"github.com/mailpulse/mailpulse/services/archiver/store/sqlite"
	"github.com/mailpulse/mailpulse/shared/broker/brokertest"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/history"
	"github.com/mailpulse/mailpulse/shared/metric"
)

// running is an archiver started on a store the test holds.
type running struct {
	st  *sqlite.Store
	reg *prometheus.Registry
}

func (h *harness) start(cfg archiver.Config) *running {
	h.t.Helper()
	st, err := sqlite.Open(h.t.Context(), h.path)
	if err != nil {
		h.t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	a, err := archiver.New(cfg, archiver.Deps{Conn: h.nc, Store: st, Registry: reg})
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	h.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			h.t.Errorf("Run = %v", err)
		}
		st.Close()
	})
	return &running{st: st, reg: reg}
}

func (r *running) counter(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if v, ok := labels[l.GetName()]; ok && v != l.GetValue() {
					continue metrics
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return -1
}

func (r *running) stats(t *testing.T) store.Stats {
	t.Helper()
	s, err := r.st.Stats(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// publishAt puts events dated at the given times straight into the log, as events stored
// before the ingest bounded createdAt (or a client publishing on NATS) would be.
func (h *harness) publishAt(times []time.Time, prefix string) {
	h.t.Helper()
	msgs := make([]bus.Msg, len(times))
	for i, at := range times {
		e := event.Event{ID: fmt.Sprintf("%s-%d", prefix, i), CreatedAt: at, Type: "smtp.ehlo", Level: event.Info, Source: "mx1", Data: event.Data(`{"domain":"mx.example.com"}`)}
		msgs[i] = bus.Msg{Subject: e.Subject(), ID: e.ID, Data: e.AppendJSON(nil)}
	}
	errs := make([]error, len(msgs))
	h.pub.PublishAll(h.t.Context(), msgs, errs)
	for _, err := range errs {
		if err != nil {
			h.t.Fatal(err)
		}
	}
}

// Issue 9 #3 and #4: 20,000 events with distinct dates made a partition each (five schema
// objects on SQLite), every later batch failed for 25 minutes, days ahead were never
// dropped, and year 9999 came back as 1816. Now the history holds the days of [now -
// retention, now + max_future]: the far past is not kept, the far future is filed under its
// arrival with its own time kept as data, and later batches go on being written.
func TestFarDatesDoNotStallTheHistory(t *testing.T) {
	h := newHarness(t)
	var far []time.Time
	past, future := time.Date(1971, 1, 1, 12, 0, 0, 0, time.UTC), time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	for i := range 10_000 {
		far = append(far, past.AddDate(0, 0, i), future.AddDate(0, 0, i))
	}
	extremes := []time.Time{
		time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC), // wrapped to 1816 before
		time.Date(2262, 6, 1, 0, 0, 0, 0, time.UTC),      // just past int64 nanoseconds
		time.Date(1, 6, 1, 0, 0, 0, 0, time.UTC),
		time.Date(1969, 12, 31, 0, 0, 0, 0, time.UTC),
	}
	h.publishAt(far, "far")
	h.publishAt(extremes, "extreme")
	h.publish(100, "smtp.ehlo", `{}`, 0)
	r := h.start(archiver.Config{})
	// 10,000 future events, 2 extreme ones ahead (filed under their arrival) and 100 of now.
	eventually(t, "the events of now and those filed under their arrival", func() bool { return h.count(history.Query{}) == 10_102 })
	if p := r.stats(t).Partitions; p > 2 {
		t.Errorf("%d partitions after 20,000 distinct dates: want the day of now (and its neighbour near midnight)", p)
	}
	for side, want := range map[string]float64{"past": 10_002, "future": 10_002} {
		if got := r.counter(t, "mailpulse_archiver_out_of_window_total", map[string]string{"kind": "event", "side": side}); got != want {
			t.Errorf("out of window, %s: %v, want %v", side, got, want)
		}
	}
	// Year 9999 is filed under its arrival; its own time is kept, as written, never wrapped.
	got := h.query(history.Query{From: time.Now().Add(-time.Hour), To: time.Now().Add(time.Hour), Limit: 10,
		Keys: map[string]string{"originalCreatedAt": "9999-12-31T23:59:59Z"}})
	if got.Page == nil || len(got.Page.Events) != 1 {
		t.Fatalf("query for year 9999's original time: %+v", got)
	}
	var e struct {
		ID        string
		CreatedAt time.Time
	}
	if err := json.Unmarshal(got.Page.Events[0].Raw(), &e); err != nil || e.ID != "extreme-0" || time.Since(e.CreatedAt).Abs() > time.Hour {
		t.Errorf("year 9999 event read back as %+v (%v): want extreme-0 dated at its arrival", e, err)
	}
	// Later batches keep being written.
	h.publish(500, "smtp.ehlo", `{}`, 1000)
	eventually(t, "500 later events archived", func() bool { return h.count(history.Query{}) == 10_602 })
	// The consumer dead-lettered nothing and never failed a write.
	if n := r.counter(t, "mailpulse_consumer_write_errors_total", map[string]string{"consumer": "archiver"}); n != 0 {
		t.Errorf("%v failed writes", n)
	}
	if n := r.counter(t, "mailpulse_consumer_dead_letters_total", map[string]string{"consumer": "archiver"}); n != 0 {
		t.Errorf("%v dead letters", n)
	}
}

// A history written before the window existed: thousands of days far back and far ahead.
// The archiver's retention drops both sides (days ahead were never dropped), while the
// archiver goes on writing.
func TestRetentionDropsTheDaysAFloodLeft(t *testing.T) {
	h := newHarness(t)
	st, err := sqlite.Open(t.Context(), h.path)
	if err != nil {
		t.Fatal(err)
	}
	var recs []store.Record
	for i := range 100 {
		for j, at := range []time.Time{time.Date(1990, 1, 1, 0, 0, 0, 0, time.UTC).AddDate(0, 0, i), time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC).AddDate(0, 0, i)} {
			recs = append(recs, store.Record{Seq: uint64(1_000_000 + 2*i + j), Event: event.Event{ID: fmt.Sprintf("old-%d-%d", i, j), CreatedAt: at, Type: "smtp.ehlo", Source: "mx1", Data: event.Data(`{}`)}})
		}
	}
	recent := store.Record{Seq: 999_999, Event: event.Event{ID: "recent", CreatedAt: time.Now().Add(-48 * time.Hour), Type: "smtp.ehlo", Source: "mx1", Data: event.Data(`{}`)}}
	if err := st.Write(t.Context(), append(recs, recent)); err != nil {
		t.Fatal(err)
	}
	if s, _ := st.Stats(t.Context()); s.Partitions != 201 {
		t.Fatalf("%d partitions written, want 201", s.Partitions)
	}
	st.Close()

	r := h.start(archiver.Config{})
	h.publish(300, "smtp.ehlo", `{}`, 0)
	eventually(t, "the flood's days dropped, both sides", func() bool { return r.stats(t).Partitions <= 3 })
	eventually(t, "the new events archived meanwhile", func() bool { return h.count(history.Query{}) == 300 })
	if got := h.query(history.Query{From: time.Now().Add(-72 * time.Hour), To: time.Now(), Terms: nil, Limit: 1000}); got.Page == nil || len(got.Page.Events) != 301 {
		n := -1
		if got.Page != nil {
			n = len(got.Page.Events)
		}
		t.Errorf("last 3 days: %d events, want 301 (the day within the retention kept)", n)
	}
}

// Issue 9 #7: a snapshot larger than the server's max payload is published in parts; the
// archiver stores every part and answers with the snapshot whole.
func TestSplitSnapshotIsStoredWhole(t *testing.T) {
	nc := brokertest.StartMaxPayload(t, 64<<10)
	pub, err := bus.NewPublisher(nc, bus.PublisherConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Provision(t.Context(), pub.JetStream(), bus.Limits{}, nil); err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, nc: nc, pub: pub, path: newHarnessPath(t)}
	r := h.start(archiver.Config{})

	now := time.Now().UTC()
	snap := metric.Snapshot{Source: "mx1", Origin: metric.OriginEvents, Instance: "p-1", Time: now, Start: now.Add(-time.Hour), Counters: map[string]uint64{}}
	for i := range 10_000 {
		snap.Counters[fmt.Sprintf("custom.type-%05d", i)] = uint64(i + 1)
	}
	parts, err := snap.Split(int(nc.MaxPayload()) - 1024)
	if err != nil || len(parts) < 3 {
		t.Fatalf("Split = %d parts, %v", len(parts), err)
	}
	whole, _ := snap.Marshal()
	if err := pub.Publish(t.Context(), bus.Msg{Subject: bus.MetricsSubject("mx1"), ID: "whole", Data: whole}); err == nil {
		t.Fatalf("a %d-byte snapshot was published whole on a server with a 64 KiB max payload", len(whole))
	}
	for i, p := range parts {
		if err := pub.Publish(t.Context(), bus.Msg{Subject: bus.MetricsSubject("mx1"), ID: fmt.Sprintf("part-%d", i), Data: p}); err != nil {
			t.Fatalf("part %d (%d bytes): %v", i+1, len(p), err)
		}
	}
	var got []metric.Snapshot
	eventually(t, "the snapshot stored", func() bool {
		got, err = r.st.Snapshots(t.Context(), now.Add(-time.Minute), now.Add(time.Minute), "mx1", 1000)
		return err == nil && len(got) > 0
	})
	if len(got) != 1 || len(got[0].Counters) != 10_000 || got[0].Counters["custom.type-09999"] != 10_000 || got[0].Counters["custom.type-00000"] != 1 {
		t.Fatalf("stored %d snapshots, the first with %d counters: want 1 whole with 10,000", len(got), len(got[0].Counters))
	}
	// The history's series see every part: the first counter and the last one.
	req, _ := json.Marshal(history.MetricsRequest{From: now.Add(-time.Minute), To: now.Add(time.Minute), Step: time.Minute, Source: "mx1", Metrics: []string{"custom.type-00000", "custom.type-09999"}})
	m, err := nc.Request(history.SubjectMetrics, req, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var reply history.MetricsReply
	if err := json.Unmarshal(m.Data, &reply); err != nil || len(reply.Series) != 2 {
		t.Fatalf("metrics reply: %s (%v); want the 2 series", m.Data, err)
	}
	for _, s := range reply.Series {
		if len(s.Points) == 0 || s.Points[len(s.Points)-1].Value == 0 {
			t.Errorf("series %s = %+v, want its value", s.Metric, s.Points)
		}
	}
}

func newHarnessPath(t *testing.T) string { return filepath.Join(t.TempDir(), "history.db") }
