package webhooker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/cenkalti/backoff/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tidwall/gjson"
	"golang.org/x/time/rate"

	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/ssrf"
)

// How a worker reads the log.
const (
	// idleFetch is how long one pull waits for an endpoint's next event when there is
	// none: long enough to cost little on a quiet log (one request per endpoint every 2 s),
	// short enough to bound a stop, which waits for the pull under way.
	idleFetch = 2 * time.Second
	// minBatchWait is the shortest gathering wait a pull request can express.
	minBatchWait = 5 * time.Millisecond
	// snippetBytes of a response body are kept for the delivery record and dead letters.
	snippetBytes = 1024
	// drainBytes of a response body are read so the connection can be reused.
	drainBytes = 64 << 10
	// maxRecordedIDs bounds the event ids named in one delivery record.
	maxRecordedIDs = 100
	// statusTimeout bounds a write of the endpoint's status (breaker, disabling).
	statusTimeout = 10 * time.Second
)

// errStopped ends a worker for good: its endpoint was disabled.
var errStopped = errors.New("endpoint disabled")

// ConsumerName is the durable consumer of an endpoint, shared by every replica.
func ConsumerName(id string) string { return "webhook-" + id }

// worker delivers to one endpoint, one batch at a time, in the order of the log. It owns
// its HTTP client (connections are never shared between endpoints, so a slow one holds
// only its own) and at most one batch in memory.
type worker struct {
	s       *Service
	p       *plan
	durable string
	client  *http.Client
	limiter *rate.Limiter
	signer  signer
	log     *slog.Logger
	// cb is the endpoint's circuit breaker as stored when the worker started (breaker.go);
	// disableAfter is how long the endpoint may fail before it is disabled (0: never).
	cb           *circuit
	disableAfter time.Duration
	breakerState prometheus.Gauge
	// full: the last batch was full, so the log likely holds more; the next fetch then
	// asks for a whole batch in one pull.
	full bool
}

func (s *Service) newWorker(p *plan) *worker {
	policy := p.Breaker
	policy.setDefaults() // an endpoint stored before breakers existed has none
	w := &worker{s: s, p: p, durable: ConsumerName(p.ID), client: s.guard.Client(),
		signer: newSigner(p.Format, p.Secrets), log: s.log.With("endpoint", p.ID),
		cb: newCircuit(policy, p.Health), disableAfter: p.disableAfter(s.cfg.DisableAfter),
		breakerState: s.m.breaker.WithLabelValues(p.ID)}
	if p.RateLimit.PerSecond > 0 {
		w.limiter = rate.NewLimiter(rate.Limit(p.RateLimit.PerSecond), max(p.RateLimit.Burst, 1))
	}
	return w
}

// run delivers until ctx ends or the endpoint is disabled, recreating its consumer after
// NATS failures.
func (w *worker) run(ctx context.Context) {
	defer w.client.CloseIdleConnections()
	defer w.unpin()
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval = 200*time.Millisecond, 10*time.Second
	for ctx.Err() == nil {
		cons, err := bus.EnsureConsumer(ctx, w.s.js, bus.StreamEvents, w.consumerConfig())
		if err == nil {
			err = w.loop(ctx, cons)
			if errors.Is(err, errStopped) {
				return
			}
			bo.Reset()
		}
		if ctx.Err() != nil {
			return
		}
		wait := bo.NextBackOff()
		w.log.Warn("webhook consumer stopped; restarting", "err", err, "retry_in", wait)
		sleep(ctx, wait)
	}
}

