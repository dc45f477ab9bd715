// Package storetest is the contract every history store passes: run it from each
// implementation's tests with a function that opens an empty store.
package storetest

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/mailpulse/mailpulse/services/archiver/store"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/history"
	"github.com/mailpulse/mailpulse/shared/metric"
)

// Run runs the contract against stores made by open (each test gets a fresh one).
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	t.Run("QueryFilters", func(t *testing.T) { testQueryFilters(t, open(t)) })
	t.Run("PagingHasNoGapNorDuplicate", func(t *testing.T) { testPaging(t, open(t)) })
	t.Run("WritesAreIdempotent", func(t *testing.T) { testIdempotent(t, open(t)) })
	t.Run("Spans", func(t *testing.T) { testSpans(t, open(t)) })
	t.Run("Retention", func(t *testing.T) { testRetention(t, open(t)) })
	t.Run("Snapshots", func(t *testing.T) { testSnapshots(t, open(t)) })
	t.Run("TimesThatWouldWrapAreRefused", func(t *testing.T) { testUnrepresentable(t, open(t)) })
	t.Run("SplitSnapshotsReadWhole", func(t *testing.T) { testSplitSnapshots(t, open(t)) })
}

var base = time.Date(2026, 11, 20, 10, 0, 0, 0, time.UTC)

func rec(seq uint64, at time.Time, typ string, lvl event.Level, src, data string) store.Record {
	return store.Record{Seq: seq, Event: event.Event{ID: fmt.Sprintf("id-%d", seq), CreatedAt: at, Type: typ, Level: lvl, Source: src, Data: event.Data(data)}}
}

func sample() []store.Record {
	return []store.Record{
		rec(1, base, "smtp.connection-start", event.Debug, "mx1", `{"spanId":"s1","remoteIp":"203.0.113.7","localPort":25}`),
		rec(2, base.Add(time.Second), "smtp.mail-from", event.Info, "mx1", `{"spanId":"s1","from":"Alice@Example.com"}`),
		rec(3, base.Add(2*time.Second), "smtp.rcpt-to", event.Info, "mx1", `{"spanId":"s1","to":["bob@example.org","carol@example.net"]}`),
		rec(4, base.Add(3*time.Second), "queue.message-queued", event.Info, "mx1", `{"spanId":"s1","queueId":"q42","size":2048,"from":"Alice@Example.com","to":["bob@example.org"]}`),
		rec(5, base.Add(4*time.Second), "smtp.connection-end", event.Debug, "mx1", `{"spanId":"s1","elapsed":4000}`),
		rec(6, base.Add(5*time.Second), "auth.failed", event.Warn, "mx2", `{"remoteIp":"198.51.100.9","accountName":"dave@example.org","details":"bad password"}`),
		rec(7, base.Add(6*time.Second), "delivery.attempt-start", event.Info, "mx2", `{"spanId":"d1","queueId":"q42","to":["bob@example.org"]}`),
		rec(8, base.Add(7*time.Second), "delivery.delivered", event.Info, "mx2", `{"spanId":"d1","hostname":"mx.example.org","code":250}`),
		rec(9, base.Add(8*time.Second), "delivery.attempt-end", event.Info, "mx2", `{"spanId":"d1","elapsed":900}`),
	}
}

func ids(t *testing.T, p history.Page) []string {
	t.Helper()
	var out []string
	for _, s := range p.Events {
		var e struct{ ID string }
		if err := json.Unmarshal(s.Raw(), &e); err != nil {
			t.Fatalf("stored event is not JSON: %s", s.Raw())
		}
		out = append(out, e.ID)
	}
	return out
}

func query(t *testing.T, s store.Store, q history.Query) []string {
	t.Helper()
	if q.Limit == 0 {
		q.Limit = 100
	}
	if q.From.IsZero() {
		q.From = base.Add(-time.Hour)
	}
	if q.To.IsZero() {
		q.To = base.Add(time.Hour)
	}
	p, err := s.Query(t.Context(), q)
	if err != nil {
		t.Fatalf("Query(%+v) = %v", q, err)
	}
	return ids(t, p)
}

