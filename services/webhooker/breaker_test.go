package webhooker_test

import (
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailpulse/mailpulse/services/webhooker"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/poll"
)

// offsetClock is the real clock moved forward by what the test adds: waits computed from
// it keep their real length, and days can pass at once.
type offsetClock struct{ offset atomic.Int64 }

func (c *offsetClock) now() time.Time                     { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *offsetClock) advance(d time.Duration)            { c.offset.Add(int64(d)) }
func failing(int, http.ResponseWriter, *http.Request) int { return http.StatusInternalServerError }

// switchable answers 500 until ok is set.
func switchable(ok *atomic.Bool) func(int, http.ResponseWriter, *http.Request) int {
	return func(int, http.ResponseWriter, *http.Request) int {
		if ok.Load() {
			return http.StatusOK
		}
		return http.StatusInternalServerError
	}
}

// labeledGauge is a gauge's value for an endpoint, or -1 without one.
func labeledGauge(t *testing.T, reg *prometheus.Registry, name, endpoint string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "endpoint" && l.GetValue() == endpoint {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return -1
}

func consumerInfo(t *testing.T, h *harness, id string) *jetstream.ConsumerInfo {
	t.Helper()
	c, err := h.js.Consumer(t.Context(), bus.StreamEvents, webhooker.ConsumerName(id))
	if err != nil {
		return nil
	}
	info, err := c.Info(t.Context())
	if err != nil {
		return nil
	}
	return info
}

func health(h *harness, id string) webhooker.Health {
	ep, _ := h.eps.Get(id)
	return ep.Health
}

// TestBreakerOpensStopsFetchingAndProbes: after breaker.failures consecutive failures the
// worker stops fetching (the events wait in the log, the failed batch in the server), the
// state is in the endpoint and the gauge, probes come after a cool-down that doubles up to
// its maximum, and one success closes the breaker, delivering everything in order.
func TestBreakerOpensStopsFetchingAndProbes(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	var up atomic.Bool
	rc := newReceiver(t, switchable(&up))
	h.run(webhooker.Deps{})
	const cooldown, maxCooldown = 100 * time.Millisecond, 400 * time.Millisecond
	ep := h.endpoint(rc.srv.URL, func(e *webhooker.Endpoint) {
		e.Retry.Initial, e.Retry.Max = webhooker.Duration(10*time.Millisecond), webhooker.Duration(20*time.Millisecond)
		e.Breaker = webhooker.Breaker{Failures: 3, Cooldown: webhooker.Duration(cooldown), MaxCooldown: webhooker.Duration(maxCooldown)}
	})
	h.waitConsumer(ep.ID)
	ids := h.publish(25, "auth.failed", "ev")

	poll.Until(t, "the breaker open in the endpoint", func() bool { return health(h, ep.ID).Breaker == webhooker.BreakerOpen })
	hl := health(h, ep.ID)
	if hl.FailingSince == nil || hl.ProbeAt == nil || !strings.Contains(hl.LastError, "HTTP 500") {
		t.Errorf("health %+v, want since, probe and the last error", hl)
	}
	if n := len(rc.requests()); n < 3 {
		t.Errorf("breaker open after %d requests, want 3", n)
	}
	if g := labeledGauge(t, h.reg, "mailpulse_webhook_breaker_state", ep.ID); g != 1 && g != 2 {
		t.Errorf("breaker gauge %v while open, want 1 (or 2 while probing)", g)
	}
	// The events wait in the log: the failed batch held for the probe, the rest not
	// fetched.
	poll.Until(t, "the events waiting in the log", func() bool {
		info := consumerInfo(t, h, ep.ID)
		return info != nil && info.NumAckPending <= 10 && info.NumPending+uint64(info.NumAckPending) == 25
	})
	// Four failed probes: the cool-down doubles, up to its maximum.
	poll.Until(t, "four probes", func() bool { return len(rc.requests()) >= 7 })
	poll.Until(t, "the cool-down at its maximum", func() bool { return health(h, ep.ID).Cooldown.D() == maxCooldown })
	reqs := rc.requests()
	for i, want := range []time.Duration{cooldown, 2 * cooldown, 4 * cooldown, maxCooldown} {
		if gap := reqs[3+i].at.Sub(reqs[2+i].at); gap < want*8/10 {
			t.Errorf("probe %d came %v after the previous request, want at least the cool-down %v (-20%% jitter)", i+1, gap, want)
		}
	}

	up.Store(true)
	poll.Until(t, "every event delivered after the probe succeeded", func() bool { return rc.hasAll(ids) })
	if got := rc.ids(); !slices.Equal(got, ids) {
		t.Errorf("received %v, want each once in log order", got)
	}
	poll.Until(t, "the breaker closed", func() bool {
		hl := health(h, ep.ID)
		return hl.Breaker == webhooker.BreakerClosed && hl.FailingSince == nil &&
			labeledGauge(t, h.reg, "mailpulse_webhook_breaker_state", ep.ID) == 0
	})
	if len(h.deadLetters(ep.ID)) != 0 {
		t.Error("dead letters from an endpoint that recovered")
	}
}

// TestBreakerSharedByReplicas: the state written by the replica whose failure opened the
// breaker stops every replica: between the opening and the probe no request at all, not
// even for events published meanwhile, which have free ack slots (the failed batch is
// smaller than the batch size) and which a replica with a closed breaker would send at
// once.
func TestBreakerSharedByReplicas(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	var up atomic.Bool
	rc := newReceiver(t, switchable(&up))
	h.run(webhooker.Deps{})
	h.run(webhooker.Deps{})
	const cooldown = 500 * time.Millisecond
	ep := h.endpoint(rc.srv.URL, func(e *webhooker.Endpoint) {
		e.Retry.Initial, e.Retry.Max = webhooker.Duration(50*time.Millisecond), webhooker.Duration(100*time.Millisecond)
		e.Breaker = webhooker.Breaker{Failures: 4, Cooldown: webhooker.Duration(cooldown), MaxCooldown: webhooker.Duration(cooldown)}
	})
	h.waitConsumer(ep.ID)
	ids := h.publish(3, "auth.failed", "ev")
	poll.Until(t, "the breaker open", func() bool { return health(h, ep.ID).Breaker == webhooker.BreakerOpen })
	probe := *health(h, ep.ID).ProbeAt
	ids = append(ids, h.publish(5, "auth.failed", "late")...)
	poll.Until(t, "the probe", func() bool {
		r := rc.requests()
		return len(r) > 0 && r[len(r)-1].at.After(probe)
	})
	// The breaker opened at probe - cooldown ±20 %.
	quietFrom, quietTo := probe.Add(-cooldown*8/10+150*time.Millisecond), probe.Add(-10*time.Millisecond)
	for i, r := range rc.requests() {
		if r.at.After(quietFrom) && r.at.Before(quietTo) {
			t.Errorf("request %d at %v, while the breaker was open (probe at %v)", i+1, r.at.Format(time.StampMicro), probe.Format(time.StampMicro))
		}
	}
	up.Store(true)
	poll.Until(t, "every event delivered", func() bool { return rc.hasAll(ids) })
	poll.Until(t, "the breaker closed", func() bool { return health(h, ep.ID).Breaker == webhooker.BreakerClosed })
}

// TestDisabledAfterFailingLongerThanDisableAfter: an endpoint failing for longer than the
// webhooker's disable_after (72h by default) is disabled like a 410, with the reason and a
// telemetry.webhook-disabled record; its events wait in the log (no dead letters), and
// resuming it delivers them, each once, in order. One with disableAfter 0 is never
// disabled.
func TestDisabledAfterFailingLongerThanDisableAfter(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	clock := &offsetClock{}
	webhooker.SetClock(h.eps, clock.now)
	var up atomic.Bool
	rc := newReceiver(t, switchable(&up))
	forever := newReceiver(t, failing)
	h.run(webhooker.Deps{Endpoints: h.eps})
	fast := func(e *webhooker.Endpoint) {
		e.Retry.Initial, e.Retry.Max = webhooker.Duration(10*time.Millisecond), webhooker.Duration(20*time.Millisecond)
		e.Breaker = webhooker.Breaker{Failures: 2, Cooldown: webhooker.Duration(50 * time.Millisecond), MaxCooldown: webhooker.Duration(100 * time.Millisecond)}
	}
	ep := h.endpoint(rc.srv.URL, fast)
	never := h.endpoint(forever.srv.URL, func(e *webhooker.Endpoint) {
		fast(e)
		zero := webhooker.Duration(0)
		e.DisableAfter = &zero
	})
	h.waitConsumer(ep.ID)
	h.waitConsumer(never.ID)
	ids := h.publish(5, "auth.failed", "ev")
	poll.Until(t, "both breakers open", func() bool {
		return health(h, ep.ID).Breaker == webhooker.BreakerOpen && health(h, never.ID).Breaker == webhooker.BreakerOpen
	})
	since := *health(h, ep.ID).FailingSince

	clock.advance(73 * time.Hour)
	poll.Until(t, "the endpoint disabled", func() bool { e, _ := h.eps.Get(ep.ID); return e.Disabled })
	e, _ := h.eps.Get(ep.ID)
	if !strings.Contains(e.DisabledReason, "failing continuously since "+since.UTC().Format(time.RFC3339)) || !strings.Contains(e.DisabledReason, "HTTP 500") {
		t.Errorf("reason %q, want since when and the last error", e.DisabledReason)
	}
	if e.DisabledAt == nil || e.DisabledAt.Sub(since) < 73*time.Hour {
		t.Errorf("disabled at %v, want the injected clock's time", e.DisabledAt)
	}
	if e.Health.Breaker != webhooker.BreakerClosed || e.Health.FailingSince != nil {
		t.Errorf("health %+v kept by the disabling, want it cleared for a fresh start", e.Health)
	}
	poll.Until(t, "a disabled record", func() bool {
		r := h.records(ep.ID, "telemetry.webhook-disabled")
		return len(r) == 1 && strings.Contains(r[0].Get("data.reason").Str, "failing continuously")
	})
	poll.Until(t, "the events waiting in the log", func() bool {
		info := consumerInfo(t, h, ep.ID)
		return info != nil && info.NumPending+uint64(info.NumAckPending) == 5
	})
	if len(h.deadLetters(ep.ID)) != 0 {
		t.Error("the disabled endpoint's events went to the dead letters")
	}

	// disableAfter 0: still probing, never disabled.
	n := len(forever.requests())
	poll.Until(t, "more probes of the never-disabled endpoint", func() bool { return len(forever.requests()) >= n+2 })
	if e, _ := h.eps.Get(never.ID); e.Disabled {
		t.Errorf("endpoint with disableAfter 0 disabled: %s", e.DisabledReason)
	}

	up.Store(true)
	if _, err := h.eps.SetPaused(t.Context(), ep.ID, false); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "every event after resuming", func() bool { return rc.hasAll(ids) })
	if got := rc.ids(); !slices.Equal(got, ids) {
		t.Errorf("after resuming: received %v, want each once in log order %v", got, ids)
	}
}

