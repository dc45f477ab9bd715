package webhooker_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/mailpulse/mailpulse/services/webhooker"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/poll"
)

func TestDeliversEveryEventInLogOrderAndRecordsIt(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	rc := newReceiver(t, ok)
	h.run(webhooker.Deps{})
	ep := h.endpoint(rc.srv.URL, nil)
	h.waitConsumer(ep.ID)
	ids := h.publish(35, "auth.failed", "ev")
	h.publish(5, "smtp.ehlo", "other") // not subscribed
	poll.Until(t, "every event delivered", func() bool { return rc.hasAll(ids) })
	if got := rc.ids(); !slices.Equal(got, ids) {
		t.Errorf("received %v, want each once in log order %v", got, ids)
	}
	for _, r := range rc.requests() {
		if n := len(gjsonEvents(r.body)); n > 10 {
			t.Errorf("a request carried %d events, more than batch.maxEvents 10", n)
		}
	}
	poll.Until(t, "delivery records", func() bool {
		n := 0
		for _, r := range h.records(ep.ID, "telemetry.webhook-delivered") {
			n += int(r.Get("data.total").Int())
		}
		return n == len(ids)
	})
	if v := counterValue(t, h.reg, "mailpulse_webhook_delivered_events_total", ep.ID); v != 35 {
		t.Errorf("delivered metric = %v, want 35", v)
	}
}

func TestRetries500UntilDeliveredNoneLost(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	rc := newReceiver(t, func(n int, _ http.ResponseWriter, _ *http.Request) int {
		if n < 3 {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	})
	h.run(webhooker.Deps{})
	ep := h.endpoint(rc.srv.URL, nil)
	h.waitConsumer(ep.ID)
	ids := h.publish(25, "auth.failed", "ev")
	poll.Until(t, "every event delivered after the 500s", func() bool { return rc.hasAll(ids) })
	if got := rc.ids(); !slices.Equal(got, ids) {
		t.Errorf("order after retries: got %v, want %v", got, ids)
	}
	poll.Until(t, "error records", func() bool { return len(h.records(ep.ID, "telemetry.webhook-error")) == 3 })
	rec := h.records(ep.ID, "telemetry.webhook-error")[0]
	if rec.Get("data.code").Int() != 500 || rec.Get("data.attempt").Int() != 1 || rec.Get("data.nextRetry").Int() <= 0 {
		t.Errorf("first error record = %s, want code 500, attempt 1 and a next retry", rec.Raw)
	}
	// The same batch keeps its webhook-id across attempts.
	reqs := rc.requests()
	if reqs[0].header.Get("webhook-id") == "" || reqs[0].header.Get("webhook-id") != reqs[1].header.Get("webhook-id") {
		t.Errorf("webhook-id changed between attempts of one batch: %q, %q", reqs[0].header.Get("webhook-id"), reqs[1].header.Get("webhook-id"))
	}
	if len(h.deadLetters(ep.ID)) != 0 {
		t.Error("dead letters after a recovered endpoint")
	}
}

func TestRetryAfterHonouredOn503And429(t *testing.T) {
	t.Parallel()
	for _, status := range []int{http.StatusServiceUnavailable, http.StatusTooManyRequests} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			t.Parallel()
			h := newHarness(t)
			rc := newReceiver(t, func(n int, w http.ResponseWriter, _ *http.Request) int {
				if n == 0 {
					w.Header().Set("Retry-After", "1")
					return status
				}
				return http.StatusOK
			})
			h.run(webhooker.Deps{})
			ep := h.endpoint(rc.srv.URL, nil) // retry.initial is 50 ms: the wait is the header's
			h.waitConsumer(ep.ID)
			ids := h.publish(3, "auth.failed", "ev")
			poll.Until(t, "delivery after Retry-After", func() bool { return rc.hasAll(ids) })
			reqs := rc.requests()
			if gap := reqs[1].at.Sub(reqs[0].at); gap < 900*time.Millisecond {
				t.Errorf("second attempt %v after the first, want Retry-After's 1s", gap)
			}
		})
	}
}

