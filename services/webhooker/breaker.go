package webhooker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// The circuit breaker and the disabling of an endpoint that fails for days.
//
// An endpoint's breaker opens after Breaker.Failures consecutive failed requests: its
// workers stop fetching (the events wait in the log, not in memory, and the batch that
// failed is held by the server until the probe), then, after a cool-down, one request
// probes the endpoint (half-open). A success closes the breaker; a failure opens it again
// for twice as long, up to Breaker.MaxCooldown.
//
// Replicas share an endpoint, so they share its breaker through the endpoint's record in
// the WEBHOOKS bucket (Health), written only on the breaker's transitions: opening, opening
// again after a failed probe, closing. Never per request. Every write restarts the
// endpoint's worker on every replica (the record changed), which starts from the state
// written. The consecutive failures before the breaker opens are counted by each worker,
// and also by JetStream: the attempt number of the batch (its delivery count) is the number
// of failed requests, on any replica, since the batch was first tried, so replicas taking
// turns on a failing batch open the breaker as one would (a delivery cut short by a stop
// counts too: at worst the breaker opens a request early). Replicas that split a batch
// (both pulled at once) probe at once, one request each.
//
// An endpoint that has failed continuously (no 2xx) for longer than its disableAfter is
// disabled like one that answers 410 Gone: its events wait in the log, and resuming it
// continues exactly where it stopped. The failure clock starts at the first failure of the
// run that opened the breaker, is kept in the record (Health.FailingSince), survives
// restarts, and stops at the first success. Changing the definition (PUT) clears the
// health, and so does disabling, so that an endpoint resumed after being disabled starts
// afresh; pausing and resuming keeps it (the endpoint was failing before, and nothing says
// it was fixed: the probe comes when it was due).
//
// Why not github.com/sony/gobreaker (in the module graph through watermill): importing it
// would make it a direct requirement (a go.mod change), and it does not fit: its open
// period is fixed (no doubling), it reads time.Now (no injected clock), it guards calls
// (Execute returns ErrOpenState) where a worker must rather not fetch, and its counts live
// in one process where ours must be shared with the replicas. The state machine is a few
// dozen lines (circuit, below).

// Breaker is an endpoint's circuit breaker policy.
type Breaker struct {
	// Failures is how many consecutive failed requests open the breaker.
	Failures int `json:"failures"`
	// Cooldown is how long the breaker stays open the first time; each failed probe
	// doubles it, up to MaxCooldown.
	Cooldown    Duration `json:"cooldown"`
	MaxCooldown Duration `json:"maxCooldown"`
}

// Defaults of the breaker and the disabling.
const (
	DefaultBreakerFailures = 5
	DefaultCooldown        = 30 * time.Second
	DefaultMaxCooldown     = 10 * time.Minute
	// DefaultDisableAfter is how long an endpoint may fail continuously before it is
	// disabled, when neither it nor the configuration says (Svix waits 5 days, Standard
	// Webhooks says "about 3").
	DefaultDisableAfter = 72 * time.Hour

	maxBreakerFailures = 100
	minDisableAfter    = time.Minute
	maxDisableAfter    = 90 * 24 * time.Hour
)

// Breaker states, as Health.Breaker writes them.
const (
	BreakerClosed = "closed"
	BreakerOpen   = "open"
)

// Health is the state of an endpoint's deliveries that its webhookers share: written by
// them in the endpoint's record on the breaker's transitions only, shown by the API, never
// set through it.
type Health struct {
	// Breaker is "closed" (delivering) or "open" (nothing is fetched until ProbeAt; then
	// one request decides: the half-open state).
	Breaker string `json:"breaker"`
	// FailingSince is the first failure of the run that opened the breaker.
	FailingSince *time.Time `json:"failingSince,omitempty"`
	// ProbeAt is when the next probe goes out (past: it is due or under way).
	ProbeAt *time.Time `json:"probeAt,omitempty"`
	// Cooldown is how long the breaker stays open this time.
	Cooldown Duration `json:"cooldown,omitempty"`
	// LastError is what the request that opened it came to.
	LastError string `json:"lastError,omitempty"`
}