// consumerConfig is the endpoint's durable consumer. MaxAckPending is the batch size: a
// batch waiting for its retry holds every slot, so no replica can deliver later events of
// the endpoint before it (order), and the server never lets an endpoint hold more than a
// batch of unacknowledged events (memory). The ack wait covers gathering a batch and the
// request; it only matters when a webhooker dies mid-batch.
func (w *worker) consumerConfig() jetstream.ConsumerConfig {
	c := jetstream.ConsumerConfig{
		Durable:        w.durable,
		Description:    "webhook endpoint " + w.p.ID,
		FilterSubjects: w.p.subjects,
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        w.p.maxWait + w.p.Timeout.D() + 5*time.Second,
		MaxAckPending:  w.p.Batch.MaxEvents,
		MaxDeliver:     -1, // the retry policy decides when to give up, not the server
		// One replica at a time pulls (JetStream pins the consumer to it): two replicas'
		// pulls would split a batch smaller than the batch size between them, and send it
		// out of order. The pin passes to another replica when the pinned one has not
		// pulled for PinnedTTL: longer than a request and a batch wait, so that a slow
		// request never hands it over midway.
		PriorityPolicy: jetstream.PriorityPolicyPinned,
		PriorityGroups: []string{PriorityGroup},
		PinnedTTL:      w.p.maxWait + w.p.Timeout.D() + pinSlack,
	}
	// "now" is the endpoint's creation, not the moment a worker first gets to it: the
	// events between the 201 and the consumer's creation (or all those since, for an
	// endpoint created paused) are its too.
	start := w.p.CreatedAt
	switch {
	case w.p.Start == "beginning":
		c.DeliverPolicy = jetstream.DeliverAllPolicy
	case !w.p.start.IsZero():
		start = w.p.start
		fallthrough
	default:
		c.DeliverPolicy, c.OptStartTime = jetstream.DeliverByStartTimePolicy, &start
	}
	return c
}

func (w *worker) loop(ctx context.Context, cons jetstream.Consumer) error {
	for ctx.Err() == nil {
		// An open breaker fetches nothing until its probe is due: the endpoint's events
		// wait in the log, the failed batch in the server (handed back until the probe).
		if d := w.cb.blocked(w.s.now()); d > 0 {
			w.breakerState.Set(float64(stateOpen))
			if !sleep(ctx, d) {
				return nil
			}
			continue
		}
		w.breakerState.Set(float64(w.cb.state))
		// The rate limit is waited for before fetching, so that fetched events never
		// wait on it (their ack wait runs from the fetch).
		if w.limiter != nil && w.limiter.Wait(ctx) != nil {
			return nil
		}
		msgs, ferr := w.fetch(ctx, cons)
		if len(msgs) > 0 && ctx.Err() != nil {
			w.nakAll(msgs2items(msgs), 0) // stopping: hand them back at once
			return nil
		}
		if len(msgs) > 0 {
			wait, err := w.deliver(ctx, msgs)
			if err != nil {
				return err
			}
			// After a failure nothing is fetched until the batch's next attempt is due:
			// the next fetch then gets it back first, before any later event.
			if wait > 0 && !sleep(ctx, wait) {
				return nil
			}
		}
		if ferr != nil {
			return ferr
		}
	}
	return nil
}

// fetch gathers a batch: it waits (idleFetch at a time) for the endpoint's next event,
// then for at most the endpoint's batch wait for more, up to its batch size and the
// request size limit.
//
// A pull is never abandoned: it ends when the server says so (batch complete, or expired).
// Cancelling one client-side would leave the request waiting in the server, which would
// hand the next events to a reader that is gone, and they would come back only after the
// ack wait, out of order. A stop therefore waits for the pull under way and hands back
// what it brought. So that this wait stays short (idleFetch at most) however long the
// endpoint's batch wait (up to a minute), a long wait is gathered in pulls of idleFetch at
// most, and a stop ends the gathering between two.
func (w *worker) fetch(ctx context.Context, cons jetstream.Consumer) (msgs []jetstream.Msg, err error) {
	defer func() { w.full = len(msgs) >= w.p.Batch.MaxEvents }()
	if w.full && w.p.maxWait > 0 {
		// Catching up: one pull for a whole batch (a pull for the first event and another
		// for the rest cost a third of the throughput). It waits no longer than the batch
		// wait from now, within idleFetch; an empty answer falls back to waiting.
		wait := min(max(w.p.maxWait, minBatchWait), idleFetch)
		msgs, err = collect(cons.Fetch(w.p.Batch.MaxEvents, jetstream.FetchMaxWait(wait), jetstream.FetchMaxBytes(w.s.cfg.MaxRequestBytes-4096), pinned))
		if err != nil || len(msgs) > 0 {
			return msgs, err
		}
	}
	msgs, err = collect(cons.Fetch(1, jetstream.FetchMaxWait(idleFetch), pinned))
	if err != nil || len(msgs) == 0 || w.p.Batch.MaxEvents == 1 || w.p.maxWait == 0 {
		return msgs, err
	}
	budget := w.s.cfg.MaxRequestBytes - len(msgs[0].Data()) - 4096
	deadline := time.Now().Add(max(w.p.maxWait, minBatchWait))
	for len(msgs) < w.p.Batch.MaxEvents && budget > 0 && ctx.Err() == nil {
		wait := min(time.Until(deadline), idleFetch)
		if wait < minBatchWait {
			break
		}
		want := w.p.Batch.MaxEvents - len(msgs)
		start := time.Now()
		rest, err := collect(cons.Fetch(want, jetstream.FetchMaxWait(wait), jetstream.FetchMaxBytes(budget), pinned))
		msgs = append(msgs, rest...)
		if err != nil {
			return msgs, err
		}
		if len(rest) < want && time.Since(start) < wait {
			break // the pull ended before its time: the byte budget is spent
		}
		for _, m := range rest {
			budget -= len(m.Data())
		}
	}
	return msgs, nil
}

