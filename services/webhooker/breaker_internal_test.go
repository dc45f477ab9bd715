package webhooker

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)

func testPolicy() Breaker {
	return Breaker{Failures: 3, Cooldown: Duration(30 * time.Second), MaxCooldown: Duration(2 * time.Minute)}
}

// within reports whether d is nominal ±20 % (the jitter).
func within(d, nominal time.Duration) bool {
	return d >= nominal*8/10 && d <= nominal*12/10
}

func TestCircuitOpensAfterConsecutiveFailuresAndProbesWithGrowingCooldown(t *testing.T) {
	c := newCircuit(testPolicy(), Health{})
	now := t0
	for i := 1; i <= 2; i++ {
		if c.failed(now, 1, now, "HTTP 500") {
			t.Fatalf("opened after %d failures, want 3", i)
		}
		if d := c.blocked(now); d != 0 {
			t.Fatalf("blocked %v while closed", d)
		}
		now = now.Add(time.Second)
	}
	if !c.failed(now, 1, now, "HTTP 502") {
		t.Fatal("not opened after 3 consecutive failures")
	}
	if c.state != stateOpen || !c.since.Equal(t0) {
		t.Fatalf("state %v since %v, want open since the first failure %v", c.state, c.since, t0)
	}
	h := c.health()
	if h.Breaker != BreakerOpen || !h.FailingSince.Equal(t0) || h.Cooldown.D() != 30*time.Second || h.LastError != "HTTP 502" {
		t.Errorf("health %+v", h)
	}
	// Open: no fetching until the probe; then half-open.
	for _, want := range []time.Duration{30 * time.Second, time.Minute, 2 * time.Minute, 2 * time.Minute} {
		d := c.blocked(now)
		if !within(d, want) {
			t.Fatalf("blocked for %v, want %v ±20%%", d, want)
		}
		now = now.Add(d)
		if c.blocked(now) != 0 || c.state != stateHalfOpen {
			t.Fatalf("at the probe: state %v, want half-open", c.state)
		}
		if !c.failed(now, 1, now, "HTTP 503") {
			t.Fatal("a failed probe did not open the breaker again")
		}
	}
	if c.failingFor(now) < 5*time.Minute {
		t.Errorf("failingFor = %v, want the whole run", c.failingFor(now))
	}
	now = now.Add(c.blocked(now))
	c.blocked(now)
	if !c.succeeded() || c.state != stateClosed || c.failingFor(now) != 0 || c.health().Breaker != BreakerClosed {
		t.Fatalf("one success did not close the breaker: %+v", c)
	}
	if c.succeeded() {
		t.Error("a success with the breaker closed reported a transition")
	}
	// After closing, the count starts again.
	for range 2 {
		if c.failed(now, 1, now, "x") {
			t.Error("opened again before 3 new failures")
		}
	}
}

func TestCircuitSuccessForgetsFailures(t *testing.T) {
	c := newCircuit(testPolicy(), Health{})
	for range 10 {
		c.failed(t0, 1, t0, "x")
		c.failed(t0, 1, t0, "x")
		if c.succeeded() {
			t.Fatal("a success before the breaker opened reported a transition")
		}
	}
	if c.state != stateClosed {
		t.Error("alternating failures and successes opened the breaker")
	}
}

// The batch's attempt number counts the failures of every replica on it: a worker that
// sees the 3rd attempt of a batch fail opens the breaker although it saw no failure itself,
// and dates the run from the batch's first attempt.
func TestCircuitCountsTheBatchAttemptsOfOtherReplicas(t *testing.T) {
	c := newCircuit(testPolicy(), Health{})
	first := t0.Add(-time.Minute)
	if !c.failed(t0, 3, first, "HTTP 500") {
		t.Fatal("the 3rd failed attempt of a batch did not open the breaker")
	}
	if !c.since.Equal(first) {
		t.Errorf("since = %v, want the batch's first attempt %v", c.since, first)
	}
}