// MarshalJSON writes the zero Health (an endpoint stored before breakers existed, or never
// failing) as closed.
func (h Health) MarshalJSON() ([]byte, error) {
	type plain Health
	p := plain(h)
	if p.Breaker == "" {
		p.Breaker = BreakerClosed
	}
	return json.Marshal(p)
}

func (b *Breaker) setDefaults() {
	if b.Failures == 0 {
		b.Failures = DefaultBreakerFailures
	}
	if b.Cooldown == 0 {
		b.Cooldown = Duration(DefaultCooldown)
	}
	if b.MaxCooldown == 0 {
		b.MaxCooldown = Duration(max(DefaultMaxCooldown, b.Cooldown.D()))
	}
}

// checkHealthPolicy reports the problems of the breaker and disableAfter. Zero values are
// the defaults (an endpoint stored before breakers existed has none).
func (e Endpoint) checkHealthPolicy() []string {
	var probs []string
	b := e.Breaker
	if b.Failures < 0 || b.Failures > maxBreakerFailures {
		probs = append(probs, fmt.Sprintf("breaker.failures: want 1 to %d", maxBreakerFailures))
	}
	if b.Cooldown != 0 {
		checkDuration(&probs, "breaker.cooldown", b.Cooldown, 10*time.Millisecond, time.Hour)
	}
	if b.MaxCooldown != 0 {
		checkDuration(&probs, "breaker.maxCooldown", b.MaxCooldown, 10*time.Millisecond, 24*time.Hour)
	}
	if b.Cooldown > 0 && b.MaxCooldown > 0 && b.MaxCooldown < b.Cooldown {
		probs = append(probs, "breaker.maxCooldown: must not be below breaker.cooldown")
	}
	if d := e.DisableAfter; d != nil && *d != 0 {
		checkDuration(&probs, "disableAfter", *d, minDisableAfter, maxDisableAfter)
	}
	return probs
}

// disableAfter is how long the endpoint may fail continuously before it is disabled (0:
// never): its own setting, or the webhooker's.
func (p *plan) disableAfter(fallback time.Duration) time.Duration {
	if p.DisableAfter != nil {
		return max(p.DisableAfter.D(), 0)
	}
	return fallback
}

type circuitState int

// The gauge's values.
const (
	stateClosed circuitState = iota
	stateOpen
	stateHalfOpen
)

// circuit is a worker's breaker. It starts from the state stored in the endpoint, and
// tells the worker when a transition must be written back. It is used by its worker's
// goroutine only.
type circuit struct {
	policy   Breaker
	state    circuitState
	failures int       // consecutive failed requests this worker saw
	since    time.Time // first failure of the run (zero: none)
	probeAt  time.Time
	cooldown time.Duration
	lastErr  string
}

func newCircuit(p Breaker, h Health) *circuit {
	c := &circuit{policy: p, cooldown: h.Cooldown.D(), lastErr: h.LastError}
	if h.FailingSince != nil {
		c.since = *h.FailingSince
	}
	if h.Breaker == BreakerOpen {
		c.state = stateOpen
		if h.ProbeAt != nil {
			c.probeAt = *h.ProbeAt
		}
		if c.cooldown <= 0 {
			c.cooldown = p.Cooldown.D()
		}
	}
	return c
}

// blocked returns how long the worker must not fetch: until the probe, while the breaker
// is open. An open breaker whose probe is due turns half-open, and 0 is returned.
func (c *circuit) blocked(now time.Time) time.Duration {
	if d := c.openFor(now); d > 0 {
		return d
	}
	if c.state == stateOpen {
		c.state = stateHalfOpen
	}
	return 0
}

// openFor is how long the breaker stays open from now (0: it is not open, or its probe is
// due).
func (c *circuit) openFor(now time.Time) time.Duration {
	if c.state != stateOpen {
		return 0
	}
	return max(c.probeAt.Sub(now), 0)
}