// unpin lets another worker (this endpoint's next one on this replica, after a change of
// the endpoint, or one on another replica) take the consumer at once rather than after
// PinnedTTL. Best effort: were it lost, the pin expires.
func (w *worker) unpin() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := w.s.js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		return
	}
	if err := st.UnpinConsumer(ctx, w.durable, PriorityGroup); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		w.log.Debug("consumer not unpinned; the pin will expire", "err", err)
	}
}

// PriorityGroup is the priority group of the endpoints' consumers: a pull on one must name
// it (pinned does).
const PriorityGroup = "webhook"

var pinned = jetstream.FetchPriorityGroup(PriorityGroup)

// pinSlack is how much longer than a request and a batch wait the pin outlives a replica's
// silence: two idle pulls' worth.
const pinSlack = 2*idleFetch + time.Second

// collect reads a pull's messages; running out of time or of messages is not an error, nor
// is another replica holding the pin (this one waits for it).
func collect(mb jetstream.MessageBatch, err error) ([]jetstream.Msg, error) {
	if err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	var msgs []jetstream.Msg
	for m := range mb.Messages() {
		msgs = append(msgs, m)
	}
	if err := mb.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, jetstream.ErrPinIDMismatch) &&
		!errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		return msgs, fmt.Errorf("fetch: %w", err)
	}
	return msgs, nil
}

// item is one event of a batch being delivered.
type item struct {
	m         jetstream.Msg
	seq       uint64
	delivered uint64
	outcome   bool // one of the webhooker's own delivery records
}