// TestRetriesRunningOutNearTheDisableHorizonDisableInsteadOfDeadLettering: when a batch's
// retries run out on an endpoint that has failed all along and would be disabled before
// the batch's next attempt anyway, the endpoint is disabled and the batch stays in the log
// (resuming finds it) rather than in the dead letters.
func TestRetriesRunningOutNearTheDisableHorizonDisableInsteadOfDeadLettering(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	clock := &offsetClock{}
	webhooker.SetClock(h.eps, clock.now)
	rc := newReceiver(t, failing)
	h.run(webhooker.Deps{Endpoints: h.eps})
	hour := webhooker.Duration(time.Hour)
	ep := h.endpoint(rc.srv.URL, func(e *webhooker.Endpoint) {
		e.Retry = webhooker.Retry{Initial: webhooker.Duration(time.Second), Max: webhooker.Duration(2 * time.Second), MaxAttempts: 2}
		e.Breaker.Failures = 100
		e.DisableAfter = &hour
	})
	h.waitConsumer(ep.ID)
	h.publish(3, "auth.failed", "ev")
	poll.Until(t, "the first attempt", func() bool { return len(rc.requests()) == 1 })
	// The second and last attempt comes 1 s ±20 % after the first: 0.8 s or more short
	// of the hour on this clock, and the next would be 2 s ±20 % later, after it.
	clock.advance(time.Hour - 2*time.Second)
	poll.Until(t, "the endpoint disabled", func() bool { e, _ := h.eps.Get(ep.ID); return e.Disabled })
	if n := len(rc.requests()); n != 2 {
		t.Errorf("%d requests, want 2", n)
	}
	if len(h.deadLetters(ep.ID)) != 0 {
		t.Error("the batch went to the dead letters")
	}
	poll.Until(t, "the batch in the log", func() bool {
		info := consumerInfo(t, h, ep.ID)
		return info != nil && info.NumPending+uint64(info.NumAckPending) == 3
	})
}

