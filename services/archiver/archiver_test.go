package archiver_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailpulse/mailpulse/services/archiver"
	"github.com/mailpulse/mailpulse/services/archiver/store"
	"github.com/mailpulse/mailpulse/services/archiver/store/postgres"
	"github.com/mailpulse/mailpulse/services/archiver/store/sqlite"
	"github.com/mailpulse/mailpulse/shared/broker/brokertest"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/filter"
	"github.com/mailpulse/mailpulse/shared/history"
	"github.com/mailpulse/mailpulse/shared/metric"
	"github.com/mailpulse/mailpulse/shared/pgtest"
	"github.com/mailpulse/mailpulse/shared/poll"
)

type harness struct {
	t    *testing.T
	nc   *nats.Conn
	pub  *bus.Publisher
	path string
}

func newHarness(t *testing.T) *harness {
	s := brokertest.Start(t)
	nc := s.Conn()
	pub, err := bus.NewPublisher(nc, bus.PublisherConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Provision(t.Context(), pub.JetStream(), bus.Limits{}, nil); err != nil {
		t.Fatal(err)
	}
	return &harness{t: t, nc: nc, pub: pub, path: filepath.Join(t.TempDir(), "history.db")}
}

// run starts an archiver on the harness's store file; stop ends it and closes the store.
func (h *harness) run(cfg archiver.Config) (stop func()) {
	h.t.Helper()
	st, err := sqlite.Open(h.t.Context(), h.path)
	if err != nil {
		h.t.Fatal(err)
	}
	a, err := archiver.New(cfg, archiver.Deps{Conn: h.nc, Store: st})
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			h.t.Errorf("Run = %v", err)
		}
		st.Close()
	}
	h.t.Cleanup(stop)
	return stop
}

func (h *harness) publish(n int, typ, data string, from int) {
	h.t.Helper()
	msgs := make([]bus.Msg, n)
	for i := range n {
		e := event.Event{ID: fmt.Sprintf("ev-%d", from+i), CreatedAt: time.Now().UTC(), Type: typ, Level: event.Info, Source: "mx1", Data: event.Data(data)}
		msgs[i] = bus.Msg{Subject: e.Subject(), ID: e.ID, Data: e.AppendJSON(nil)}
	}
	errs := make([]error, n)
	h.pub.PublishAll(h.t.Context(), msgs, errs)
	for _, err := range errs {
		if err != nil {
			h.t.Fatal(err)
		}
	}
}

func (h *harness) query(q history.Query) history.QueryReply {
	h.t.Helper()
	b, _ := json.Marshal(q)
	var m *nats.Msg
	var err error
	// Right after a start the archiver may not answer yet.
	if !poll.Wait(10*time.Second, func() bool {
		m, err = h.nc.Request(history.SubjectQuery, b, 5*time.Second)
		return err == nil
	}) {
		h.t.Fatalf("history request: %v", err)
	}
	var r history.QueryReply
	if err := json.Unmarshal(m.Data, &r); err != nil {
		h.t.Fatal(err)
	}
	return r
}

func (h *harness) count(q history.Query) int {
	q.Limit = history.MaxLimit
	q.From, q.To = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	n := 0
	for {
		r := h.query(q)
		if r.Page == nil {
			h.t.Fatalf("query error: %s", r.Error)
		}
		n += len(r.Page.Events)
		if r.Page.Next == "" {
			return n
		}
		q.Cursor = r.Page.Next
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, what, cond)
}