// deliver sends a batch and settles every message of it. It returns how long to wait
// before fetching again (the batch's retry delay), or errStopped when the endpoint was
// disabled.
func (w *worker) deliver(ctx context.Context, msgs []jetstream.Msg) (time.Duration, error) {
	items := make([]item, 0, len(msgs))
	raws := make([][]byte, 0, len(msgs))
	for _, m := range msgs {
		meta, err := m.Metadata()
		if err != nil {
			w.deadLetter(ctx, []item{{m: m}}, fmt.Errorf("message metadata: %w", err))
			continue
		}
		it := item{m: m, seq: meta.Sequence.Stream, delivered: meta.NumDelivered}
		keep, outcome, err := w.match(m.Subject(), m.Data())
		switch {
		case err != nil:
			w.deadLetter(ctx, []item{it}, err)
		case !keep:
			_ = m.Ack() // not for this endpoint: nothing to do, nothing lost if the ack is
		default:
			it.outcome = outcome
			items = append(items, it)
			raws = append(raws, m.Data())
		}
	}
	if len(items) == 0 {
		return 0, nil
	}
	seqs := make([]uint64, len(items))
	attempt := 1
	recorded := false // a batch of nothing but delivery records is not recorded (no loops)
	for i, it := range items {
		seqs[i] = it.seq
		attempt = max(attempt, int(it.delivered))
		recorded = recorded || !it.outcome
	}
	body := appendBody(make([]byte, 0, 256+totalLen(raws)), w.p.Format, raws)
	res := w.post(ctx, messageID(w.p.ID, seqs), body)
	rec := record{attempt: attempt, events: len(items), res: res, ids: eventIDs(raws)}

	status := res.status
	if status >= 200 && status < 300 {
		for _, it := range items {
			if err := it.m.Ack(); err != nil {
				w.log.Debug("ack failed; the event will be delivered again", "seq", it.seq, "err", err)
			}
		}
		w.s.m.delivered.WithLabelValues(w.p.ID).Add(float64(len(items)))
		if recorded {
			w.s.record(ctx, w.p, outcomeDelivered, rec)
		}
		if w.cb.succeeded() {
			w.saveHealth(ctx) // the probe succeeded: closed
		}
		return 0, nil
	}
	if res.err != nil && ctx.Err() != nil && !ssrf.IsBlocked(res.err) {
		// Stopping: hand the batch back now, not after its delay, so that another replica
		// or the next start takes it at once. The attempt did not count.
		w.nakAll(items, 0)
		return 0, nil
	}
	w.s.m.failed.WithLabelValues(w.p.ID).Inc()
	if status == http.StatusGone {
		// The receiver says the endpoint is gone for good: stop, and keep the events in
		// the log for when someone resumes it.
		w.nakAll(items, 0)
		w.disable(ctx, rec, "the endpoint answered 410 Gone")
		return 0, errStopped
	}
	now := w.s.now()
	opened := w.cb.failed(now, attempt, now.Add(-w.p.Retry.elapsed(attempt)), res.describe())
	if w.disableAfter > 0 && w.cb.failingFor(now) >= w.disableAfter {
		// Failing for too long: disabled like a 410, whatever this batch's fate would
		// have been; its events wait in the log with the others.
		w.nakAll(items, 0)
		w.disable(ctx, rec, w.failingTooLong(now))
		return 0, errStopped
	}
	var wait time.Duration
	switch {
	case ssrf.IsBlocked(res.err):
		rec.reason = "permanent failure: " + res.describe()
		w.deadLetter(ctx, items, bus.Permanent(res.err))
	case status >= 400 && status < 500 && status != http.StatusRequestTimeout && status != http.StatusTooEarly && status != http.StatusTooManyRequests:
		rec.reason = "permanent failure: " + res.describe()
		w.deadLetter(ctx, items, bus.Permanent(errors.New(res.describe())))
	default:
		next := jitter(w.p.Retry.nominal(attempt))
		if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
			if d, ok := retryAfter(res.header, time.Now()); ok {
				next = d
			}
		}
		// An open breaker holds the batch in the server until its probe.
		next = max(next, w.cb.openFor(now))
		if w.p.Retry.giveUp(attempt, next) {
			if w.disableAfter > 0 && w.cb.failingFor(now.Add(next)) >= w.disableAfter {
				// The endpoint would be disabled before the batch's next attempt anyway:
				// the endpoint, failing all along, is what failed, not the batch. Keep the
				// batch in the log, where resuming finds it, rather than in the dead
				// letters.
				w.nakAll(items, 0)
				w.disable(ctx, rec, w.failingTooLong(now))
				return 0, errStopped
			}
			rec.reason = fmt.Sprintf("gave up after %d attempts: %s", attempt, res.describe())
			w.deadLetter(ctx, items, fmt.Errorf("gave up after %d attempts: %s", attempt, res.describe()))
			break
		}
		w.nakAll(items, next)
		w.s.m.retried.WithLabelValues(w.p.ID).Add(float64(len(items)))
		rec.reason, rec.next, wait = res.describe(), next, next
	}
	if recorded {
		w.s.record(ctx, w.p, outcomeError, rec)
	}
	if opened {
		w.saveHealth(ctx) // once the batch is settled
	}
	return wait, nil
}

// failingTooLong is the reason of a disabling after a long failure.
func (w *worker) failingTooLong(now time.Time) string {
	return fmt.Sprintf("failing continuously since %s (%s, disableAfter %s); last: %s",
		w.cb.since.UTC().Format(time.RFC3339), w.cb.failingFor(now).Round(time.Second), w.disableAfter, w.cb.lastErr)
}