func TestGoneDisablesEndpointAndResumeContinues(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	var gone atomic.Bool
	gone.Store(true)
	rc := newReceiver(t, func(int, http.ResponseWriter, *http.Request) int {
		if gone.Load() {
			return http.StatusGone
		}
		return http.StatusOK
	})
	h.run(webhooker.Deps{})
	ep := h.endpoint(rc.srv.URL, nil)
	h.waitConsumer(ep.ID)
	ids := h.publish(5, "auth.failed", "ev")
	poll.Until(t, "the endpoint disabled", func() bool {
		e, _ := h.eps.Get(ep.ID)
		return e.Disabled && strings.Contains(e.DisabledReason, "410")
	})
	poll.Until(t, "a disabled record", func() bool { return len(h.records(ep.ID, "telemetry.webhook-disabled")) >= 1 })
	n := len(rc.requests())
	gone.Store(false)
	if _, err := h.eps.SetPaused(t.Context(), ep.ID, false); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "every event delivered after resuming", func() bool { return rc.hasAll(ids) })
	if n == 0 {
		t.Error("no request before the endpoint was disabled")
	}
	if len(h.deadLetters(ep.ID)) != 0 {
		t.Error("a 410 sent events to the dead letters; they should wait in the log")
	}
}

func TestTimeoutThenSuccess(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	rc := newReceiver(t, func(n int, _ http.ResponseWriter, r *http.Request) int {
		if n == 0 {
			<-r.Context().Done() // accept, but never answer in time
			return http.StatusOK
		}
		return http.StatusOK
	})
	h.run(webhooker.Deps{})
	ep := h.endpoint(rc.srv.URL, func(e *webhooker.Endpoint) { e.Timeout = webhooker.Duration(300 * time.Millisecond) })
	h.waitConsumer(ep.ID)
	ids := h.publish(4, "auth.failed", "ev")
	poll.Until(t, "delivery after the timeout", func() bool { return rc.hasAll(ids) })
	poll.Until(t, "an error record for the timeout", func() bool {
		r := h.records(ep.ID, "telemetry.webhook-error")
		return len(r) == 1 && strings.Contains(r[0].Get("data.reason").Str, "deadline exceeded")
	})
}

func TestPermanent4xxGoesToDeadLettersWithTheResponse(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	rc := newReceiver(t, func(_ int, w http.ResponseWriter, _ *http.Request) int {
		w.Header().Set("Content-Type", "text/plain")
		return http.StatusUnprocessableEntity
	})
	h.run(webhooker.Deps{})
	ep := h.endpoint(rc.srv.URL, nil)
	h.waitConsumer(ep.ID)
	ids := h.publish(3, "auth.failed", "ev")
	poll.Until(t, "dead letters", func() bool { return len(h.deadLetters(ep.ID)) == len(ids) })
	dl := h.deadLetters(ep.ID)[0]
	if r := dl.Header.Get(bus.HeaderReason); !strings.Contains(r, "HTTP 422") {
		t.Errorf("dead letter reason %q, want the status", r)
	}
	if len(rc.requests()) != 1 {
		t.Errorf("%d requests, want 1 (a 4xx is not retried)", len(rc.requests()))
	}
}

func TestGivesUpAfterMaxAttempts(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	rc := newReceiver(t, func(int, http.ResponseWriter, *http.Request) int { return http.StatusBadGateway })
	h.run(webhooker.Deps{})
	ep := h.endpoint(rc.srv.URL, func(e *webhooker.Endpoint) { e.Retry.MaxAttempts = 3 })
	h.waitConsumer(ep.ID)
	h.publish(2, "auth.failed", "ev")
	poll.Until(t, "dead letters after 3 attempts", func() bool { return len(h.deadLetters(ep.ID)) == 2 })
	if r := h.deadLetters(ep.ID)[0].Header.Get(bus.HeaderReason); !strings.Contains(r, "gave up after 3 attempts") || !strings.Contains(r, "502") {
		t.Errorf("reason %q", r)
	}
	if n := len(rc.requests()); n != 3 {
		t.Errorf("%d requests, want 3", n)
	}
}