func types(t *testing.T, patterns ...string) filter.Types {
	t.Helper()
	ts, err := filter.ParseTypes(patterns)
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

func TestArchivesQueriesAndDeadLetters(t *testing.T) {
	h := newHarness(t)
	h.run(archiver.Config{Exclude: types(t, "imap.*")})
	h.publish(1500, "smtp.rcpt-to", `{"spanId":"sp1","to":["bob@example.org"],"remoteIp":"203.0.113.7"}`, 0)
	h.publish(10, "imap.fetch", `{}`, 2000)
	// A message that is not an event, put straight on the subject.
	if _, err := h.pub.JetStream().Publish(t.Context(), "events.smtp.ehlo", []byte(`{"not":"an event"`)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "1500 events archived", func() bool { return h.count(history.Query{}) == 1500 })
	if n := h.count(history.Query{Types: []string{"imap.*"}}); n != 0 {
		t.Errorf("excluded events stored: %d", n)
	}
	if n := h.count(history.Query{Terms: []string{"bob@example.org"}, Keys: map[string]string{"remoteIp": "203.0.113.7"}}); n != 1500 {
		t.Errorf("keyword + key query found %d, want 1500", n)
	}
	// The span, over request-reply.
	m, err := h.nc.Request(history.SubjectSpan, []byte("sp1"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var sr history.SpanReply
	json.Unmarshal(m.Data, &sr)
	if sr.Span == nil || sr.Span.Events != 1500 || len(sr.Events) != 1500 {
		t.Errorf("span reply: %+v (%d events)", sr.Span, len(sr.Events))
	}
	// The undecodable message is in the dead-letter stream, with the reason.
	name, _ := bus.DeadLetterStream("archiver")
	eventually(t, "the dead letter", func() bool {
		st, err := h.pub.JetStream().Stream(t.Context(), name)
		if err != nil {
			return false
		}
		info, _ := st.Info(t.Context())
		return info.State.Msgs == 1
	})
	st, _ := h.pub.JetStream().Stream(t.Context(), name)
	dl, err := st.GetMsg(t.Context(), 1)
	if err != nil || dl.Header.Get("Mailpulse-Reason") == "" || dl.Header.Get("Mailpulse-Subject") != "events.smtp.ehlo" {
		t.Errorf("dead letter = %+v, %v", dl, err)
	}
	if r := h.query(history.Query{Cursor: "garbage"}); r.Code != 400 {
		t.Errorf("bad cursor: %+v, want code 400", r)
	}
}

func TestRestartStoresNothingTwiceAndLosesNothing(t *testing.T) {
	h := newHarness(t)
	stop := h.run(archiver.Config{BatchSize: 100})
	h.publish(1000, "smtp.ehlo", `{"domain":"mx.example.com"}`, 0)
	eventually(t, "some events archived", func() bool { return h.count(history.Query{}) > 0 })
	stop() // possibly mid-stream
	h.publish(1000, "smtp.ehlo", `{"domain":"mx.example.com"}`, 1000)
	// A new archiver on the same store and durable consumer continues where the last
	// acknowledged batch ended.
	h.run(archiver.Config{BatchSize: 100})
	eventually(t, "all 2000 archived", func() bool { return h.count(history.Query{}) >= 2000 })
	if n := h.count(history.Query{}); n != 2000 {
		t.Errorf("%d events stored, want exactly 2000", n)
	}
}

func TestRebuildFromTheLog(t *testing.T) {
	h := newHarness(t)
	h.publish(2500, "smtp.rcpt-to", `{"to":["bob@example.org"]}`, 0)
	for i := range 5 {
		snap := metric.Snapshot{Source: "mx1", Origin: metric.OriginEvents, Instance: "p", Time: time.Now().Add(time.Duration(i) * time.Second), Counters: map[string]uint64{"auth.failed": uint64(i)}}
		b, _ := snap.Marshal()
		if err := h.pub.Publish(t.Context(), bus.Msg{Subject: bus.MetricsSubject("mx1"), ID: fmt.Sprintf("snap-%d", i), Data: b}); err != nil {
			t.Fatal(err)
		}
	}
	pgDSN := pgtest.Database(t, pgtest.Server(t))
	for _, name := range []string{"sqlite", "postgresql"} {
		t.Run(name, func(t *testing.T) {
			var st store.Store
			if name == "sqlite" {
				s, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "rebuilt.db"))
				if err != nil {
					t.Fatal(err)
				}
				st = s
			} else {
				pg, err := postgres.Open(t.Context(), pgDSN)
				if err != nil {
					t.Fatal(err)
				}
				// Something stale that a rebuild must clear.
				pg.Write(t.Context(), []store.Record{{Seq: 999999, Event: event.Event{ID: "stale", CreatedAt: time.Now(), Type: "a.b", Source: "x"}}})
				if err := pg.Reset(t.Context()); err != nil {
					t.Fatal(err)
				}
				st = pg
			}
			defer st.Close()
			n, last, err := archiver.Rebuild(t.Context(), h.pub.JetStream(), st, archiver.Config{}, nil)
			if err != nil || n != 2500 || last != 2500 {
				t.Fatalf("Rebuild = %d, %d, %v; want 2500 events up to sequence 2500", n, last, err)
			}
			snaps, lastSnap, err := archiver.RebuildMetrics(t.Context(), h.pub.JetStream(), st)
			if err != nil || snaps != 5 || lastSnap != 5 {
				t.Fatalf("RebuildMetrics = %d, %d, %v; want 5", snaps, lastSnap, err)
			}
			stats, _ := st.Stats(t.Context())
			if stats.Events != 2500 {
				t.Errorf("rebuilt store holds %d events, want 2500 (and no stale one)", stats.Events)
			}
			page, err := st.Query(t.Context(), history.Query{From: time.Now().Add(-time.Hour), To: time.Now().Add(time.Hour), Terms: []string{"bob@example.org"}, Limit: 1000})
			if err != nil || len(page.Events) != 1000 || page.Next == "" {
				t.Errorf("rebuilt store query: %d events, next %q, %v", len(page.Events), page.Next, err)
			}
			// The archivers then continue after the rebuilt points only.
			if err := archiver.ResetConsumer(t.Context(), h.pub.JetStream(), "archiver", last); err != nil {
				t.Fatal(err)
			}
			if err := archiver.ResetMetricsConsumer(t.Context(), h.pub.JetStream(), "archiver", lastSnap); err != nil {
				t.Fatal(err)
			}
			for stream, consumer := range map[string]string{bus.StreamEvents: "archiver", bus.StreamMetrics: "archiver-metrics"} {
				cons, err := h.pub.JetStream().Consumer(t.Context(), stream, consumer)
				if err != nil {
					t.Fatal(err)
				}
				if info, _ := cons.Info(t.Context()); info.NumPending != 0 {
					t.Errorf("%s has %d pending after a reset to the end", consumer, info.NumPending)
				}
			}
		})
	}
}

func storeErrors(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "mailpulse_consumer_write_errors_total" {
			for _, m := range mf.GetMetric() {
				if m.GetLabel()[0].GetValue() == "archiver" {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func TestDatabaseUnavailableForAWhile(t *testing.T) {
	h := newHarness(t)
	pg := pgtest.Start(t)
	st, err := postgres.Open(t.Context(), pgtest.Database(t, pg.DSN))
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	a, err := archiver.New(archiver.Config{BatchSize: 100}, archiver.Deps{Conn: h.nc, Store: st, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; st.Close() })
	count := func() int64 {
		s, err := st.Stats(t.Context())
		if err != nil {
			return -1
		}
		return s.Events
	}
	h.publish(500, "smtp.ehlo", `{}`, 0)
	eventually(t, "500 stored", func() bool { return count() == 500 })

	pg.Stop() // the database goes away
	h.publish(1000, "smtp.ehlo", `{}`, 500)
	eventually(t, "the archiver to report failed writes", func() bool { return storeErrors(t, reg) > 0 })
	// Nothing was acknowledged: the log still holds the events for the archiver.
	cons, _ := h.pub.JetStream().Consumer(t.Context(), bus.StreamEvents, "archiver")
	if info, err := cons.Info(t.Context()); err != nil || info.AckFloor.Stream > 500 {
		t.Errorf("acknowledged past what was stored while the database was down: %+v, %v", info.AckFloor, err)
	}

	pg.Start() // it comes back: the archiver catches up by itself
	eventually(t, "all 1500 stored after the outage", func() bool { return count() == 1500 })
}

func TestFullStoreSurfacesAndRecovers(t *testing.T) {
	h := newHarness(t)
	st, err := sqlite.Open(t.Context(), h.path)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	a, err := archiver.New(archiver.Config{BatchSize: 200}, archiver.Deps{Conn: h.nc, Store: st, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; st.Close() })
	if err := st.SetMaxBytes(t.Context(), 400<<10); err != nil { // the disk fills up at 400 KiB
		t.Fatal(err)
	}
	big := `{"details":"` + strings.Repeat("x", 900) + `"}`
	h.publish(3000, "smtp.ehlo", big, 0)
	eventually(t, "the full store to surface as errors", func() bool { return storeErrors(t, reg) > 0 })
	s, _ := st.Stats(t.Context())
	if s.Events >= 3000 {
		t.Fatalf("stored %d events in a full store", s.Events)
	}
	if err := st.SetMaxBytes(t.Context(), 0); err != nil { // room again
		t.Fatal(err)
	}
	eventually(t, "all 3000 stored once there is room", func() bool {
		s, err := st.Stats(t.Context())
		return err == nil && s.Events == 3000
	})
}

// After a rebuild the archiver starts on the moved consumer and goes on archiving: the
// consumer's start point is kept (JetStream refuses to change a deliver policy, and the
// archiver used to loop on that refusal, storing nothing more).
func TestArchiverContinuesAfterARebuild(t *testing.T) {
	h := newHarness(t)
	h.publish(300, "smtp.ehlo", `{}`, 0)
	stop := h.run(archiver.Config{})
	eventually(t, "300 archived", func() bool { return h.count(history.Query{}) == 300 })
	stop()

	dir := filepath.Dir(h.path)
	rep, err := archiver.RebuildHistory(t.Context(), h.pub.JetStream(), archiver.DefaultConfig(), dir, nil)
	if err != nil || rep.Events != 300 || rep.LastSeq != 300 {
		t.Fatalf("RebuildHistory = %+v, %v; want 300 events up to 300", rep, err)
	}
	h.run(archiver.Config{})
	h.publish(200, "smtp.ehlo", `{}`, 300)
	eventually(t, "the 200 new events archived after the rebuild", func() bool { return h.count(history.Query{}) == 500 })
}

// The history answers with each event as it was stored, byte for byte: a message id such
// as <a@b> used to come back as \u003ca@b\u003e.
func TestQueryAnswersEventsAsStored(t *testing.T) {
	h := newHarness(t)
	h.publish(1, "smtp.mail-from", `{"messageId":"<a&b@example.org>"}`, 0)
	h.run(archiver.Config{})
	eventually(t, "the event archived", func() bool { return h.count(history.Query{}) == 1 })
	r := h.query(history.Query{From: time.Now().Add(-time.Hour), To: time.Now().Add(time.Hour), Limit: 10})
	if r.Page == nil || len(r.Page.Events) != 1 || !strings.Contains(string(r.Page.Events[0].Raw()), `"messageId":"<a&b@example.org>"`) {
		t.Fatalf("reply %+v: want the event's bytes unchanged", r)
	}
}