// TestConsumerPendingMetric: the lag gauge is the consumer's pending plus ack-pending, read
// at each scrape, for paused endpoints too.
func TestConsumerPendingMetric(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	var up atomic.Bool
	rc := newReceiver(t, switchable(&up))
	h.run(webhooker.Deps{})
	ep := h.endpoint(rc.srv.URL, func(e *webhooker.Endpoint) {
		e.Breaker = webhooker.Breaker{Failures: 1, Cooldown: webhooker.Duration(2 * time.Second), MaxCooldown: webhooker.Duration(2 * time.Second)}
	})
	h.waitConsumer(ep.ID)
	const metric = "mailpulse_webhook_consumer_pending"
	if g := labeledGauge(t, h.reg, metric, ep.ID); g != 0 {
		t.Errorf("lag %v before any event, want 0", g)
	}
	ids := h.publish(25, "auth.failed", "ev")
	poll.Until(t, "the lag of an endpoint whose breaker is open", func() bool { return labeledGauge(t, h.reg, metric, ep.ID) == 25 })
	if _, err := h.eps.SetPaused(t.Context(), ep.ID, true); err != nil {
		t.Fatal(err)
	}
	h.publish(5, "auth.failed", "more")
	poll.Until(t, "the lag of the paused endpoint growing", func() bool { return labeledGauge(t, h.reg, metric, ep.ID) == 30 })

	// The failed batch comes back at the next probe (2 s), to an endpoint that answers.
	up.Store(true)
	if _, err := h.eps.SetPaused(t.Context(), ep.ID, false); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "every event delivered", func() bool { return rc.hasAll(ids) })
	poll.Until(t, "no lag", func() bool { return labeledGauge(t, h.reg, metric, ep.ID) == 0 })
}