// TestKilledMidBatchThenRestarted: the webhooker's connection dies while the receiver holds
// a request; a new webhooker delivers everything (the held batch at least once).
func TestKilledMidBatchThenRestarted(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	held := make(chan struct{})
	var release atomic.Bool
	rc := newReceiver(t, func(n int, _ http.ResponseWriter, r *http.Request) int {
		if n == 0 {
			close(held)
			<-r.Context().Done()
			return http.StatusOK // too late: the client is gone
		}
		if !release.Load() {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	_, kill := h.run(webhooker.Deps{})
	ep := h.endpoint(rc.srv.URL, func(e *webhooker.Endpoint) { e.Timeout = webhooker.Duration(time.Second) })
	h.waitConsumer(ep.ID)
	ids := h.publish(30, "auth.failed", "ev")
	<-held
	kill()
	release.Store(true)
	h.run(webhooker.Deps{})
	poll.Until(t, "every event delivered by the restarted webhooker", func() bool { return rc.hasAll(ids) })
}

func TestTwoReplicasShareAnEndpoint(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	rc := newReceiver(t, ok)
	_, kill := h.run(webhooker.Deps{})
	h.run(webhooker.Deps{})
	ep := h.endpoint(rc.srv.URL, nil)
	h.waitConsumer(ep.ID)
	ids := h.publish(20, "auth.failed", "a")
	poll.Until(t, "first events", func() bool { return rc.hasAll(ids) })
	kill()
	more := h.publish(20, "auth.failed", "b")
	poll.Until(t, "events after one replica died", func() bool { return rc.hasAll(more) })
}

func TestSlowEndpointDoesNotDelayOthers(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	stuck := newReceiver(t, func(_ int, _ http.ResponseWriter, r *http.Request) int {
		<-r.Context().Done()
		return http.StatusOK
	})
	fast := newReceiver(t, ok)
	h.run(webhooker.Deps{})
	slow := h.endpoint(stuck.srv.URL, func(e *webhooker.Endpoint) { e.Timeout = webhooker.Duration(time.Minute) })
	quick := h.endpoint(fast.srv.URL, nil)
	h.waitConsumer(slow.ID)
	h.waitConsumer(quick.ID)
	ids := h.publish(50, "auth.failed", "ev")
	poll.Until(t, "the fast endpoint served while the other hangs", func() bool { return fast.hasAll(ids) })
}

func TestEndpointChangesApplyWithoutRestart(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	rc := newReceiver(t, ok)
	h.run(webhooker.Deps{})
	ep := h.endpoint(rc.srv.URL, nil)
	h.waitConsumer(ep.ID)
	first := h.publish(3, "auth.failed", "a")
	poll.Until(t, "delivery", func() bool { return rc.hasAll(first) })

	if _, err := h.eps.SetPaused(t.Context(), ep.ID, true); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "the worker stopped", func() bool { return gaugeValue(t, h.reg, "mailpulse_webhook_active_endpoints") == 0 })
	paused := h.publish(3, "auth.failed", "p")
	poll.Until(t, "the paused endpoint's events waiting in the log", func() bool {
		c, err := h.js.Consumer(t.Context(), bus.StreamEvents, webhooker.ConsumerName(ep.ID))
		if err != nil {
			return false
		}
		info, err := c.Info(t.Context())
		return err == nil && info.NumPending == 3 && info.NumAckPending == 0
	})
	for _, id := range paused {
		if rc.count(id) != 0 {
			t.Fatalf("%s delivered while paused", id)
		}
	}
	if _, err := h.eps.SetPaused(t.Context(), ep.ID, false); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "the waiting events after resuming", func() bool { return rc.hasAll(paused) })

	// A changed subscription applies at once.
	upd := ep
	upd.Types = []string{"smtp.*"}
	if _, err := h.eps.Update(t.Context(), ep.ID, upd); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "the consumer's new filter", func() bool {
		c, err := h.js.Consumer(t.Context(), bus.StreamEvents, webhooker.ConsumerName(ep.ID))
		return err == nil && slices.Equal(c.CachedInfo().Config.FilterSubjects, []string{"events.smtp.*"})
	})
	smtp := h.publish(2, "smtp.ehlo", "s")
	poll.Until(t, "events of the new types", func() bool { return rc.hasAll(smtp) })

	if err := h.eps.Delete(t.Context(), ep.ID); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "the deleted endpoint's consumer gone", func() bool {
		_, err := h.js.Consumer(t.Context(), bus.StreamEvents, webhooker.ConsumerName(ep.ID))
		return err != nil
	})
}

