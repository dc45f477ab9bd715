package webhooker_test

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	"github.com/tidwall/gjson"

	"github.com/mailpulse/mailpulse/services/webhooker"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/poll"
)

// consumerPosition is an endpoint's consumer position: delivered and acknowledged.
func consumerPosition(t *testing.T, h *harness, id string) (delivered, ackFloor, pending uint64) {
	t.Helper()
	c, err := h.js.Consumer(t.Context(), bus.StreamEvents, webhooker.ConsumerName(id))
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info.Delivered.Stream, info.AckFloor.Stream, info.NumPending
}

// replayed returns the event ids of the replayed requests (webhook-replay: true) a receiver
// answered with a 2xx, from the n-th request on.
func replayed(rc *receiver, n int) (ids []string, reqs []received) {
	for _, r := range rc.requests()[n:] {
		if r.header.Get("webhook-replay") != "true" || r.status/100 != 2 {
			continue
		}
		reqs = append(reqs, r)
		for _, e := range gjsonEvents(r.body) {
			ids = append(ids, e.Get("id").Str)
		}
	}
	return ids, reqs
}

// waitJob polls a replay until its status is want.
func waitJob(t *testing.T, send func(method, path, body string) (int, gjson.Result), path, want string) gjson.Result {
	t.Helper()
	var job gjson.Result
	poll.Until(t, "the replay "+want, func() bool {
		_, job = send("GET", path, "")
		return job.Get("status").Str == want
	})
	return job
}

func TestReplaySendsATimeRangeAgainWithoutMovingTheConsumer(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, admin := repairApp(t, h)
	call := func(method, path, body string) (int, gjson.Result) {
		code, r, _ := send(t, app, admin, method, path, body)
		return code, r
	}
	h.run(webhooker.Deps{})
	var hold atomic.Bool
	release := make(chan struct{})
	rc := newReceiver(t, func(_ int, _ http.ResponseWriter, r *http.Request) int {
		if r.Header.Get("webhook-replay") == "true" && hold.Load() {
			<-release
		}
		return http.StatusOK
	})
	ep := h.endpoint(rc.srv.URL, func(e *webhooker.Endpoint) {
		e.Batch.MaxEvents = 4
		e.Timeout = webhooker.Duration(30 * time.Second) // the receiver holds a replay's request below
	})
	h.waitConsumer(ep.ID)
	early := h.publish(3, "auth.failed", "a")
	from := time.Now().UTC() // after a's events were stored, before b's are
	inRange := h.publish(10, "auth.failed", "b")
	h.publish(2, "smtp.ehlo", "x") // not the endpoint's
	to := time.Now().UTC()
	late := h.publish(3, "auth.failed", "c")
	poll.Until(t, "live delivery", func() bool {
		return rc.hasAll(early) && rc.hasAll(inRange) && rc.hasAll(late) && pendingZero(t, h, ep.ID)
	})
	delivered, ackFloor, _ := consumerPosition(t, h, ep.ID)
	live := map[string]bool{}
	for _, r := range rc.requests() {
		live[r.header.Get("webhook-id")] = true
	}

	n := len(rc.requests())
	code, job, hdr := send(t, app, admin, "POST", "/api/v1/webhooks/"+ep.ID+"/replay",
		fmt.Sprintf(`{"from":%q,"to":%q}`, from.Format(time.RFC3339Nano), to.Format(time.RFC3339Nano)))
	if code != 202 || job.Get("id").Str == "" || job.Get("status").Str != "running" {
		t.Fatalf("POST replay: %d %s", code, job.Raw)
	}
	jobPath := "/api/v1/webhooks/" + ep.ID + "/replay/" + job.Get("id").Str
	if hdr.Get("Location") != jobPath {
		t.Errorf("Location %q, want %q", hdr.Get("Location"), jobPath)
	}
	done := waitJob(t, call, jobPath, "done")
	if done.Get("sent").Int() != 10 || done.Get("read").Int() != 10 || done.Get("requests").Int() != 3 || done.Get("failures").Int() != 0 || done.Get("logStart").Exists() {
		t.Errorf("finished replay %s: want 10 events sent in 3 requests of at most 4", done.Raw)
	}
	ids, reqs := replayed(rc, n)
	if !slices.Equal(ids, inRange) {
		t.Errorf("replayed %v, want exactly the range %v, in order", ids, inRange)
	}
	wh, _ := standardwebhooks.NewWebhook(ep.Secrets[0])
	for _, r := range reqs {
		if err := wh.Verify(r.body, r.header); err != nil {
			t.Errorf("a replayed request's signature: %v", err)
		}
		if live[r.header.Get("webhook-id")] {
			t.Errorf("a replayed request reuses the live delivery's webhook-id %s (receivers would drop it)", r.header.Get("webhook-id"))
		}
	}
	if d, a, p := consumerPosition(t, h, ep.ID); d != delivered || a != ackFloor || p != 0 {
		t.Errorf("the consumer moved: delivered %d→%d, ack floor %d→%d, pending %d", delivered, d, ackFloor, a, p)
	}
	poll.Until(t, "the replay's records", func() bool {
		n := 0
		for _, rec := range h.records(ep.ID, "telemetry.webhook-delivered") {
			if rec.Get("data.kind").Str == "replay" && rec.Get("data.job").Str == job.Get("id").Str {
				n++
			}
		}
		return n == 3
	})

	// One replay at a time: a second is refused while the first holds, any replica sees
	// it, and it can be stopped.
	hold.Store(true)
	n = len(rc.requests())
	code, held, _ := send(t, app, admin, "POST", "/api/v1/webhooks/"+ep.ID+"/replay", fmt.Sprintf(`{"start":%q}`, from.Format(time.RFC3339Nano)))
	if code != 202 {
		t.Fatalf("second replay: %d %s", code, held.Raw)
	}
	heldPath := "/api/v1/webhooks/" + ep.ID + "/replay/" + held.Get("id").Str
	poll.Until(t, "the replay's first request, held by the receiver", func() bool { return len(rc.requests()) > n })
	if code, r, _ := send(t, app, admin, "POST", "/api/v1/webhooks/"+ep.ID+"/replay", `{"from":"2020-01-01T00:00:00Z"}`); code != 409 || r.Get("job.id").Str != held.Get("id").Str {
		t.Errorf("a replay while one runs: %d %s, want 409 naming the running one", code, r.Raw)
	}
	other, otherAdmin := repairAppOn(t, h, h.openEndpoints(h.srv.Conn()))
	if code, r, _ := send(t, other, otherAdmin, "GET", heldPath, ""); code != 200 || r.Get("status").Str != "running" {
		t.Errorf("the job seen from another replica: %d %s", code, r.Raw)
	}
	if code, r, _ := send(t, other, otherAdmin, "DELETE", heldPath, ""); code != 202 || !r.Get("cancel").Bool() {
		t.Errorf("DELETE the job: %d %s", code, r.Raw)
	}
	close(release)
	canceled := waitJob(t, call, heldPath, "canceled")
	if canceled.Get("endedAt").Str == "" || canceled.Get("sent").Int() > 4 {
		t.Errorf("canceled job %s: want it stopped after its batch in flight", canceled.Raw)
	}
	if code, _ := call("DELETE", heldPath, ""); code != 409 {
		t.Errorf("DELETE of an ended job: %d, want 409", code)
	}

	// A range older than the log: what the log still holds is sent, and the job says
	// where the log starts.
	code, all, _ := send(t, app, admin, "POST", "/api/v1/webhooks/"+ep.ID+"/replay", `{"from":"2020-01-01T00:00:00Z"}`)
	if code != 202 {
		t.Fatalf("third replay: %d %s", code, all.Raw)
	}
	whole := waitJob(t, call, "/api/v1/webhooks/"+ep.ID+"/replay/"+all.Get("id").Str, "done")
	if whole.Get("sent").Int() != 16 || !whole.Get("logStart").Exists() {
		t.Errorf("replay of the whole log: %s, want the 16 events and logStart", whole.Raw)
	}
	if code, _ := call("GET", heldPath, ""); code != 404 {
		t.Errorf("an older job: %d, want 404 (only the latest is kept)", code)
	}
}

