package history_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/history"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// golden compares got with testdata/name, or rewrites the file under -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run go test -update once): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s changed (run go test -update if that is intended):\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

// The fixed values of the golden files.
var (
	t0 = time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	t1 = time.Date(2026, 11, 21, 10, 15, 2, 123456000, time.UTC)
)

// wireCase is one value of a golden file: a full one, with every field set, pins the field
// names; a minimal one pins what is left out when empty.
type wireCase struct {
	name string
	v    any
	new  func() any // a fresh value to decode the JSON into
}

// TestWireGolden pins the JSON of the history's questions and answers: the gateway and the
// archivers (possibly of different versions during an upgrade) exchange them over NATS, and
// the gateway passes some of them on to HTTP clients as they are.
func TestWireGolden(t *testing.T) {
	raw := sampleRaw(t)
	span := history.Span{
		ID: "7215384719", Source: "mx1.example.org", Kind: "smtp.connection-start",
		Start: t0, End: t1, Duration: 902_123, RemoteIP: "203.0.113.7",
		QueueIDs: []string{"Q1", "Q2"}, From: "a@example.com", To: []string{"b@example.org", "c@example.org"},
		Outcome: "smtp.rcpt-to", Events: 12,
	}
	files := []struct {
		file  string
		cases []wireCase
	}{
		{"query.json", []wireCase{
			{"full", history.Query{
				From: t0, To: t1, Types: []string{"smtp.*", "*.connection-start"}, MinLevel: level(event.Warn),
				Sources: []string{"mx1", "mx2"}, Terms: []string{"relay denied", "spam"},
				Keys: map[string]string{"remoteIp": "203.0.113.7", "queueId": "Q1"}, Desc: true, Limit: 50,
				Cursor: history.EncodeCursor(history.Cursor{TS: t1.UnixMicro(), Seq: 9}),
			}, func() any { return new(history.Query) }},
			{"minimal", history.Query{Limit: 100}, func() any { return new(history.Query) }},
			{"level trace", history.Query{MinLevel: level(event.Trace), Limit: 1}, func() any { return new(history.Query) }},
		}},
		{"query-reply.json", []wireCase{
			{"page", history.QueryReply{Page: &history.Page{Events: []history.Stored{history.NewStored(42, raw)}, Next: history.EncodeCursor(history.Cursor{TS: t1.UnixMicro(), Seq: 42})}}, func() any { return new(history.QueryReply) }},
			{"last page", history.QueryReply{Page: &history.Page{Events: []history.Stored{}}}, func() any { return new(history.QueryReply) }},
			{"error", history.QueryReply{Error: "cursor: not one this API made", Code: 400}, func() any { return new(history.QueryReply) }},
		}},
		{"page.json", []wireCase{
			{"full", history.Page{Events: []history.Stored{history.NewStored(41, raw), history.NewStored(42, raw)}, Next: "next-cursor"}, func() any { return new(history.Page) }},
			{"empty", history.Page{Events: []history.Stored{}}, func() any { return new(history.Page) }},
		}},
		{"span.json", []wireCase{
			{"full", span, func() any { return new(history.Span) }},
			{"open", history.Span{ID: "1", Source: "mx1", Kind: "smtp.connection-start", Start: t0, Events: 1}, func() any { return new(history.Span) }},
		}},
		{"span-reply.json", []wireCase{
			{"found", history.SpanReply{Span: &span, Events: []history.Stored{history.NewStored(42, raw)}}, func() any { return new(history.SpanReply) }},
			{"not found", history.SpanReply{Error: "not found", Code: 404}, func() any { return new(history.SpanReply) }},
		}},
		{"spans.json", []wireCase{
			{"request", history.SpansRequest{From: t0, To: t1, Kind: "smtp.connection-start", QueueID: "Q1", Terms: []string{"spam"}, Offset: 100, Limit: 50}, func() any { return new(history.SpansRequest) }},
			{"minimal request", history.SpansRequest{From: t0, To: t1, Limit: 100}, func() any { return new(history.SpansRequest) }},
			{"reply", history.SpansReply{Spans: []history.Span{span}, Total: 321}, func() any { return new(history.SpansReply) }},
			{"empty reply", history.SpansReply{Spans: []history.Span{}}, func() any { return new(history.SpansReply) }},
			{"error reply", history.SpansReply{Spans: []history.Span{}, Error: "database is closed"}, func() any { return new(history.SpansReply) }},
		}},
		{"metrics.json", []wireCase{
			{"request", history.MetricsRequest{From: t0, To: t1, Step: time.Minute, Source: "mx1", Metrics: []string{"queue.count", "auth.*"}}, func() any { return new(history.MetricsRequest) }},
			{"minimal request", history.MetricsRequest{From: t0, To: t1, Step: time.Minute}, func() any { return new(history.MetricsRequest) }},
			{"reply", history.MetricsReply{Series: []history.Series{
				{Metric: "auth.failed", Kind: "counter", Points: []history.Point{{Time: t0, Value: 10}, {Time: t0.Add(time.Minute), Value: 16, Delta: 6, Rate: 0.1}}},
				{Metric: "queue.count", Kind: "gauge", Points: []history.Point{{Time: t0, Value: 0}, {Time: t0.Add(time.Minute), Value: 2.5}}},
				{Metric: "message.size", Kind: "histogram", Points: []history.Point{{Time: t0, Count: 3, Sum: 52_411.5}}},
			}}, func() any { return new(history.MetricsReply) }},
			{"empty reply", history.MetricsReply{Series: []history.Series{}}, func() any { return new(history.MetricsReply) }},
			{"error reply", history.MetricsReply{Series: []history.Series{}, Error: "no snapshots"}, func() any { return new(history.MetricsReply) }},
		}},
	}
	for _, f := range files {
		t.Run(f.file, func(t *testing.T) {
			// A JSON object of the cases, in order, each compact as on the wire and on a
			// line of its own so that a change shows as a readable diff.
			var out bytes.Buffer
			out.WriteString("{\n")
			for i, c := range f.cases {
				b, err := json.Marshal(c.v)
				if err != nil {
					t.Fatalf("json.Marshal(%s) = %v", c.name, err)
				}
				fmt.Fprintf(&out, "  %q: %s", c.name, b)
				if i < len(f.cases)-1 {
					out.WriteString(",")
				}
				out.WriteString("\n")
				// What a reader decodes is what was sent.
				back := c.new()
				if err := json.Unmarshal(b, back); err != nil {
					t.Fatalf("json.Unmarshal(%s) = %v", b, err)
				}
				if got := reflect.ValueOf(back).Elem().Interface(); !reflect.DeepEqual(got, c.v) {
					t.Errorf("json.Unmarshal(%s) = %+v, want %+v", b, got, c.v)
				}
			}
			out.WriteString("}\n")
			if !json.Valid(out.Bytes()) {
				t.Fatalf("%s is not valid JSON:\n%s", f.file, out.Bytes())
			}
			golden(t, f.file, out.Bytes())
		})
	}
}
