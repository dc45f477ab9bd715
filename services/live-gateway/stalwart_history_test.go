package livegateway

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/mailpulse/mailpulse/shared/history"
)

// manySpans is a fake archiver's history of n sessions, newest first: session i has id
// 9000000000+i (what a Stalwart client reads as a number) and two events; the even ones
// queued a message, the odd ones did not. It answers as an archiver does, at most
// history.MaxLimit sessions a request, and counts the requests.
type manySpans struct {
	n        int
	requests atomic.Int64
}

func spanNumber(i int) string { return strconv.Itoa(9_000_000_000 + i) }

func (a *manySpans) serve(h *harness) {
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
	answer(history.SubjectSpans, func(m *nats.Msg) any {
		a.requests.Add(1)
		var req history.SpansRequest
		if err := json.Unmarshal(m.Data, &req); err != nil {
			return history.SpansReply{Error: err.Error()}
		}
		if req.Limit <= 0 || req.Limit > history.MaxLimit { // as the archiver does
			req.Limit = history.DefaultLimit
		}
		reply := history.SpansReply{Spans: []history.Span{}, Total: a.n}
		for i := req.Offset; i < a.n && i < req.Offset+req.Limit; i++ {
			reply.Spans = append(reply.Spans, history.Span{ID: spanNumber(i), Kind: "smtp.connection-start", Events: 2})
		}
		return reply
	})
	answer(history.SubjectSpan, func(m *nats.Msg) any {
		id := string(m.Data)
		i, err := strconv.Atoi(id)
		if err != nil || i < 9_000_000_000 || i-9_000_000_000 >= a.n {
			return history.SpanReply{Error: "no such span", Code: 404}
		}
		evs := []history.Stored{history.NewStored(1, []byte(`{"id":"a","createdAt":"2026-11-21T10:15:02.5Z","type":"smtp.connection-start","level":"debug","data":{"spanId":"`+id+`","remoteIp":"203.0.113.7","tenant":"acme"}}`))}
		if i%2 == 0 {
			evs = append(evs, history.NewStored(2, []byte(`{"id":"b","createdAt":"2026-11-21T10:15:03Z","type":"queue.message-queued","level":"info","data":{"spanId":"`+id+`","queueId":"42","from":"a@example.com","to":["b@example.org"],"size":2048}}`)))
		}
		return history.SpanReply{Span: &history.Span{ID: id}, Events: evs}
	})
	if err := h.nc.Flush(); err != nil {
		h.t.Fatal(err)
	}
}

type tracesAnswer struct {
	Data struct {
		Items []json.RawMessage `json:"items"`
		Total int               `json:"total"`
	} `json:"data"`
}

func getTraces(t *testing.T, h *harness, query string) (int, tracesAnswer, string) {
	t.Helper()
	code, body := get(t, h.url+"/api/telemetry/traces?"+query, withKey(h.viewer))
	var a tracesAnswer
	if code == 200 {
		decodeJSON(t, body, &a)
	}
	return code, a, body
}

// Stalwart 0.15's list parameters as its handler reads them (#8.11): page=0 is the first
// page, limit=0 (or none) every session (here at most maxTraces), session ids numbers.
func TestStalwartTracesPageAndLimit(t *testing.T) {
	h := start(t, Config{}, false)
	a := &manySpans{n: 2500}
	a.serve(h)
	for _, tc := range []struct {
		query       string
		first, want int // the index of the first session listed, and how many
	}{
		{"page=0&limit=0", 0, 2500},
		{"", 0, 2500},
		{"page=0", 0, 2500},
		{"limit=0&page=7", 0, 2500}, // no limit, no pages: Stalwart skips nothing
		{"page=0&limit=10", 0, 10},
		{"page=1&limit=10", 0, 10},
		{"page=2&limit=10", 10, 10},
		{"page=3&limit=1000", 2000, 500},
		{"page=2&limit=1500", 1500, 1000},
		{"page=9&limit=1000", 0, 0},
		{"page=100000&limit=9223372036854775807", 0, 0},
		{"page=&limit=", 0, 2500}, // empty values are absent ones, as Stalwart's UrlParams has them
	} {
		code, ans, body := getTraces(t, h, tc.query)
		if code != 200 || ans.Data.Total != 2500 || len(ans.Data.Items) != tc.want {
			t.Errorf("traces?%s = %d, %d items of total %d, want 200 with %d of 2500: %.300s", tc.query, code, len(ans.Data.Items), ans.Data.Total, tc.want, body)
			continue
		}
		if tc.want > 0 {
			if got, want := string(ans.Data.Items[0]), spanNumber(tc.first); got != want {
				t.Errorf("traces?%s: first item %s, want the number %s", tc.query, got, want)
			}
		}
	}
	for _, q := range []string{"page=-1", "page=x", "limit=-1", "limit=ten"} {
		if code, _, body := getTraces(t, h, q); code != 400 {
			t.Errorf("traces?%s = %d %s, want 400", q, code, body)
		}
	}
}