func TestFiltersByLevelAndSourceAndStartBeginning(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	before := h.publish(3, "auth.failed", "old")
	rc := newReceiver(t, ok)
	other := newReceiver(t, ok)
	h.run(webhooker.Deps{})
	backfill := h.endpoint(rc.srv.URL, func(e *webhooker.Endpoint) { e.Start = "beginning" })
	filtered := h.endpoint(other.srv.URL, func(e *webhooker.Endpoint) {
		e.MinLevel, e.Sources = "error", []string{"mx1.example.org"} // our events are warn
	})
	h.waitConsumer(filtered.ID)
	poll.Until(t, "the backfill", func() bool { return rc.hasAll(before) })
	after := h.publish(3, "auth.failed", "new")
	poll.Until(t, "live events after the backfill", func() bool { return rc.hasAll(after) })
	poll.Until(t, "the filtered endpoint's consumer to pass them", func() bool {
		c, err := h.js.Consumer(t.Context(), bus.StreamEvents, webhooker.ConsumerName(filtered.ID))
		if err != nil {
			return false
		}
		info, err := c.Info(t.Context())
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0 && info.AckFloor.Stream > 0
	})
	if n := len(other.requests()); n != 0 {
		t.Errorf("the error-level endpoint got %d requests for warn events", n)
	}
	_ = backfill
}

// TestNoDeliveryLoops: two endpoints subscribed to everything, telemetry included, deliver
// each other's records, but never their own, and the records die out.
func TestNoDeliveryLoops(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	a, b := newReceiver(t, ok), newReceiver(t, ok)
	h.run(webhooker.Deps{})
	all := func(e *webhooker.Endpoint) { e.Types = []string{"*"} }
	ea, eb := h.endpoint(a.srv.URL, all), h.endpoint(b.srv.URL, all)
	h.waitConsumer(ea.ID)
	h.waitConsumer(eb.ID)
	ids := h.publish(1, "auth.failed", "ev")
	poll.Until(t, "both deliveries", func() bool { return a.hasAll(ids) && b.hasAll(ids) })
	// Each endpoint gets the other's record of the first delivery; the delivery of a batch
	// of records only is not recorded, so it ends there.
	poll.Until(t, "the records, and the end of them", func() bool {
		return len(h.records(ea.ID, "telemetry.webhook-delivered")) == 1 && len(h.records(eb.ID, "telemetry.webhook-delivered")) == 1 &&
			pendingZero(t, h, ea.ID) && pendingZero(t, h, eb.ID) && len(recordsIn(a, "")) == 1 && len(recordsIn(b, "")) == 1
	})
	if n := len(recordsIn(a, ea.ID)); n != 0 {
		t.Errorf("endpoint a received %d records about itself", n)
	}
	if n := len(recordsIn(b, eb.ID)); n != 0 {
		t.Errorf("endpoint b received %d records about itself", n)
	}
}

func TestStandardSignatureVerifiesWithReferenceLibraryAcrossRotation(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	rc := newReceiver(t, ok)
	h.run(webhooker.Deps{})
	oldSecret, newSecret := "whsec_"+base64.StdEncoding.EncodeToString([]byte("0123456789abcdef01234567")), "whsec_"+base64.StdEncoding.EncodeToString([]byte("the new secret, 32 bytes long!!!"))
	ep := h.endpoint(rc.srv.URL, func(e *webhooker.Endpoint) { e.Secrets = []string{newSecret, oldSecret} })
	h.waitConsumer(ep.ID)
	ids := h.publish(2, "auth.failed", "ev")
	poll.Until(t, "delivery", func() bool { return rc.hasAll(ids) })
	r := rc.requests()[0]
	for _, s := range []string{oldSecret, newSecret} {
		wh, err := standardwebhooks.NewWebhook(s)
		if err != nil {
			t.Fatal(err)
		}
		if err := wh.Verify(r.body, r.header); err != nil {
			t.Errorf("Verify with %s…: %v", s[:10], err)
		}
	}
	if got := strings.Count(r.header.Get("webhook-signature"), "v1,"); got != 2 {
		t.Errorf("webhook-signature %q: want one v1 signature per secret", r.header.Get("webhook-signature"))
	}
	var body struct {
		Type      string                            `json:"type"`
		Timestamp string                            `json:"timestamp"`
		Data      struct{ Events []map[string]any } `json:"data"`
	}
	if err := json.Unmarshal(r.body, &body); err != nil || body.Type != "mailpulse.events" || len(body.Data.Events) != 2 || body.Data.Events[0]["level"] != "warn" {
		t.Errorf("standard body %s (%v)", r.body, err)
	}
}