// succeeded records a request answered 2xx. It reports whether the breaker closed (a
// transition to write); a success with the breaker closed only forgets the failures.
func (c *circuit) succeeded() bool {
	was := c.state
	c.state, c.failures, c.since, c.probeAt, c.cooldown, c.lastErr = stateClosed, 0, time.Time{}, time.Time{}, 0, ""
	return was != stateClosed
}

// failed records a failed request of a batch at its attempt-th attempt, which the retry
// schedule says was first tried at firstTried. It reports whether the breaker opened
// (from closed, or again from half-open): a transition to write.
func (c *circuit) failed(now time.Time, attempt int, firstTried time.Time, reason string) bool {
	c.failures++
	c.lastErr = reason
	if c.since.IsZero() {
		// This worker saw no failure of the run yet (it just started, or other replicas
		// made the earlier attempts): the batch's first attempt is the run's best known
		// start.
		c.since = now
		if attempt > 1 && firstTried.Before(now) {
			c.since = firstTried
		}
	}
	switch c.state {
	case stateHalfOpen:
		c.open(now, min(2*c.cooldown, c.policy.MaxCooldown.D()))
		return true
	case stateClosed:
		if max(c.failures, attempt) >= c.policy.Failures {
			c.open(now, c.policy.Cooldown.D())
			return true
		}
	}
	return false
}

func (c *circuit) open(now time.Time, cooldown time.Duration) {
	c.state, c.cooldown = stateOpen, max(cooldown, c.policy.Cooldown.D())
	c.probeAt = now.Add(jitter(c.cooldown))
}

// failingFor is how long the endpoint has failed continuously (0: it is not failing).
func (c *circuit) failingFor(now time.Time) time.Duration {
	if c.since.IsZero() {
		return 0
	}
	return now.Sub(c.since)
}

// health is the state to store.
func (c *circuit) health() Health {
	if c.state == stateClosed {
		return Health{Breaker: BreakerClosed}
	}
	since, probe := c.since, c.probeAt
	return Health{Breaker: BreakerOpen, FailingSince: &since, ProbeAt: &probe, Cooldown: Duration(c.cooldown), LastError: c.lastErr}
}

// errChanged: the endpoint changed since the worker started (updated, paused, resumed,
// disabled); a status write about the old version was dropped.
var errChanged = errors.New("webhook endpoint changed since its worker started")

// writeStatus applies change to the stored endpoint, only if it is still the version the
// worker runs: its UpdatedAt is unchanged (every change through the API or the store sets
// it; status writes keep it, unless they disable). A status about an older version is
// dropped (errChanged): the worker is about to be restarted with the newer one anyway.
// Concurrent writes are settled by a compare-and-set on the revision.
func (s *Endpoints) writeStatus(ctx context.Context, id string, version time.Time, change func(*Endpoint)) error {
	for range 5 {
		e, err := s.kv.Get(ctx, id)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("read webhook endpoint %s: %w", id, err)
		}
		var cur Endpoint
		if err := json.Unmarshal(e.Value(), &cur); err != nil {
			return fmt.Errorf("webhook endpoint %s is unreadable: %w", id, err)
		}
		if !cur.UpdatedAt.Equal(version) {
			return errChanged
		}
		change(&cur)
		b, err := json.Marshal(cur)
		if err != nil {
			return err
		}
		rev, err := s.kv.Update(ctx, id, b, e.Revision())
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			continue
		}
		if err != nil {
			return fmt.Errorf("store webhook endpoint %s: %w", id, err)
		}
		s.apply(id, jetstream.KeyValuePut, b, rev)
		return nil
	}
	return ErrConflict
}

// now is the clock of the breaker and the disabling: the endpoint store's, which also
// stamps the times written in endpoints (tests set it).
func (s *Service) now() time.Time { return s.endpoints.now() }