// saveHealth writes a transition of the breaker in the endpoint, for the API and the other
// replicas (breaker.go). The write restarts the endpoint's workers, which start from it.
// One that fails only costs the others' view: this worker goes on with its own.
func (w *worker) saveHealth(ctx context.Context) {
	h := w.cb.health()
	w.breakerState.Set(float64(w.cb.state))
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), statusTimeout)
	defer cancel()
	err := w.s.endpoints.writeStatus(wctx, w.p.ID, w.p.UpdatedAt, func(ep *Endpoint) { ep.Health = h })
	switch {
	case errors.Is(err, errChanged) || errors.Is(err, ErrNotFound):
		w.log.Debug("breaker state not stored: the endpoint changed meanwhile", "breaker", h.Breaker)
	case err != nil:
		w.log.Warn("breaker state not stored", "breaker", h.Breaker, "err", err)
	case h.Breaker == BreakerOpen:
		w.log.Warn("webhook endpoint failing: circuit breaker open, nothing fetched until the probe",
			"failing_since", h.FailingSince, "probe_at", h.ProbeAt, "last_error", h.LastError)
	default:
		w.log.Info("webhook endpoint answering again: circuit breaker closed")
	}
}

// disable stops deliveries to the endpoint until it is resumed, with the reason, and
// records it. Its health is cleared with it: a resumed endpoint starts afresh. Nothing is
// disabled if the endpoint changed since the worker started (someone updated, paused or
// resumed it: the worker is restarted with that version).
func (w *worker) disable(ctx context.Context, rec record, reason string) {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), statusTimeout)
	defer cancel()
	now := w.s.now().UTC()
	err := w.s.endpoints.writeStatus(wctx, w.p.ID, w.p.UpdatedAt, func(ep *Endpoint) {
		ep.Disabled, ep.DisabledReason, ep.DisabledAt = true, reason, &now
		ep.Health = Health{Breaker: BreakerClosed}
		ep.UpdatedAt = now
	})
	switch {
	case errors.Is(err, errChanged) || errors.Is(err, ErrNotFound):
		w.log.Info("webhook endpoint not disabled: it changed meanwhile", "reason", reason)
		rec.reason = reason + "; not disabled: the endpoint changed meanwhile"
		w.s.record(ctx, w.p, outcomeError, rec)
		return
	case err != nil:
		// Not disabled: the worker ends, is started again by the next reconciliation, and
		// its next attempt decides again.
		w.log.Error("could not disable the webhook endpoint", "reason", reason, "err", err)
		rec.reason = reason + "; not disabled: " + err.Error()
		w.s.record(ctx, w.p, outcomeError, rec)
		return
	}
	w.breakerState.Set(float64(stateClosed))
	w.log.Warn("webhook endpoint disabled", "reason", reason)
	rec.reason = reason
	w.s.record(ctx, w.p, outcomeDisabled, rec)
}

// match decides whether an event of the log goes to the endpoint: its type (the subject
// filter may select more than the patterns), level and source; never a delivery record
// about this endpoint itself. An event that is not JSON cannot be sent to anyone.
func (w *worker) match(subject string, raw []byte) (keep, outcome bool, err error) {
	typ := strings.TrimPrefix(subject, bus.EventsPrefix)
	if !w.p.types.Match(typ) {
		return false, false, nil
	}
	if !gjson.ValidBytes(raw) || len(raw) == 0 || raw[0] != '{' {
		return false, false, bus.Permanent(errors.New("event is not a JSON object"))
	}
	r := gjson.GetManyBytes(raw, "level", "source", "data.endpoint")
	if l, err := event.ParseLevel(r[0].Str); err == nil && l < w.p.level {
		return false, false, nil
	}
	if w.p.sources != nil && !w.p.sources[r[1].Str] {
		return false, false, nil
	}
	outcome = isOutcome(typ) && r[2].Exists()
	if outcome && r[2].Str == w.p.ID {
		return false, true, nil
	}
	return true, outcome, nil
}

// result is what one request came to.
type result struct {
	status  int // 0 when no response came
	header  http.Header
	snippet string // the first KiB of the response body
	err     error  // the transport error, when no response came
	elapsed time.Duration
}