// stalwartReceiver checks a request the way a receiver written for Stalwart's webhooks
// does: X-Signature is the base64 HMAC-SHA256 of the raw body under the key text, and the
// body is {"events":[{id, createdAt, type, data}]}.
func stalwartReceiver(key string, r received) error {
	m := hmac.New(sha256.New, []byte(key))
	m.Write(r.body)
	want := base64.StdEncoding.EncodeToString(m.Sum(nil))
	if !hmac.Equal([]byte(r.header.Get("X-Signature")), []byte(want)) {
		return errSignature
	}
	var p struct {
		Events []struct {
			ID        string         `json:"id"`
			CreatedAt time.Time      `json:"createdAt"`
			Type      string         `json:"type"`
			Data      map[string]any `json:"data"`
		} `json:"events"`
	}
	dec := json.NewDecoder(strings.NewReader(string(r.body)))
	dec.DisallowUnknownFields() // Stalwart's events have exactly these four fields
	if err := dec.Decode(&p); err != nil {
		return err
	}
	if len(p.Events) == 0 || p.Events[0].CreatedAt.Nanosecond() != 0 {
		return errShape
	}
	return nil
}

func TestStalwartFormatIsWhatAStalwartReceiverAccepts(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	rc := newReceiver(t, ok)
	h.run(webhooker.Deps{})
	ep := h.endpoint(rc.srv.URL, func(e *webhooker.Endpoint) {
		e.Format, e.Secrets = webhooker.FormatStalwart, []string{"my-stalwart-key"}
	})
	h.waitConsumer(ep.ID)
	ids := h.publish(3, "auth.failed", "ev")
	poll.Until(t, "delivery", func() bool { return rc.hasAll(ids) })
	for _, r := range rc.requests() {
		if err := stalwartReceiver("my-stalwart-key", r); err != nil {
			t.Errorf("a Stalwart receiver refuses %s: %v", r.body, err)
		}
		if r.header.Get("Content-Type") != "application/json" || r.header.Get("webhook-signature") != "" {
			t.Errorf("headers %v", r.header)
		}
	}
}

func TestBlockedAddressIsAPermanentFailure(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.run(webhooker.Deps{Resolver: fakeDNS{"hooks.internal.example": {netip.MustParseAddr("10.1.2.3")}}})
	ep := h.endpoint("http://hooks.internal.example/in", nil)
	h.waitConsumer(ep.ID)
	h.publish(2, "auth.failed", "ev")
	poll.Until(t, "dead letters", func() bool { return len(h.deadLetters(ep.ID)) == 2 })
	if r := h.deadLetters(ep.ID)[0].Header.Get(bus.HeaderReason); !strings.Contains(r, "10.1.2.3 is a private address") {
		t.Errorf("reason %q, want it to name the address and the range", r)
	}
}

func TestEachEventAloneWhenMaxWaitIsZero(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	rc := newReceiver(t, ok)
	h.run(webhooker.Deps{})
	zero := webhooker.Duration(0)
	ep := h.endpoint(rc.srv.URL, func(e *webhooker.Endpoint) { e.Batch.MaxWait = &zero })
	h.waitConsumer(ep.ID)
	ids := h.publish(5, "auth.failed", "ev")
	poll.Until(t, "delivery", func() bool { return rc.hasAll(ids) })
	for _, r := range rc.requests() {
		if n := len(gjsonEvents(r.body)); n != 1 {
			t.Errorf("a request carried %d events, want 1", n)
		}
	}
}