func TestReplayStopsOnAPermanentFailureAndFiltersLikeTheEndpoint(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, admin := repairApp(t, h)
	call := func(method, path, body string) (int, gjson.Result) {
		code, r, _ := send(t, app, admin, method, path, body)
		return code, r
	}
	var refuse atomic.Bool
	rc := newAnsweringReceiver(t, func(int, *http.Request) (int, string) {
		if refuse.Load() {
			return http.StatusBadRequest, "no replays here"
		}
		return http.StatusOK, ""
	})
	// No webhooker runs: a replay needs none, and works for a paused endpoint too.
	ep := h.endpoint(rc.srv.URL, func(e *webhooker.Endpoint) { e.MinLevel = "error"; e.Paused = true })
	from := time.Now().UTC()
	h.publish(5, "auth.failed", "warn") // warn: below the endpoint's level
	code, job, _ := send(t, app, admin, "POST", "/api/v1/webhooks/"+ep.ID+"/replay", fmt.Sprintf(`{"from":%q}`, from.Format(time.RFC3339Nano)))
	if code != 202 {
		t.Fatalf("POST replay: %d %s", code, job.Raw)
	}
	path := "/api/v1/webhooks/" + ep.ID + "/replay/" + job.Get("id").Str
	if j := waitJob(t, call, path, "done"); j.Get("skipped").Int() != 5 || j.Get("sent").Int() != 0 || len(rc.requests()) != 0 {
		t.Errorf("replay of events below the endpoint's level: %s, %d requests", j.Raw, len(rc.requests()))
	}

	refuse.Store(true)
	upd := ep
	upd.MinLevel = "info"
	if _, err := h.eps.Update(t.Context(), ep.ID, upd); err != nil {
		t.Fatal(err)
	}
	code, job, _ = send(t, app, admin, "POST", "/api/v1/webhooks/"+ep.ID+"/replay", fmt.Sprintf(`{"from":%q}`, from.Format(time.RFC3339Nano)))
	if code != 202 {
		t.Fatalf("POST replay: %d %s", code, job.Raw)
	}
	failed := waitJob(t, call, "/api/v1/webhooks/"+ep.ID+"/replay/"+job.Get("id").Str, "failed")
	if !strings.Contains(failed.Get("error").Str, "permanent failure") || !strings.Contains(failed.Get("error").Str, "HTTP 400") ||
		failed.Get("requests").Int() != 1 || failed.Get("sent").Int() != 0 || failed.Get("position").Exists() {
		t.Errorf("replay refused with 400: %s, want failed at once, at its start", failed.Raw)
	}
	poll.Until(t, "the failed attempt's record", func() bool {
		recs := h.records(ep.ID, "telemetry.webhook-error")
		return len(recs) == 1 && recs[0].Get("data.kind").Str == "replay" && recs[0].Get("data.code").Int() == 400 &&
			strings.Contains(recs[0].Get("data.reason").Str, "replay stopped")
	})
	if n := len(h.deadLetters(ep.ID)); n != 0 {
		t.Errorf("a failed replay made %d dead letters", n)
	}
}