func eq(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func testQueryFilters(t *testing.T, s store.Store) {
	defer s.Close()
	if err := s.Write(t.Context(), sample()); err != nil {
		t.Fatal(err)
	}
	warn := event.Warn
	cases := []struct {
		name string
		q    history.Query
		want []string
	}{
		{"all, oldest first", history.Query{}, []string{"id-1", "id-2", "id-3", "id-4", "id-5", "id-6", "id-7", "id-8", "id-9"}},
		{"newest first, limit", history.Query{Desc: true, Limit: 2}, []string{"id-9", "id-8"}},
		{"time range", history.Query{From: base.Add(2 * time.Second), To: base.Add(4 * time.Second)}, []string{"id-3", "id-4", "id-5"}},
		{"type pattern", history.Query{Types: []string{"smtp.*"}}, []string{"id-1", "id-2", "id-3", "id-5"}},
		{"suffix pattern", history.Query{Types: []string{"*.attempt-start", "auth.failed"}}, []string{"id-6", "id-7"}},
		{"unknown type", history.Query{Types: []string{"nothing.here"}}, nil},
		{"level", history.Query{MinLevel: &warn}, []string{"id-6"}},
		{"source", history.Query{Sources: []string{"mx2"}}, []string{"id-6", "id-7", "id-8", "id-9"}},
		{"keyword, whole address, any case", history.Query{Terms: []string{"alice@example.com"}}, []string{"id-2", "id-4"}},
		{"keyword, domain of an address", history.Query{Terms: []string{"example.net"}}, []string{"id-3"}},
		{"keywords all must match", history.Query{Terms: []string{"bob@example.org", "q42"}}, []string{"id-4", "id-7"}},
		{"key filter on a list", history.Query{Keys: map[string]string{"to": "carol@example.net"}}, []string{"id-3"}},
		{"key filter on a string", history.Query{Keys: map[string]string{"details": "bad password"}}, []string{"id-6"}},
		{"key filter is exact", history.Query{Keys: map[string]string{"details": "bad"}}, nil},
		{"key filter on a number", history.Query{Keys: map[string]string{"code": "250"}}, []string{"id-8"}},
		{"key filter and type", history.Query{Types: []string{"queue.*"}, Keys: map[string]string{"queueId": "q42"}}, []string{"id-4"}},
		{"injection in a key value", history.Query{Keys: map[string]string{"details": "' OR 1=1 --"}}, nil},
		{"injection in a keyword", history.Query{Terms: []string{"x'); DROP TABLE spans; --"}}, nil},
	}
	for _, tc := range cases {
		if got := query(t, s, tc.q); !eq(got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
	// The store still answers after the injection attempts.
	if got := query(t, s, history.Query{Types: []string{"auth.failed"}}); !eq(got, []string{"id-6"}) {
		t.Errorf("after injection attempts: %v", got)
	}
}

func testPaging(t *testing.T, s store.Store) {
	defer s.Close()
	var recs []store.Record
	// Three days, with several events at the same instant.
	for i := range 250 {
		at := base.Add(time.Duration(i/3) * 17 * time.Minute)
		recs = append(recs, rec(uint64(i+1), at, "imap.fetch", event.Debug, "mx", `{"n":"x"}`))
	}
	if err := s.Write(t.Context(), recs); err != nil {
		t.Fatal(err)
	}
	for _, desc := range []bool{false, true} {
		seen := map[string]int{}
		q := history.Query{From: base.Add(-time.Hour), To: base.Add(100 * time.Hour), Limit: 37, Desc: desc}
		pages := 0
		for {
			p, err := s.Query(t.Context(), q)
			if err != nil {
				t.Fatal(err)
			}
			pages++
			for _, id := range ids(t, p) {
				seen[id]++
			}
			if p.Next == "" {
				break
			}
			q.Cursor = p.Next
			if pages > 20 {
				t.Fatal("paging does not end")
			}
		}
		if len(seen) != 250 {
			t.Errorf("desc=%v: %d distinct events over %d pages, want 250", desc, len(seen), pages)
		}
		for id, n := range seen {
			if n != 1 {
				t.Errorf("desc=%v: %s seen %d times", desc, id, n)
			}
		}
	}
}

func testIdempotent(t *testing.T, s store.Store) {
	defer s.Close()
	recs := sample()
	for range 3 {
		if err := s.Write(t.Context(), recs); err != nil {
			t.Fatal(err)
		}
	}
	if got := query(t, s, history.Query{}); len(got) != len(recs) {
		t.Errorf("stored %d events after writing %d three times", len(got), len(recs))
	}
	if got := query(t, s, history.Query{Terms: []string{"q42"}}); len(got) != 2 {
		t.Errorf("keyword found %v: a rewrite indexed twice", got)
	}
	sp, evs, err := s.Span(t.Context(), "s1")
	if err != nil || sp.Events != 5 || len(evs) != 5 {
		t.Errorf("span after rewrites: %+v, %d events, %v; want 5", sp, len(evs), err)
	}
	st, err := s.Stats(t.Context())
	if err != nil || st.Events != int64(len(recs)) {
		t.Errorf("Stats = %+v, %v", st, err)
	}
}

func testSpans(t *testing.T, s store.Store) {
	defer s.Close()
	recs := sample()
	// Written in two batches, as the archiver would: the summary is built across them.
	if err := s.Write(t.Context(), recs[:2]); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(t.Context(), recs[2:]); err != nil {
		t.Fatal(err)
	}
	sp, evs, err := s.Span(t.Context(), "s1")
	if err != nil {
		t.Fatal(err)
	}
	if sp.Kind != "smtp.connection-start" || sp.Source != "mx1" || sp.RemoteIP != "203.0.113.7" || sp.From != "Alice@Example.com" ||
		len(sp.To) != 2 || len(sp.QueueIDs) != 1 || sp.QueueIDs[0] != "q42" || sp.Duration != 4000 || !sp.Start.Equal(base) ||
		!sp.End.Equal(base.Add(4*time.Second)) || sp.Events != 5 {
		t.Errorf("span s1 = %+v", sp)
	}
	if got := ids(t, history.Page{Events: evs}); !eq(got, []string{"id-1", "id-2", "id-3", "id-4", "id-5"}) {
		t.Errorf("span events = %v", got)
	}
	d, _, err := s.Span(t.Context(), "d1")
	if err != nil || d.Outcome != "delivery.delivered" || d.Kind != "delivery.attempt-start" {
		t.Errorf("span d1 = %+v, %v", d, err)
	}
	if _, _, err := s.Span(t.Context(), "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown span: %v, want ErrNotFound", err)
	}

	// Searching sessions: by kind, queue id and keywords, newest first, paged, with a total.
	all := store.SpanQuery{From: base.Add(-time.Hour), To: base.Add(time.Hour), Limit: 10}
	cases := []struct {
		name string
		q    func(store.SpanQuery) store.SpanQuery
		want []string
	}{
		{"all", func(q store.SpanQuery) store.SpanQuery { return q }, []string{"d1", "s1"}},
		{"kind", func(q store.SpanQuery) store.SpanQuery { q.Kind = "smtp.connection-start"; return q }, []string{"s1"}},
		{"queue id", func(q store.SpanQuery) store.SpanQuery { q.QueueID = "q42"; return q }, []string{"d1", "s1"}},
		{"unknown queue id", func(q store.SpanQuery) store.SpanQuery { q.QueueID = "q4"; return q }, nil},
		{"keyword: recipient domain", func(q store.SpanQuery) store.SpanQuery { q.Terms = []string{"example.net"}; return q }, []string{"s1"}},
		{"keyword: remote IP", func(q store.SpanQuery) store.SpanQuery { q.Terms = []string{"203.0.113.7"}; return q }, []string{"s1"}},
		{"page 2", func(q store.SpanQuery) store.SpanQuery { q.Offset, q.Limit = 1, 1; return q }, []string{"s1"}},
		{"time window", func(q store.SpanQuery) store.SpanQuery { q.From = base.Add(5 * time.Second); return q }, []string{"d1"}},
	}
	for _, tc := range cases {
		spans, total, err := s.Spans(t.Context(), tc.q(all))
		var got []string
		for _, sp := range spans {
			got = append(got, sp.ID)
		}
		if err != nil || !eq(got, tc.want) {
			t.Errorf("Spans %s = %v, %v; want %v", tc.name, got, err, tc.want)
		}
		if tc.name == "page 2" && total != 2 {
			t.Errorf("Spans page 2: total %d, want 2", total)
		}
	}
}

func testRetention(t *testing.T, s store.Store) {
	defer s.Close()
	var recs []store.Record
	for d := range 5 {
		recs = append(recs, rec(uint64(d+1), base.AddDate(0, 0, -d), "smtp.ehlo", event.Info, "mx", fmt.Sprintf(`{"spanId":"sp%d"}`, d)))
	}
	if err := s.Write(t.Context(), recs); err != nil {
		t.Fatal(err)
	}
	n, err := s.DropBefore(t.Context(), base.AddDate(0, 0, -2))
	if err != nil || n != 2 {
		t.Fatalf("DropBefore = %d, %v; want 2 partitions", n, err)
	}
	// The two oldest days are gone; the day that ends after the cut is kept whole.
	got := query(t, s, history.Query{From: base.AddDate(0, 0, -10), To: base.Add(time.Hour)})
	if !eq(got, []string{"id-3", "id-2", "id-1"}) {
		t.Errorf("after retention: %v, want the 3 newest days", got)
	}
	if _, _, err := s.Span(t.Context(), "sp4"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a dropped day's span is still there: %v", err)
	}
	// Writing into a dropped day again works (a rebuild from the log).
	if err := s.Write(t.Context(), recs[4:]); err != nil {
		t.Errorf("write into a dropped day: %v", err)
	}
	// Days ahead: DropAfter removes the days that start after its time, whole.
	ahead := []store.Record{
		rec(10, base.AddDate(0, 0, 1), "smtp.ehlo", event.Info, "mx", `{}`),
		rec(11, base.AddDate(0, 0, 2), "smtp.ehlo", event.Info, "mx", `{}`),
		rec(12, base.AddDate(200, 0, 0), "smtp.ehlo", event.Info, "mx", `{}`),
	}
	if err := s.Write(t.Context(), ahead); err != nil {
		t.Fatal(err)
	}
	n, err = s.DropAfter(t.Context(), base.AddDate(0, 0, 1).Add(-time.Hour))
	if err != nil || n != 2 {
		t.Fatalf("DropAfter = %d, %v; want the 2 partitions that start after it", n, err)
	}
	got = query(t, s, history.Query{From: base.AddDate(0, 0, -10), To: base.AddDate(300, 0, 0)})
	if !eq(got, []string{"id-5", "id-3", "id-2", "id-1", "id-10"}) {
		t.Errorf("after DropAfter: %v, want the day that starts before the cut kept", got)
	}
}

// Issue 9 #4: times were stored as int64 nanoseconds unchecked, so year 9999 came back as
// 1816. A time the store cannot hold is refused with ErrUnrepresentable, and nothing of its
// batch is written; query bounds far out are clamped, never wrapped.
func testUnrepresentable(t *testing.T, s store.Store) {
	defer s.Close()
	good := rec(1, base, "smtp.ehlo", event.Info, "mx", `{}`)
	last := rec(2, time.Date(2261, 12, 31, 23, 59, 59, 999999999, time.UTC), "smtp.ehlo", event.Info, "mx", `{}`)
	for _, at := range []time.Time{
		time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC),
		time.Date(2262, 4, 12, 0, 0, 0, 0, time.UTC),
		time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(1677, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Unix(0, -1),
	} {
		bad := rec(3, at, "smtp.ehlo", event.Info, "mx", `{}`)
		if err := s.Write(t.Context(), []store.Record{good, bad}); !errors.Is(err, store.ErrUnrepresentable) {
			t.Errorf("Write(event dated %v) = %v, want ErrUnrepresentable", at, err)
		}
		snap := store.SnapshotRecord{Seq: 9, Snapshot: metric.Snapshot{Source: "mx", Origin: metric.OriginEvents, Instance: "p", Time: at}}
		if err := s.WriteSnapshots(t.Context(), []store.SnapshotRecord{snap}); !errors.Is(err, store.ErrUnrepresentable) {
			t.Errorf("WriteSnapshots(snapshot dated %v) = %v, want ErrUnrepresentable", at, err)
		}
	}
	if st, err := s.Stats(t.Context()); err != nil || st.Events != 0 {
		t.Fatalf("Stats = %+v, %v: a refused batch wrote something", st, err)
	}
	// The last representable instant round-trips.
	if err := s.Write(t.Context(), []store.Record{good, last}); err != nil {
		t.Fatal(err)
	}
	// (Not 0001-01-01T00:00:00Z, which is the zero time: no bound.)
	far := history.Query{From: time.Date(1, 6, 1, 0, 0, 0, 0, time.UTC), To: time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC), Limit: 10}
	for _, desc := range []bool{false, true} {
		far.Desc = desc
		p, err := s.Query(t.Context(), far)
		if err != nil || len(p.Events) != 2 {
			t.Fatalf("Query(year 1 to 9999, desc %v) = %d events, %v; want both", desc, len(p.Events), err)
		}
		for _, e := range p.Events {
			var got struct{ ID, CreatedAt string }
			json.Unmarshal(e.Raw(), &got)
			want := map[string]string{"id-1": base.Format(time.RFC3339Nano), "id-2": "2261-12-31T23:59:59.999999999Z"}[got.ID]
			if got.CreatedAt != want {
				t.Errorf("%s read back dated %s, want %s", got.ID, got.CreatedAt, want)
			}
		}
	}
	snap := store.SnapshotRecord{Seq: 1, Snapshot: metric.Snapshot{Source: "mx", Origin: metric.OriginEvents, Instance: "p", Time: base}}
	if err := s.WriteSnapshots(t.Context(), []store.SnapshotRecord{snap}); err != nil {
		t.Fatal(err)
	}
	if all, err := s.Snapshots(t.Context(), far.From, far.To, "", 10); err != nil || len(all) != 1 {
		t.Errorf("Snapshots(year 1 to 9999) = %d, %v; want 1", len(all), err)
	}
	if n, err := s.DropSnapshotsBefore(t.Context(), far.From); err != nil || n != 0 {
		t.Errorf("DropSnapshotsBefore(year 1) = %d, %v; want 0 (a wrapped bound dropped them)", n, err)
	}
}

// Issue 9 #7: a snapshot too large for one message is published in parts; the store keeps
// each part as it came, and reads the snapshot back whole.
func testSplitSnapshots(t *testing.T, s store.Store) {
	defer s.Close()
	big := metric.Snapshot{Source: "mx", Origin: metric.OriginEvents, Instance: "p", Time: base, Start: base, Counters: map[string]uint64{}}
	for i := range 3000 {
		big.Counters[fmt.Sprintf("custom.type-%d", i)] = uint64(i)
	}
	msgs, err := big.Split(16 << 10)
	if err != nil || len(msgs) < 3 {
		t.Fatalf("Split = %d parts, %v", len(msgs), err)
	}
	var recs []store.SnapshotRecord
	for i, m := range msgs {
		part, err := metric.Unmarshal(m)
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, store.SnapshotRecord{Seq: uint64(10 + i), Snapshot: part})
	}
	other := store.SnapshotRecord{Seq: 1, Snapshot: metric.Snapshot{Source: "mx2", Origin: metric.OriginEvents, Instance: "p", Time: base, Counters: map[string]uint64{"auth.failed": 1}}}
	// Two batches, the parts of one snapshot across them.
	if err := s.WriteSnapshots(t.Context(), append([]store.SnapshotRecord{other}, recs[:1]...)); err != nil {
		t.Fatal(err)
	}
	if err := s.WriteSnapshots(t.Context(), recs[1:]); err != nil {
		t.Fatal(err)
	}
	got, err := s.Snapshots(t.Context(), base.Add(-time.Minute), base.Add(time.Minute), "mx", 1000)
	if err != nil || len(got) != 1 || !got[0].Whole() || len(got[0].Counters) != 3000 || got[0].Counters["custom.type-2999"] != 2999 {
		n := 0
		if len(got) > 0 {
			n = len(got[0].Counters)
		}
		t.Fatalf("Snapshots = %d snapshots (first with %d counters), %v; want 1 whole with 3000", len(got), n, err)
	}
	all, _ := s.Snapshots(t.Context(), base.Add(-time.Minute), base.Add(time.Minute), "", 1000)
	if len(all) != 2 {
		t.Errorf("Snapshots of every source = %d, want 2 (mx whole, mx2)", len(all))
	}
}

