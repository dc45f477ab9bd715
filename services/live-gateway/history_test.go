package livegateway

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/mailpulse/mailpulse/shared/history"
)

func TestHistoryWithoutArchiver(t *testing.T) {
	h := start(t, Config{}, false)
	if code, body := get(t, h.url+"/api/v1/events", withKey(h.viewer)); code != 503 || !strings.Contains(body, "no archiver") {
		t.Errorf("no archiver: %d %s", code, body)
	}
	if code, body := get(t, h.url+"/api/v1/events?limit=100000&level=loud", withKey(h.viewer)); code != 400 || !strings.Contains(body, "limit") || !strings.Contains(body, "level") {
		t.Errorf("bad query: %d %s", code, body)
	}
	if code, _ := get(t, h.url+"/api/v1/events", nil); code != 401 {
		t.Errorf("no key: %d", code)
	}
}

// The fixed history a fake archiver answers with.
var (
	histTime  = time.Date(2026, 11, 21, 10, 15, 2, 123456000, time.UTC)
	histSpan  = history.Span{ID: "7215384719", Source: "mx1.example.org", Kind: "smtp.connection-start", Start: histTime, End: histTime.Add(1500 * time.Millisecond), Duration: 1500, RemoteIP: "203.0.113.7", QueueIDs: []string{"q-42"}, From: "alice@example.com", To: []string{"bob@example.org"}, Outcome: "smtp.quit", Events: 3}
	histEvent = []history.Stored{
		history.NewStored(11, []byte(`{"id":"h1","createdAt":"2026-11-21T10:15:02.123456Z","type":"smtp.connection-start","level":"info","source":"mx1.example.org","data":{"spanId":"7215384719","remoteIp":"203.0.113.7","localPort":25}}`)),
		history.NewStored(12, []byte(`{"id":"h2","createdAt":"2026-11-21T10:15:02.5Z","type":"queue.message-queued","level":"info","source":"mx1.example.org","data":{"spanId":"7215384719","queueId":"q-42","from":"alice@example.com","to":["bob@example.org"],"size":2048}}`)),
		history.NewStored(13, []byte(`{"id":"h3","createdAt":"2026-11-21T10:15:03.623456Z","type":"smtp.quit","level":"info","source":"mx1.example.org","data":{"spanId":"7215384719","elapsed":1500}}`)),
	}
	histSeries = []history.Series{
		{Metric: "smtp.connection-start", Kind: "counter", Points: []history.Point{{Time: histTime.Truncate(time.Hour), Value: 100, Delta: 40, Rate: 0.011}, {Time: histTime.Truncate(time.Hour).Add(time.Hour), Value: 130, Delta: 30, Rate: 0.008}}},
		{Metric: "smtp.active-connections", Kind: "gauge", Points: []history.Point{{Time: histTime.Truncate(time.Hour), Value: 4}}},
		{Metric: "message.size", Kind: "histogram", Points: []history.Point{{Time: histTime.Truncate(time.Hour), Count: 2, Sum: 2748}}},
		// In Stalwart 0.15's history, under 0.15's ids: a renamed counter, a gauge, a
		// histogram's increases (not its totals), and nothing for a step without change.
		{Metric: "queue.message-queued", Kind: "counter", Points: []history.Point{{Time: histTime.Truncate(time.Hour), Value: 12, Delta: 12}, {Time: histTime.Truncate(time.Hour).Add(time.Hour), Value: 12}}},
		{Metric: "queue.count", Kind: "gauge", Points: []history.Point{{Time: histTime.Truncate(time.Hour), Value: 3}, {Time: histTime.Truncate(time.Hour).Add(time.Hour), Value: 0}}},
		{Metric: "delivery.attempt-time", Kind: "histogram", Points: []history.Point{{Time: histTime.Truncate(time.Hour), Count: 9, Sum: 912.4, CountDelta: 2, SumDelta: 301.6}}},
	}
)

// fakeArchiver answers the history subjects over NATS request-reply as an archiver replica
// does, from the fixed history: span 7215384719 exists, span "gone" is not in the history
// (404), span "broken" fails (the archiver's store is down).
func (h *harness) fakeArchiver() {
	h.t.Helper()
	answer := func(subject string, reply func(m *nats.Msg) any) {
		sub, err := h.nc.QueueSubscribe(subject, history.QueueGroup, func(m *nats.Msg) {
			b, _ := json.Marshal(reply(m))
			_ = m.Respond(b)
		})
		if err != nil {
			h.t.Fatal(err)
		}
		h.t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	answer(history.SubjectQuery, func(*nats.Msg) any {
		return history.QueryReply{Page: &history.Page{Events: histEvent, Next: history.EncodeCursor(history.Cursor{TS: histTime.UnixMicro(), Seq: 13})}}
	})
	answer(history.SubjectSpan, func(m *nats.Msg) any {
		switch string(m.Data) {
		case histSpan.ID:
			sp := histSpan
			return history.SpanReply{Span: &sp, Events: histEvent}
		case "broken":
			return history.SpanReply{Error: "store: database is locked", Code: 503}
		}
		return history.SpanReply{Error: "no such span", Code: 404}
	})
	answer(history.SubjectSpans, func(*nats.Msg) any {
		return history.SpansReply{Spans: []history.Span{histSpan}, Total: 1}
	})
	answer(history.SubjectMetrics, func(*nats.Msg) any {
		return history.MetricsReply{Series: histSeries}
	})
	if err := h.nc.Flush(); err != nil {
		h.t.Fatal(err)
	}
}

// The archiver says a span is missing by its code, not by the text of its error.
func TestSpanStatusComesFromTheArchiversCode(t *testing.T) {
	h := start(t, Config{}, false)
	h.fakeArchiver()
	for _, tc := range []struct {
		path string
		code int
		want string
	}{
		{"/api/v1/spans/7215384719", 200, `"remoteIp":"203.0.113.7"`},
		{"/api/v1/spans/gone", 404, "no span gone"},
		{"/api/v1/spans/broken", 503, "database is locked"},
		{"/api/telemetry/trace/7215384719", 200, `"queueId":"q-42"`},
		{"/api/telemetry/trace/gone", 200, `{"data":[]}`},
		// An archiver that fails is not an empty session.
		{"/api/telemetry/trace/broken", 503, "database is locked"},
	} {
		if code, body := get(t, h.url+tc.path, withKey(h.viewer)); code != tc.code || !strings.Contains(body, tc.want) {
			t.Errorf("GET %s = %d %s, want %d with %s", tc.path, code, body, tc.code, tc.want)
		}
	}
}