func (r result) describe() string {
	if r.err != nil {
		return r.err.Error()
	}
	s := fmt.Sprintf("HTTP %d %s", r.status, http.StatusText(r.status))
	if r.snippet != "" {
		s += ": " + r.snippet
	}
	return s
}

// post sends one request. Its time is bounded by the endpoint's timeout; a stop does not
// cut it short at once, only after the grace period, so a batch the receiver is processing
// can still be acknowledged.
func (w *worker) post(ctx context.Context, msgID string, body []byte) result {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.p.Timeout.D())
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		t := time.AfterFunc(w.s.cfg.Grace, cancel)
		<-rctx.Done()
		t.Stop()
	})
	defer stop()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, w.p.URL, bytes.NewReader(body))
	if err != nil {
		return result{err: bus.Permanent(err)}
	}
	h := req.Header
	for k, v := range w.p.Headers {
		h.Set(k, v)
	}
	h.Set("Content-Type", "application/json")
	h.Set("User-Agent", "mailpulse-webhooker")
	if a := w.p.Auth; a != nil {
		if strings.EqualFold(a.Type, "bearer") {
			h.Set("Authorization", "Bearer "+a.Token)
		} else {
			req.SetBasicAuth(a.Username, a.Password)
		}
	}
	w.signer.sign(h, msgID, time.Now(), body)
	start := time.Now()
	resp, err := w.client.Do(req)
	res := result{elapsed: time.Since(start)}
	w.s.m.latency.WithLabelValues(w.p.ID).Observe(res.elapsed.Seconds())
	if err != nil {
		res.err = err
		return res
	}
	defer resp.Body.Close()
	res.status, res.header = resp.StatusCode, resp.Header
	buf := make([]byte, snippetBytes)
	n, _ := io.ReadFull(resp.Body, buf)
	res.snippet = strings.ToValidUTF8(string(buf[:n]), string(utf8.RuneError))
	_, _ = io.CopyN(io.Discard, resp.Body, drainBytes)
	return res
}

func (w *worker) nakAll(items []item, delay time.Duration) {
	for _, it := range items {
		var err error
		if delay > 0 {
			err = it.m.NakWithDelay(delay)
		} else {
			err = it.m.Nak()
		}
		if err != nil {
			w.log.Debug("nak failed; the event comes back after the ack wait", "seq", it.seq, "err", err)
		}
	}
}

// deadLetter keeps the items in DLQ_WEBHOOKER (subject dlq.webhooker.webhook-<id>) with
// the reason, and acknowledges them. One the dead-letter stream refuses is handed back to
// be tried again later rather than lost, and so are the rest of the batch, untried: each
// store can take its full timeout, and a batch of them would hold the endpoint, and a
// stop, for as many.
func (w *worker) deadLetter(ctx context.Context, items []item, reason error) {
	dctx := context.WithoutCancel(ctx)
	for i, it := range items {
		if err := bus.DeadLetter(dctx, w.s.js, "webhooker", w.durable, it.m.Subject(), it.seq, it.m.Data(), reason); err != nil {
			w.log.Warn("dead letters not stored; the events will be tried again", "events", len(items)-i, "seq", it.seq, "err", err)
			w.nakAll(items[i:], w.p.Retry.Initial.D())
			items = items[:i]
			break
		}
		w.s.m.dead.WithLabelValues(w.p.ID).Inc()
		if err := it.m.Ack(); err != nil {
			w.log.Debug("ack failed; the event will be delivered again (its dead letter is deduplicated)", "seq", it.seq, "err", err)
		}
	}
	if len(items) > 0 {
		w.log.Warn("events sent to the dead letters", "events", len(items), "reason", reason)
	}
}

func msgs2items(msgs []jetstream.Msg) []item {
	items := make([]item, len(msgs))
	for i, m := range msgs {
		items[i].m = m
	}
	return items
}

func totalLen(raws [][]byte) int {
	n := 0
	for _, r := range raws {
		n += len(r) + 1
	}
	return n
}

func eventIDs(raws [][]byte) []string {
	ids := make([]string, 0, min(len(raws), maxRecordedIDs))
	for _, r := range raws[:min(len(raws), maxRecordedIDs)] {
		ids = append(ids, gjson.GetBytes(r, "id").String())
	}
	return ids
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
