package webhooker_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	"github.com/tidwall/gjson"

	"github.com/mailpulse/mailpulse/services/webhooker"
	"github.com/mailpulse/mailpulse/shared/apikey"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/poll"
)

// repairApp mounts the API as the gateway does, behind a real admin key, over a store that
// lets URLs reach the test receivers (the harness's settings).
func repairApp(t *testing.T, h *harness) (app *fiber.App, admin string) {
	t.Helper()
	return repairAppOn(t, h, h.eps)
}

// repairAppOn is repairApp over another store: another replica's API.
func repairAppOn(t *testing.T, h *harness, eps *webhooker.Endpoints) (app *fiber.App, admin string) {
	t.Helper()
	app, keys := mountAPI(t, h, eps)
	admin, _, err := keys.Create(t.Context(), "admin", apikey.Admin)
	if err != nil {
		t.Fatal(err)
	}
	return app, admin
}

// send calls the API and decodes its JSON answer into a gjson result.
func send(t *testing.T, app *fiber.App, key, method, path, body string) (int, gjson.Result, http.Header) {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := app.Test(req, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if len(b) > 0 && !gjson.ValidBytes(b) {
		t.Fatalf("%s %s: %d %s: not JSON", method, path, resp.StatusCode, b)
	}
	return resp.StatusCode, gjson.ParseBytes(b), resp.Header
}

// newAnsweringReceiver is a receiver (harness_test.go) whose answers carry a body: answer
// gives the status and body of request n.
func newAnsweringReceiver(t *testing.T, answer func(n int, r *http.Request) (int, string)) *receiver {
	t.Helper()
	rc := &receiver{got: map[string]int{}}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		n := len(rc.reqs)
		rc.reqs = append(rc.reqs, received{at: time.Now(), header: r.Header.Clone(), body: body})
		rc.mu.Unlock()
		status, text := answer(n, r)
		w.WriteHeader(status)
		_, _ = io.WriteString(w, text)
		rc.mu.Lock()
		defer rc.mu.Unlock()
		rc.reqs[n].status = status
		if status/100 == 2 {
			for _, e := range gjsonEvents(body) {
				rc.got[e.Get("id").Str]++
				rc.order = append(rc.order, e.Get("id").Str)
			}
		}
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

// reasons returns the errors of a 400 answer, joined.
func reasons(r gjson.Result) string {
	var out []string
	for _, e := range r.Get("errors").Array() {
		out = append(out, e.Str)
	}
	return strings.Join(out, "\n")
}

// deadLettered makes an endpoint whose receiver refuses events (422) until accept is set,
// and waits until the events published are its dead letters.
func deadLettered(t *testing.T, h *harness, n int, edit func(*webhooker.Endpoint)) (ep webhooker.Endpoint, rc *receiver, accept *atomic.Bool, ids []string) {
	t.Helper()
	accept = &atomic.Bool{}
	rc = newAnsweringReceiver(t, func(int, *http.Request) (int, string) {
		if accept.Load() {
			return http.StatusOK, ""
		}
		return http.StatusUnprocessableEntity, `{"error":"schema mismatch"}`
	})
	ep = h.endpoint(rc.srv.URL, edit)
	h.waitConsumer(ep.ID)
	ids = h.publish(n, "auth.failed", "dl")
	poll.Until(t, "the dead letters", func() bool { return len(h.deadLetters(ep.ID)) == n })
	return ep, rc, accept, ids
}

func TestDeadLettersAreListedWithTheirReasonAnswerAndEvent(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, admin := repairApp(t, h)
	h.run(webhooker.Deps{})
	ep, _, _, ids := deadLettered(t, h, 5, func(e *webhooker.Endpoint) { e.Batch.MaxEvents = 5 })
	base := "/api/v1/webhooks/" + ep.ID + "/dead-letters"

	code, all, _ := send(t, app, admin, "GET", base, "")
	if code != 200 || len(all.Get("deadLetters").Array()) != 5 || all.Get("remaining").Int() != 0 || all.Get("next").Exists() {
		t.Fatalf("GET %s: %d %s", base, code, all.Raw)
	}
	first := all.Get("deadLetters.0")
	if first.Get("status").Int() != 422 || first.Get("response").Str != `{"error":"schema mismatch"}` ||
		!strings.Contains(first.Get("reason").Str, "HTTP 422") || first.Get("subject").Str != "events.auth.failed" ||
		first.Get("sequence").Int() == 0 || first.Get("event.id").Str != ids[0] || first.Get("event.data.accountName").Str != "user0" {
		t.Errorf("first dead letter %s: want the status, the response, the reason, the original subject and sequence, and the event", first.Raw)
	}
	var got []string
	for _, d := range all.Get("deadLetters").Array() {
		got = append(got, d.Get("event.id").Str)
	}
	if !slices.Equal(got, ids) {
		t.Errorf("dead letters %v, want %v oldest first", got, ids)
	}

	// Pages: limit and after.
	code, p1, _ := send(t, app, admin, "GET", base+"?limit=2", "")
	if code != 200 || len(p1.Get("deadLetters").Array()) != 2 || p1.Get("remaining").Int() != 3 || p1.Get("next").Uint() != p1.Get("deadLetters.1.seq").Uint() {
		t.Fatalf("first page: %d %s", code, p1.Raw)
	}
	code, p2, _ := send(t, app, admin, "GET", fmt.Sprintf("%s?limit=2&after=%d", base, p1.Get("next").Uint()), "")
	if code != 200 || p2.Get("deadLetters.0.event.id").Str != ids[2] || p2.Get("remaining").Int() != 1 {
		t.Errorf("second page: %d %s", code, p2.Raw)
	}

	// Another endpoint's dead letters are not this one's.
	other := h.endpoint("http://127.0.0.1:1/", nil)
	if code, r, _ := send(t, app, admin, "GET", "/api/v1/webhooks/"+other.ID+"/dead-letters", ""); code != 200 || r.Get("deadLetters.#").Int() != 0 {
		t.Errorf("another endpoint's dead letters: %d %s", code, r.Raw)
	}
}

func TestRedeliverSendsDeadLettersToTheirEndpointOnlyAndRemovesThem(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, admin := repairApp(t, h)
	h.run(webhooker.Deps{})
	bystander := newReceiver(t, ok)
	by := h.endpoint(bystander.srv.URL, nil)
	h.waitConsumer(by.ID)
	ep, rc, accept, ids := deadLettered(t, h, 7, func(e *webhooker.Endpoint) { e.Batch.MaxEvents = 3 })
	poll.Until(t, "the bystander's deliveries", func() bool { return bystander.hasAll(ids) })
	_, logBefore, _ := bus.Bounds(t.Context(), h.js, bus.StreamEvents)
	path := "/api/v1/webhooks/" + ep.ID + "/dead-letters/redeliver"

	// Still refused: the first batch fails, nothing is removed.
	n := len(rc.requests())
	code, r, _ := send(t, app, admin, "POST", path, "")
	if code != 200 || r.Get("sent").Int() != 0 || r.Get("failed").Int() != 3 || r.Get("status").Int() != 422 || r.Get("remaining").Int() != 7 || r.Get("requests").Int() != 1 {
		t.Fatalf("redeliver to a failing endpoint: %d %s", code, r.Raw)
	}
	if got := len(rc.requests()) - n; got != 1 {
		t.Errorf("%d requests, want 1: the first failed batch stops the redelivery", got)
	}

	// Accepted now: every letter is sent, in order, in batches of 3, and removed.
	accept.Store(true)
	n = len(rc.requests())
	code, r, _ = send(t, app, admin, "POST", path, `{"limit":1000}`)
	if code != 200 || r.Get("sent").Int() != 7 || r.Get("failed").Int() != 0 || r.Get("remaining").Int() != 0 || r.Get("requests").Int() != 3 {
		t.Fatalf("redeliver: %d %s", code, r.Raw)
	}
	if got := rc.ids(); !slices.Equal(got, ids) {
		t.Errorf("the endpoint received %v, want %v once each, in order", got, ids)
	}
	if len(h.deadLetters(ep.ID)) != 0 {
		t.Error("delivered dead letters are still there")
	}
	wh, err := standardwebhooks.NewWebhook(ep.Secrets[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, req := range rc.requests()[n:] {
		if req.header.Get("webhook-replay") != "true" {
			t.Errorf("a redelivery without webhook-replay: true: %v", req.header)
		}
		if err := wh.Verify(req.body, req.header); err != nil {
			t.Errorf("a redelivery's signature: %v", err)
		}
	}
	// Nothing went back into the log for everyone: the bystander got each event once, and
	// the log grew only by delivery records.
	for _, id := range ids {
		if c := bystander.count(id); c != 1 {
			t.Errorf("the other endpoint received %s %d times", id, c)
		}
	}
	_, logAfter, _ := bus.Bounds(t.Context(), h.js, bus.StreamEvents)
	var republished int
	_, err = bus.ReadRange(t.Context(), h.js, bus.Range{Stream: bus.StreamEvents, AfterSeq: logBefore, ToSeq: logAfter, Subjects: []string{"events.auth.>"}},
		func(bus.Message) error { republished++; return nil })
	if err != nil || republished != 0 {
		t.Errorf("%d events re-published into EVENTS (%v)", republished, err)
	}
	poll.Until(t, "the redeliveries' records", func() bool {
		n := 0
		for _, rec := range h.records(ep.ID, "telemetry.webhook-delivered") {
			if rec.Get("data.kind").Str == "redeliver" {
				n += int(rec.Get("data.total").Int())
			}
		}
		return n == 7
	})

	// Nothing left: nothing sent.
	if code, r, _ := send(t, app, admin, "POST", path, `{}`); code != 200 || r.Get("sent").Int() != 0 || r.Get("requests").Int() != 0 {
		t.Errorf("redeliver with none left: %d %s", code, r.Raw)
	}
}

func TestRedeliverChosenDeadLetters(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, admin := repairApp(t, h)
	h.run(webhooker.Deps{})
	ep, rc, accept, ids := deadLettered(t, h, 4, nil)
	_, list, _ := send(t, app, admin, "GET", "/api/v1/webhooks/"+ep.ID+"/dead-letters", "")
	seq := func(i int) uint64 { return list.Get(fmt.Sprintf("deadLetters.%d.seq", i)).Uint() }
	accept.Store(true)
	n := len(rc.requests())
	path := "/api/v1/webhooks/" + ep.ID + "/dead-letters/redeliver"
	code, r, _ := send(t, app, admin, "POST", path, fmt.Sprintf(`{"seqs":[%d,%d]}`, seq(3), seq(1)))
	if code != 200 || r.Get("sent").Int() != 2 || r.Get("remaining").Int() != 2 {
		t.Fatalf("redeliver seqs: %d %s", code, r.Raw)
	}
	var got []string
	for _, req := range rc.requests()[n:] {
		for _, e := range gjsonEvents(req.body) {
			got = append(got, e.Get("id").Str)
		}
	}
	if !slices.Equal(got, []string{ids[3], ids[1]}) {
		t.Errorf("sent %v, want the chosen ones, in the order given", got)
	}
	// Chosen ones that are not this endpoint's are refused, every one named; nothing sent.
	code, r, _ = send(t, app, admin, "POST", path, fmt.Sprintf(`{"seqs":[%d,%d,999999,%d]}`, seq(0), seq(3), seq(0)))
	if code != 400 || !strings.Contains(reasons(r), fmt.Sprintf("%d is not a dead letter", seq(3))) || !strings.Contains(reasons(r), "999999 is not a dead letter") ||
		!strings.Contains(reasons(r), "given twice") {
		t.Errorf("bad seqs: %d %s", code, r.Raw)
	}
	if len(h.deadLetters(ep.ID)) != 2 {
		t.Error("a refused redelivery changed the dead letters")
	}
}

func TestTestRouteAnswersWithTheReceiversAnswer(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, admin := repairApp(t, h)
	rc := newAnsweringReceiver(t, func(int, *http.Request) (int, string) { return http.StatusTeapot, strings.Repeat("x", 3000) })
	ep := h.endpoint(rc.srv.URL, func(e *webhooker.Endpoint) { e.Paused = true; e.Types = []string{"smtp.*"} })
	code, r, _ := send(t, app, admin, "POST", "/api/v1/webhooks/"+ep.ID+"/test", "")
	if code != 200 || r.Get("status").Int() != 418 || r.Get("ok").Bool() || len(r.Get("body").Str) != 1024 || !r.Get("latencyMs").Exists() ||
		r.Get("event.type").Str != webhooker.TestEventType {
		t.Fatalf("test: %d %s", code, r.Raw)
	}
	reqs := rc.requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests, want 1", len(reqs))
	}
	wh, _ := standardwebhooks.NewWebhook(ep.Secrets[0])
	if err := wh.Verify(reqs[0].body, reqs[0].header); err != nil {
		t.Errorf("the test request's signature: %v", err)
	}
	if e := gjsonEvents(reqs[0].body); len(e) != 1 || e[0].Get("type").Str != webhooker.TestEventType || e[0].Get("data.endpoint").Str != ep.ID {
		t.Errorf("test body %s", reqs[0].body)
	}
	if reqs[0].header.Get("webhook-replay") != "" {
		t.Error("a test request is not a replay")
	}
	poll.Until(t, "the test's record", func() bool {
		recs := h.records(ep.ID, "telemetry.webhook-error")
		return len(recs) == 1 && recs[0].Get("data.kind").Str == "test" && recs[0].Get("data.code").Int() == 418
	})

	// An endpoint that cannot be reached: status 0 and why.
	dead := h.endpoint("http://127.0.0.1:1/", nil)
	if code, r, _ := send(t, app, admin, "POST", "/api/v1/webhooks/"+dead.ID+"/test", "{}"); code != 200 || r.Get("status").Int() != 0 || r.Get("error").Str == "" {
		t.Errorf("test of an unreachable endpoint: %d %s", code, r.Raw)
	}
}

func TestAttemptsWithoutAnArchiverIs503(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, admin := repairApp(t, h)
	ep := h.endpoint("http://127.0.0.1:1/", nil)
	code, r, hdr := send(t, app, admin, "GET", "/api/v1/webhooks/"+ep.ID+"/attempts?limit=10", "")
	if code != 503 || !strings.Contains(r.Get("error").Str, "no archiver") || hdr.Get("Retry-After") == "" {
		t.Errorf("attempts with no archiver: %d %s", code, r.Raw)
	}
}

// TestRepairRoutesRefuseBadInputListingEveryReason: each route's 400 names every problem,
// and an unknown endpoint is 404 on every route.
func TestRepairRoutesRefuseBadInputListingEveryReason(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, admin := repairApp(t, h)
	ep := h.endpoint("http://127.0.0.1:1/", nil)
	base := "/api/v1/webhooks/" + ep.ID
	for _, tc := range []struct {
		name, method, path, body string
		want                     []string
	}{
		{"attempts", "GET", base + "/attempts?limit=0&cursor=nope&start=yesterday&end=2020-01-01T00:00:00Z&colour=red", "",
			[]string{"limit: \"0\"", "cursor:", "start: \"yesterday\"", `parameter "colour": unknown`}},
		{"attempts reversed", "GET", base + "/attempts?start=2026-01-02T00:00:00Z&end=2026-01-01T00:00:00Z", "", []string{"reversed"}},
		{"dead letters", "GET", base + "/dead-letters?after=-1&limit=5000&before=3", "",
			[]string{"after: \"-1\"", "limit: \"5000\"", `parameter "before": unknown`}},
		{"redeliver", "POST", base + "/dead-letters/redeliver", `{"limit":5000,"seqs":[1]}`, []string{"not both", "limit: want 1 to 1000"}},
		{"redeliver unknown field", "POST", base + "/dead-letters/redeliver", `{"lmit":5}`, []string{`unknown field "lmit"`}},
		{"replay", "POST", base + "/replay", `{"from":"yesterday","start":"2026-01-01T00:00:00Z","to":"soon"}`,
			[]string{"give from or start, not both", `from: "yesterday"`, `to: "soon"`}},
		{"replay without from", "POST", base + "/replay", `{}`, []string{"from: required"}},
		{"replay reversed", "POST", base + "/replay", `{"start":"2026-01-02T00:00:00Z","end":"2026-01-01T00:00:00Z"}`, []string{"start must be before end"}},
		{"replay not json", "POST", base + "/replay", `{"from":`, []string{"body:"}},
		{"test", "POST", base + "/test", `{"type":"x"}`, []string{`unknown field "type"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, r, _ := send(t, app, admin, tc.method, tc.path, tc.body)
			if code != 400 {
				t.Fatalf("%d %s, want 400", code, r.Raw)
			}
			for _, w := range tc.want {
				if !strings.Contains(reasons(r), w) {
					t.Errorf("errors:\n%s\nmissing %q", reasons(r), w)
				}
			}
		})
	}
	for _, rt := range []struct{ method, path string }{
		{"GET", "/attempts"}, {"GET", "/dead-letters"}, {"POST", "/dead-letters/redeliver"}, {"POST", "/replay"},
		{"GET", "/replay/abc"}, {"DELETE", "/replay/abc"}, {"POST", "/test"},
	} {
		if code, r, _ := send(t, app, admin, rt.method, "/api/v1/webhooks/nope"+rt.path, `{"from":"2026-01-01T00:00:00Z"}`); code != 404 {
			t.Errorf("%s %s of an unknown endpoint: %d %s, want 404", rt.method, rt.path, code, r.Raw)
		}
	}
	if code, _, _ := send(t, app, admin, "GET", base+"/replay/nojob", ""); code != 404 {
		t.Errorf("an unknown replay job: %d, want 404", code)
	}
}