func testSnapshots(t *testing.T, s store.Store) {
	defer s.Close()
	var recs []store.SnapshotRecord
	for i := range 6 {
		src := "mx1"
		if i%2 == 1 {
			src = "mx2"
		}
		recs = append(recs, store.SnapshotRecord{Seq: uint64(i + 1), Snapshot: metric.Snapshot{Source: src, Origin: metric.OriginEvents, Instance: "p",
			Time: base.Add(time.Duration(i) * time.Minute), Start: base, Counters: map[string]uint64{"auth.failed": uint64(10 * i)}}})
	}
	for range 2 { // idempotent
		if err := s.WriteSnapshots(t.Context(), recs); err != nil {
			t.Fatal(err)
		}
	}
	all, err := s.Snapshots(t.Context(), base, base.Add(time.Hour), "", 100)
	if err != nil || len(all) != 6 || all[0].Counters["auth.failed"] != 0 || all[5].Counters["auth.failed"] != 50 {
		t.Fatalf("Snapshots = %d, %v", len(all), err)
	}
	mx1, _ := s.Snapshots(t.Context(), base, base.Add(time.Hour), "mx1", 100)
	window, _ := s.Snapshots(t.Context(), base.Add(2*time.Minute), base.Add(3*time.Minute), "", 100)
	if len(mx1) != 3 || len(window) != 2 {
		t.Errorf("by source %d (want 3), by window %d (want 2)", len(mx1), len(window))
	}
	n, err := s.DropSnapshotsBefore(t.Context(), base.Add(4*time.Minute))
	if err != nil || n != 4 {
		t.Errorf("DropSnapshotsBefore = %d, %v; want 4", n, err)
	}
}