// A worker starts from the stored health: open until the probe, and the failure clock
// kept.
func TestCircuitStartsFromTheStoredHealth(t *testing.T) {
	since, probe := t0.Add(-48*time.Hour), t0.Add(time.Minute)
	c := newCircuit(testPolicy(), Health{Breaker: BreakerOpen, FailingSince: &since, ProbeAt: &probe, Cooldown: Duration(2 * time.Minute)})
	if d := c.blocked(t0); d != time.Minute {
		t.Errorf("blocked %v, want until the stored probe", d)
	}
	if c.failingFor(t0) != 48*time.Hour {
		t.Errorf("failingFor = %v, want 48h", c.failingFor(t0))
	}
	c.blocked(probe)
	c.failed(probe, 1, probe, "x")
	if c.cooldown != 2*time.Minute {
		t.Errorf("cooldown %v after a failed probe, want the maximum kept", c.cooldown)
	}
}

func TestHealthJSON(t *testing.T) {
	b, err := json.Marshal(Endpoint{}.Health)
	if err != nil || string(b) != `{"breaker":"closed"}` {
		t.Errorf("zero health = %s %v, want closed", b, err)
	}
	since := t0
	b, _ = json.Marshal(Health{Breaker: BreakerOpen, FailingSince: &since, ProbeAt: &since, Cooldown: Duration(time.Minute), LastError: "HTTP 503"})
	var back Health
	if err := json.Unmarshal(b, &back); err != nil || back.Breaker != BreakerOpen || !back.FailingSince.Equal(t0) || back.Cooldown.D() != time.Minute {
		t.Errorf("round trip %s = %+v %v", b, back, err)
	}
}

func TestBreakerPolicyValidation(t *testing.T) {
	cfg := DefaultConfig()
	g := cfg.guard(nil)
	base := Endpoint{ID: "ep", URL: "https://hooks.example.org/in", Types: []string{"*"}, Format: FormatStalwart}
	base.setDefaults()
	if b := base.Breaker; b.Failures != 5 || b.Cooldown.D() != 30*time.Second || b.MaxCooldown.D() != 10*time.Minute || base.DisableAfter != nil {
		t.Errorf("defaults %+v %v", b, base.DisableAfter)
	}
	never, short, long := Duration(0), Duration(time.Second), Duration(100*24*time.Hour)
	for name, tc := range map[string]struct {
		edit func(*Endpoint)
		want []string
	}{
		"defaults":       {func(*Endpoint) {}, nil},
		"stored before":  {func(e *Endpoint) { e.Breaker = Breaker{} }, nil},
		"never disabled": {func(e *Endpoint) { e.DisableAfter = &never }, nil},
		"failures":       {func(e *Endpoint) { e.Breaker.Failures = 101 }, []string{"breaker.failures"}},
		"cooldowns": {func(e *Endpoint) {
			e.Breaker.Cooldown, e.Breaker.MaxCooldown = Duration(time.Hour), Duration(time.Minute)
		}, []string{"breaker.maxCooldown: must not be below"}},
		"disableAfter short": {func(e *Endpoint) { e.DisableAfter = &short }, []string{"disableAfter: 1s"}},
		"disableAfter long":  {func(e *Endpoint) { e.DisableAfter = &long }, []string{"disableAfter: 2400h"}},
	} {
		t.Run(name, func(t *testing.T) {
			e := base
			tc.edit(&e)
			_, err := e.compile(g)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("compile = %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("compile accepted it, want %v", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("compile = %v, want it to say %q", err, w)
				}
			}
		})
	}
	p := &plan{}
	if p.disableAfter(time.Hour) != time.Hour {
		t.Error("an endpoint without disableAfter does not take the webhooker's")
	}
	p.DisableAfter = &never
	if p.disableAfter(time.Hour) != 0 {
		t.Error("disableAfter 0 is not never")
	}
}

func TestConfigDisableAfter(t *testing.T) {
	c := DefaultConfig()
	if c.DisableAfter != 72*time.Hour {
		t.Errorf("default disable_after = %v, want 72h", c.DisableAfter)
	}
	c.DisableAfter = time.Second
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "disable_after") {
		t.Errorf("Validate = %v, want disable_after refused", err)
	}
}