// limit=0 lists every session up to maxTraces, asking the archivers a page at a time; total
// still counts them all.
func TestStalwartTracesEverythingIsCapped(t *testing.T) {
	h := start(t, Config{}, false)
	a := &manySpans{n: maxTraces + 1500}
	a.serve(h)
	for _, q := range []string{"limit=0", "limit=20000"} {
		before := a.requests.Load()
		code, ans, body := getTraces(t, h, q)
		if code != 200 || len(ans.Data.Items) != maxTraces || ans.Data.Total != a.n {
			t.Fatalf("traces?%s = %d, %d items of %d, want %d of %d: %.200s", q, code, len(ans.Data.Items), ans.Data.Total, maxTraces, a.n, body)
		}
		if got, want := a.requests.Load()-before, int64(maxTraces/history.MaxLimit); got != want {
			t.Errorf("traces?%s asked the archivers %d times, want %d pages of %d", q, got, want, history.MaxLimit)
		}
		if last := string(ans.Data.Items[maxTraces-1]); last != spanNumber(maxTraces-1) {
			t.Errorf("traces?%s: last item %s, want %s", q, last, spanNumber(maxTraces-1))
		}
	}
}

// values (any non-empty value, as Stalwart's params.get("values").is_some()) lists each
// session's queueing or delivery attempt start, and nothing for a session without one;
// items are 0.15 items with details, their span ids numbers, their types 0.15 names.
func TestStalwartTracesValues(t *testing.T) {
	h := start(t, Config{}, false)
	(&manySpans{n: 30}).serve(h)
	keys := webAdminKeys(t)
	for _, v := range []string{"1", "0", "true"} {
		code, ans, body := getTraces(t, h, "limit=10&values="+v)
		if code != 200 || ans.Data.Total != 30 || len(ans.Data.Items) != 5 {
			t.Fatalf("values=%s: %d, %d items of %d, want the 5 sessions of 10 that queued a message: %s", v, code, len(ans.Data.Items), ans.Data.Total, body)
		}
		for i, raw := range ans.Data.Items {
			var item map[string]any
			decodeJSON(t, string(raw), &item)
			checkWebAdminEvent(t, keys, item, false)
			data := item["data"].(map[string]any)
			if item["type"] != "queue.queue-message" || item["details"] == nil || data["spanId"] != json.Number(spanNumber(2*i)) || data["queueId"] != json.Number("42") {
				t.Errorf("values=%s: item %d = %s", v, i, raw)
			}
		}
	}
}

// GET /api/telemetry/trace answers Stalwart's shapes: one session in the path, its events;
// ids in ?id= (or several in the path), a list of events per id, empty for a session the
// history lacks.
func TestStalwartTraceIDs(t *testing.T) {
	h := start(t, Config{}, false)
	(&manySpans{n: 4}).serve(h)
	a, b, odd := spanNumber(0), spanNumber(2), spanNumber(1)
	// lens is the number of events a trace answer holds: n for a list of events, [n m …] for
	// a list of lists.
	lens := func(data json.RawMessage) string {
		var one []map[string]any
		if json.Unmarshal(data, &one) == nil {
			return fmt.Sprint(len(one))
		}
		var lists [][]map[string]any
		if err := json.Unmarshal(data, &lists); err != nil {
			return "undecodable " + string(data)
		}
		var out []string
		for _, l := range lists {
			out = append(out, fmt.Sprint(len(l)))
		}
		return "[" + strings.Join(out, " ") + "]"
	}
	for _, tc := range []struct{ path, want string }{
		{"/api/telemetry/trace/" + a, "2"},
		{"/api/telemetry/trace/" + odd, "1"},
		{"/api/telemetry/trace/404", "0"},
		{"/api/telemetry/trace?id=" + a, "[2]"},
		{"/api/telemetry/trace?id=" + a + "," + odd + ",404," + b, "[2 1 0 2]"},
		{"/api/telemetry/trace/" + a + "," + b, "[2 2]"},
		{"/api/telemetry/trace?id=", "[0]"},
	} {
		code, body := get(t, h.url+tc.path, withKey(h.viewer))
		var ans struct{ Data json.RawMessage }
		if code != 200 || json.Unmarshal([]byte(body), &ans) != nil || lens(ans.Data) != tc.want {
			t.Errorf("GET %s = %d %s, want events %s", tc.path, code, body, tc.want)
		}
	}
	code, body := get(t, h.url+"/api/telemetry/trace/"+a, withKey(h.viewer))
	var ans struct{ Data []map[string]any }
	decodeJSON(t, body, &ans)
	keys := webAdminKeys(t)
	for _, item := range ans.Data {
		checkWebAdminEvent(t, keys, item, false)
		if item["details"] == nil || item["text"] == nil {
			t.Errorf("trace item without text and details: %v", item)
		}
	}
	if code != 200 || len(ans.Data) != 2 || ans.Data[0]["createdAt"] != "2026-11-21T10:15:02Z" {
		t.Errorf("trace/%s = %d %s", a, code, body)
	}
	if code, body := get(t, h.url+"/api/telemetry/trace?id="+strings.Repeat("1,", maxTraceIDs), withKey(h.viewer)); code != 400 {
		t.Errorf("%d ids: %d %s, want 400", maxTraceIDs+1, code, body)
	}
}
