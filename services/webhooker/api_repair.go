package webhooker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/tidwall/gjson"

	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/history"
	"github.com/mailpulse/mailpulse/shared/httpserver"
)

// The repair routes: an endpoint's attempts (from the history), its dead letters, their
// redelivery, and a test request. Replays are in replay.go.
//
// Everything they send goes to the one endpoint, straight from the process that serves the
// API, never back into EVENTS (a re-published event would reach every consumer again, and
// every other endpoint). They sign, guard and record as the workers do (the API's Service),
// and mark what they send again with webhook-replay: true.

// Kinds of the repair routes' attempts, in their records' kind field (a delivery of the
// log has none).
const (
	kindReplay    = "replay"
	kindRedeliver = "redeliver"
	kindTest      = "test"
)

// TestEventType is the type of the sample event POST …/test sends. It is never published
// to the log.
const TestEventType = "telemetry.webhook-test"

// Bounds of the repair routes.
const (
	historyTimeout     = 10 * time.Second // one request to the archivers
	defaultLetters     = 100              // dead letters listed or redelivered by default
	maxLetters         = 1000             // and at most, per request
	deadLetterBytes    = 16 << 20         // the most dead-letter bytes one listing reads
	redeliverBudget    = 20 * time.Second // no batch is started after this, so the answer comes in time
	redeliverLeaseSlop = 30 * time.Second
)

// errInvalidRequest is the error of bad input to a repair route: 400 with every reason.
var errInvalidRequest = errors.New("invalid request")

func badRequest(c *fiber.Ctx, problems []string) error {
	return c.Status(fiber.StatusBadRequest).JSON(fiber.Map{"error": errInvalidRequest.Error(), "errors": problems})
}

// queryParams returns the request's query parameters, with a problem for each one that is
// not in known (a misspelt parameter is an error, not a default).
func queryParams(c *fiber.Ctx, known ...string) (url.Values, []string) {
	q, err := url.ParseQuery(string(c.Request().URI().QueryString()))
	if err != nil {
		return nil, []string{"query: " + err.Error()}
	}
	var probs []string
	names := make([]string, 0, len(q))
	for name := range q {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if !slices.Contains(known, name) {
			probs = append(probs, fmt.Sprintf("parameter %q: unknown (want %s)", trunc(name), strings.Join(known, ", ")))
		} else if len(q[name]) > 1 {
			probs = append(probs, fmt.Sprintf("parameter %q: given more than once", name))
		}
	}
	return q, probs
}

// intParam reads an integer parameter within [lo, hi] (def when absent).
func intParam(q url.Values, name string, def, lo, hi int, probs *[]string) int {
	v := q.Get(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		*probs = append(*probs, fmt.Sprintf("%s: %q: want %d to %d", name, trunc(v), lo, hi))
		return def
	}
	return n
}

// decodeBody reads an optional JSON object body into v, refusing unknown fields. An empty
// body leaves v as it is.
func decodeBody(body []byte, v any) []string {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return []string{"body: " + describeJSONError(err)}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return []string{"body: want one JSON object"}
	}
	return nil
}

func trunc(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// stored returns an endpoint as held, with its compiled plan.
func (s *Endpoints) stored(id string) (stored, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	st, ok := s.byID[id]
	return st, ok
}

// sendable returns the plan of the endpoint named by the route, or answers: 404 for an
// unknown endpoint, 409 for one whose stored definition does not compile, 500 when the
// API has no sender.
func (a *API) sendable(c *fiber.Ctx) (*plan, error) {
	if a.svcErr != nil {
		return nil, fmt.Errorf("webhook repair unavailable: %w", a.svcErr)
	}
	st, ok := a.endpoints.stored(c.Params("id"))
	if !ok {
		return nil, httpserver.Error(c, fiber.StatusNotFound, ErrNotFound.Error())
	}
	if st.plan == nil {
		return nil, httpserver.Error(c, fiber.StatusConflict, "the endpoint's stored definition is invalid ("+st.err.Error()+"): update it first")
	}
	return st.plan, nil
}

// ---- attempts ----

// attemptTypes are the delivery records.
const attemptTypes = "telemetry.webhook-*"

// attempts is GET /api/v1/webhooks/:id/attempts?limit=&cursor=&start=&end=: the endpoint's
// delivery records, newest first, as the history (an archiver) has them. limit and cursor
// page as the history does; start and end (RFC 3339) bound the records' times.
func (a *API) attempts(c *fiber.Ctx) error {
	id := c.Params("id")
	if _, ok := a.endpoints.Get(id); !ok {
		return httpserver.Error(c, fiber.StatusNotFound, ErrNotFound.Error())
	}
	q, probs := queryParams(c, "limit", "cursor", "start", "end")
	hq := history.Query{Types: []string{attemptTypes}, Keys: map[string]string{"endpoint": id}, Desc: true}
	hq.Limit = intParam(q, "limit", history.DefaultLimit, 1, history.MaxLimit, &probs)
	if v := q.Get("cursor"); v != "" {
		if _, err := history.DecodeCursor(v); err != nil {
			probs = append(probs, err.Error())
		}
		hq.Cursor = v
	}
	for _, b := range []struct {
		name string
		t    *time.Time
	}{{"start", &hq.From}, {"end", &hq.To}} {
		if v := q.Get(b.name); v != "" {
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil || !event.Representable(t) {
				probs = append(probs, fmt.Sprintf("%s: %q: want an RFC 3339 time", b.name, trunc(v)))
				continue
			}
			*b.t = t
		}
	}
	if !hq.From.IsZero() && !hq.To.IsZero() && hq.To.Before(hq.From) {
		probs = append(probs, "start is after end: the range is reversed")
	}
	if len(probs) > 0 {
		return badRequest(c, probs)
	}
	body, err := json.Marshal(hq)
	if err != nil {
		return err
	}
	var reply history.QueryReply
	m, err := a.endpoints.js.Conn().Request(history.SubjectQuery, body, historyTimeout)
	if err == nil {
		if jerr := json.Unmarshal(m.Data, &reply); jerr != nil {
			return httpserver.Error(c, fiber.StatusBadGateway, "undecodable archiver reply: "+jerr.Error())
		}
	}
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		c.Set(fiber.HeaderRetryAfter, "5")
		return httpserver.Error(c, fiber.StatusServiceUnavailable, "no archiver is running: the history is unavailable")
	case err != nil:
		c.Set(fiber.HeaderRetryAfter, "5")
		return httpserver.Error(c, fiber.StatusServiceUnavailable, "history: "+err.Error())
	case reply.Error != "":
		code := reply.Code
		if code < 400 || code > 599 {
			code = fiber.StatusServiceUnavailable
		}
		return httpserver.Error(c, code, reply.Error)
	case reply.Page == nil:
		return httpserver.Error(c, fiber.StatusBadGateway, "undecodable archiver reply: no page")
	}
	out := make([]json.RawMessage, 0, len(reply.Page.Events))
	for _, e := range reply.Page.Events {
		out = append(out, attemptJSON(e))
	}
	return c.JSON(fiber.Map{"attempts": out, "next": reply.Page.Next})
}

// attemptJSON flattens a delivery record: its sequence, id, time, type and outcome
// (delivered, error, disabled), then its data's fields as they are (endpoint, url, code,
// elapsed, attempt, total, eventIds, contents, reason, nextRetry, kind, job).
func attemptJSON(s history.Stored) json.RawMessage {
	r := gjson.ParseBytes(s.Raw())
	typ := r.Get("type").Str
	b := []byte(`{"seq":`)
	b = strconv.AppendUint(b, s.Seq, 10)
	b = append(b, `,"id":`...)
	b = appendJSONString(b, r.Get("id").String())
	b = append(b, `,"createdAt":`...)
	b = appendJSONString(b, r.Get("createdAt").String())
	b = append(b, `,"type":`...)
	b = appendJSONString(b, typ)
	b = append(b, `,"outcome":`...)
	b = appendJSONString(b, strings.TrimPrefix(typ, "telemetry.webhook-"))
	r.Get("data").ForEach(func(k, v gjson.Result) bool {
		b = append(b, ',')
		b = append(b, k.Raw...)
		b = append(b, ':')
		b = append(b, v.Raw...)
		return true
	})
	return append(b, '}')
}

func appendJSONString(b []byte, s string) []byte {
	q, _ := json.Marshal(s)
	return append(b, q...)
}

// ---- dead letters ----

// deadLetterSubject is the subject of an endpoint's dead letters in DLQ_WEBHOOKER.
func deadLetterSubject(id string) string {
	_, subjects := bus.DeadLetterStream("webhooker")
	return strings.TrimSuffix(subjects, ">") + ConsumerName(id)
}

// deadLetter is one dead-lettered event of an endpoint.
type deadLetter struct {
	Seq      uint64          `json:"seq"`  // in DLQ_WEBHOOKER: what after= and seqs name
	Time     time.Time       `json:"time"` // when it was dead-lettered
	Reason   string          `json:"reason"`
	Status   int             `json:"status,omitempty"`   // the endpoint's last answer, when it gave one
	Response string          `json:"response,omitempty"` // the first KiB of that answer's body
	Subject  string          `json:"subject"`            // the event's subject in EVENTS
	Sequence uint64          `json:"sequence,omitempty"` // and its sequence there
	Event    json.RawMessage `json:"event"`              // the event (a JSON string when it is not JSON)

	data []byte
}

func newDeadLetter(seq uint64, at time.Time, h nats.Header, data []byte) deadLetter {
	d := deadLetter{Seq: seq, Time: at.UTC(), Reason: h.Get(bus.HeaderReason), Subject: h.Get(bus.HeaderSubject), data: data}
	d.Sequence, _ = strconv.ParseUint(h.Get(bus.HeaderSequence), 10, 64)
	d.Status, d.Response = answerIn(d.Reason)
	if gjson.ValidBytes(data) && len(bytes.TrimSpace(data)) > 0 {
		d.Event = data
	} else {
		d.Event, _ = json.Marshal(string(data))
	}
	return d
}

// sendable reports whether the dead letter can be sent: an event that is a JSON object.
func (d deadLetter) sendable() bool {
	return len(d.data) > 0 && d.data[0] == '{' && gjson.ValidBytes(d.data)
}

// answerIn finds the endpoint's answer in a dead letter's reason, which the worker writes
// with result.describe: "…HTTP 422 Unprocessable Entity: <first KiB of the body>". The
// dead letter has no header of its own for them.
func answerIn(reason string) (status int, response string) {
	for i := strings.Index(reason, "HTTP "); i >= 0; {
		rest := reason[i+5:]
		if len(rest) >= 3 && (len(rest) == 3 || rest[3] == ' ') {
			if n, err := strconv.Atoi(rest[:3]); err == nil && n >= 100 && n <= 599 {
				if _, body, ok := strings.Cut(rest[3:], ": "); ok {
					response = body
				}
				return n, response
			}
		}
		j := strings.Index(rest, "HTTP ")
		if j < 0 {
			break
		}
		i += 5 + j
	}
	return 0, ""
}

// readDeadLetters reads at most limit of an endpoint's dead letters after the sequence
// after, in order, within maxBytes (one at least), through an ephemeral consumer deleted
// afterwards; more is how many of the endpoint's dead letters follow the last one read.
func readDeadLetters(ctx context.Context, js jetstream.JetStream, id string, after uint64, limit, maxBytes int) (letters []deadLetter, more uint64, err error) {
	stream, _ := bus.DeadLetterStream("webhooker")
	cfg := jetstream.ConsumerConfig{
		Description:       "webhook dead letters of " + id + " (API)",
		FilterSubject:     deadLetterSubject(id),
		AckPolicy:         jetstream.AckNonePolicy,
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		InactiveThreshold: 10 * time.Second,
		MemoryStorage:     true,
	}
	if after > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, after+1
	}
	cons, err := js.CreateConsumer(ctx, stream, cfg)
	if err != nil {
		return nil, 0, fmt.Errorf("read dead letters: %w", err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = js.DeleteConsumer(dctx, stream, cons.CachedInfo().Name) // or it goes when inactive
	}()
	pending := cons.CachedInfo().NumPending
	if pending == 0 || limit <= 0 {
		return nil, pending, nil
	}
	n := int(min(uint64(limit), pending))
	msgs, err := collect(cons.Fetch(n, jetstream.FetchMaxWait(2*time.Second), jetstream.FetchMaxBytes(maxBytes)))
	if err == nil && len(msgs) == 0 {
		// The first one alone is larger than maxBytes: one always comes.
		msgs, err = collect(cons.Fetch(1, jetstream.FetchMaxWait(2*time.Second)))
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read dead letters: %w", err)
	}
	more = pending
	for _, m := range msgs {
		meta, err := m.Metadata()
		if err != nil {
			return nil, 0, fmt.Errorf("read dead letters: %w", err)
		}
		letters = append(letters, newDeadLetter(meta.Sequence.Stream, meta.Timestamp, m.Headers(), m.Data()))
		more = meta.NumPending
	}
	return letters, more, nil
}

// deadLetters is GET /api/v1/webhooks/:id/dead-letters?after=&limit=: the endpoint's dead
// letters after the sequence after (0: from the first), oldest first, at most limit (100,
// at most 1000) and 16 MiB. next is the sequence to pass as after for the following page
// (absent at the end), remaining how many follow it.
func (a *API) deadLetters(c *fiber.Ctx) error {
	id := c.Params("id")
	if _, ok := a.endpoints.Get(id); !ok {
		return httpserver.Error(c, fiber.StatusNotFound, ErrNotFound.Error())
	}
	q, probs := queryParams(c, "after", "limit")
	limit := intParam(q, "limit", defaultLetters, 1, maxLetters, &probs)
	var after uint64
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			probs = append(probs, fmt.Sprintf("after: %q: want a dead-letter sequence (a whole number)", trunc(v)))
		}
		after = n
	}
	if len(probs) > 0 {
		return badRequest(c, probs)
	}
	letters, more, err := readDeadLetters(c.UserContext(), a.endpoints.js, id, after, limit, deadLetterBytes)
	if err != nil {
		c.Set(fiber.HeaderRetryAfter, "5")
		return httpserver.Error(c, fiber.StatusServiceUnavailable, err.Error())
	}
	out := fiber.Map{"deadLetters": nonNil(letters), "remaining": more}
	if more > 0 && len(letters) > 0 {
		out["next"] = letters[len(letters)-1].Seq
	}
	return c.JSON(out)
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// ---- redelivery ----

// redeliverRequest is the optional body of POST …/dead-letters/redeliver.
type redeliverRequest struct {
	Limit int      `json:"limit"` // the oldest dead letters, at most this many (100)
	Seqs  []uint64 `json:"seqs"`  // or these ones (their seq in the listing)
}

// redeliverResult is the answer of POST …/dead-letters/redeliver.
type redeliverResult struct {
	Sent       int    `json:"sent"`                 // delivered (2xx) and removed from the dead letters
	Failed     int    `json:"failed"`               // in a request that did not get a 2xx: still there
	Unsendable int    `json:"unsendable,omitempty"` // not a JSON event: never sendable, left there
	NotRemoved int    `json:"notRemoved,omitempty"` // delivered, but could not be removed (sent again next time)
	Requests   int    `json:"requests"`
	Remaining  uint64 `json:"remaining"`        // the endpoint's dead letters left
	Status     int    `json:"status,omitempty"` // the endpoint's last answer
	Error      string `json:"error,omitempty"`  // why it stopped early
}

// redeliver is POST /api/v1/webhooks/:id/dead-letters/redeliver: it sends the endpoint's
// dead letters again, oldest first (or those of seqs, in their order), in batches as the
// endpoint's settings say, signed as usual and marked webhook-replay: true, to that endpoint
// only. A batch answered 2xx is removed from the dead letters; the first batch that is not
// stops the redelivery (the endpoint is evidently still failing: the rest stay, in order).
// It answers when done (200 with the counts), having started no batch after 20 s.
//
// Why the API sends them itself rather than handing them to the endpoint's worker: the
// worker's consumer holds exactly one batch of the log (its MaxAckPending), so dead letters
// would have to wait behind the backlog, or take slots the log's order depends on; and the
// process that serves the API may run no worker (the gateway in microservices mode). Sending
// here also lets the answer say what happened. One redelivery per endpoint runs at a time,
// across replicas (a lease in the WEBHOOKS bucket, redeliver.<id>): two at once would send
// the same letters twice. 409 otherwise.
func (a *API) redeliver(c *fiber.Ctx) error {
	p, err := a.sendable(c)
	if p == nil {
		return err
	}
	var req redeliverRequest
	probs := decodeBody(c.Body(), &req)
	if req.Limit != 0 && len(req.Seqs) > 0 {
		probs = append(probs, "give limit or seqs, not both")
	}
	if req.Limit < 0 || req.Limit > maxLetters {
		probs = append(probs, fmt.Sprintf("limit: want 1 to %d", maxLetters))
	}
	if len(req.Seqs) > maxLetters {
		probs = append(probs, fmt.Sprintf("seqs: at most %d", maxLetters))
	}
	if req.Limit == 0 {
		req.Limit = defaultLetters
	}
	ctx := c.UserContext()
	var chosen []deadLetter
	if len(req.Seqs) > 0 && len(probs) == 0 {
		chosen, probs = a.chosenLetters(ctx, p.ID, req.Seqs)
		req.Limit = len(chosen)
	}
	if len(probs) > 0 {
		return badRequest(c, probs)
	}

	lease := redeliverBudget + p.Timeout.D() + redeliverLeaseSlop
	rev, ok, err := takeLease(ctx, a.endpoints.kv, redeliverKey(p.ID), a.endpoints.now(), lease)
	if err != nil {
		return err
	}
	if !ok {
		return httpserver.Error(c, fiber.StatusConflict, "a redelivery of this endpoint's dead letters is under way")
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = a.endpoints.kv.Delete(dctx, redeliverKey(p.ID), jetstream.LastRevision(rev))
	}()

	res, err := a.svc.redeliver(ctx, replayPlan(p), req.Limit, chosen)
	if err != nil {
		if res.Requests == 0 {
			c.Set(fiber.HeaderRetryAfter, "5")
			return httpserver.Error(c, fiber.StatusServiceUnavailable, err.Error())
		}
		res.Error = err.Error()
	}
	if _, more, err := readDeadLetters(ctx, a.endpoints.js, p.ID, 0, 0, 0); err == nil {
		res.Remaining = more
	}
	return c.JSON(res)
}

// chosenLetters fetches the dead letters seqs names, each of which must be the endpoint's.
func (a *API) chosenLetters(ctx context.Context, id string, seqs []uint64) ([]deadLetter, []string) {
	stream, _ := bus.DeadLetterStream("webhooker")
	str, err := a.endpoints.js.Stream(ctx, stream)
	if err != nil {
		return nil, []string{"dead letters unavailable: " + err.Error()}
	}
	var probs []string
	seen := map[uint64]bool{}
	out := make([]deadLetter, 0, len(seqs))
	for _, seq := range seqs {
		if seen[seq] {
			probs = append(probs, fmt.Sprintf("seqs: %d given twice", seq))
			continue
		}
		seen[seq] = true
		m, err := str.GetMsg(ctx, seq)
		if err != nil || m.Subject != deadLetterSubject(id) {
			probs = append(probs, fmt.Sprintf("seqs: %d is not a dead letter of this endpoint", seq))
			continue
		}
		out = append(out, newDeadLetter(m.Sequence, m.Time, m.Header, m.Data))
	}
	return out, probs
}

// redeliver sends the dead letters (chosen, or the oldest up to limit) to p, p's settings
// batching them, and removes those delivered. An error is a failure to read the dead
// letters; the endpoint's failures are in the result.
func (s *Service) redeliver(ctx context.Context, p *plan, limit int, chosen []deadLetter) (redeliverResult, error) {
	w := s.newWorker(p)
	defer w.client.CloseIdleConnections()
	var res redeliverResult
	stream, _ := bus.DeadLetterStream("webhooker")
	str, err := s.js.Stream(ctx, stream)
	if err != nil {
		return res, fmt.Errorf("dead letters unavailable: %w", err)
	}
	budget := s.cfg.MaxRequestBytes - 4096
	deadline := time.Now().Add(redeliverBudget)
	var after uint64
	done := 0
	for done < limit && ctx.Err() == nil {
		if time.Now().After(deadline) {
			res.Error = "stopped after 20 s: call again for the rest"
			break
		}
		var letters []deadLetter
		if chosen != nil {
			if len(chosen) == 0 {
				break
			}
			letters = takeBatch(&chosen, p.Batch.MaxEvents, budget)
		} else {
			var err error
			letters, _, err = readDeadLetters(ctx, s.js, p.ID, after, min(p.Batch.MaxEvents, limit-done), budget)
			if err != nil {
				return res, err
			}
			if len(letters) == 0 {
				break
			}
			after = letters[len(letters)-1].Seq
		}
		done += len(letters)
		var batch []deadLetter
		for _, d := range letters {
			if d.sendable() {
				batch = append(batch, d)
			} else {
				res.Unsendable++
			}
		}
		if len(batch) == 0 {
			continue
		}
		if w.limiter != nil && w.limiter.Wait(ctx) != nil {
			break
		}
		raws := make([][]byte, len(batch))
		seqs := make([]uint64, len(batch))
		for i, d := range batch {
			raws[i], seqs[i] = d.data, d.Sequence
		}
		body := appendBody(make([]byte, 0, 256+totalLen(raws)), p.Format, raws)
		r := w.post(ctx, messageID(p.ID, seqs), body)
		res.Requests++
		res.Status = r.status
		rec := record{attempt: 1, events: len(raws), res: r, ids: eventIDs(raws)}
		if r.status < 200 || r.status > 299 {
			res.Failed += len(batch)
			res.Error = r.describe()
			rec.reason = "redelivery of dead letters stopped: " + r.describe()
			s.record(ctx, p, outcomeError, withKind(rec, kindRedeliver, ""))
			break
		}
		res.Sent += len(batch)
		s.record(ctx, p, outcomeDelivered, withKind(rec, kindRedeliver, ""))
		for _, d := range batch {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			err := str.DeleteMsg(dctx, d.Seq)
			cancel()
			if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
				res.NotRemoved++
				s.log.Warn("redelivered dead letter not removed; it will be sent again", "endpoint", p.ID, "seq", d.Seq, "err", err)
			}
		}
	}
	return res, nil
}

// takeBatch takes from the front of letters what one request carries: at most n events
// within budget bytes (one at least).
func takeBatch(letters *[]deadLetter, n, budget int) []deadLetter {
	size, i := 0, 0
	for ; i < len(*letters) && i < n; i++ {
		size += len((*letters)[i].data) + 1
		if i > 0 && size > budget {
			break
		}
	}
	out := (*letters)[:i]
	*letters = (*letters)[i:]
	return out
}

// ---- leases ----

// lease is what the WEBHOOKS bucket holds under a key while one replica does something that
// must not run twice at once.
type lease struct {
	Until time.Time `json:"until"`
}

// takeLease takes key for d: created if absent, taken over if its lease ran out (its
// holder died), refused (ok false) if held. The revision it returns releases it.
func takeLease(ctx context.Context, kv jetstream.KeyValue, key string, now time.Time, d time.Duration) (rev uint64, ok bool, err error) {
	b, _ := json.Marshal(lease{Until: now.Add(d)})
	rev, err = kv.Create(ctx, key, b)
	if err == nil {
		return rev, true, nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return 0, false, fmt.Errorf("lease %s: %w", key, err)
	}
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, false, nil // released a moment ago: the caller may try again
	}
	if err != nil {
		return 0, false, fmt.Errorf("lease %s: %w", key, err)
	}
	var held lease
	if json.Unmarshal(e.Value(), &held) == nil && now.Before(held.Until) {
		return 0, false, nil
	}
	rev, err = kv.Update(ctx, key, b, e.Revision())
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("lease %s: %w", key, err)
	}
	return rev, true, nil
}

func redeliverKey(id string) string { return "redeliver." + id }

// ---- test ----

// testResult is the answer of POST …/test.
type testResult struct {
	Status    int             `json:"status"` // 0 when no answer came
	OK        bool            `json:"ok"`     // a 2xx
	LatencyMs int64           `json:"latencyMs"`
	Body      string          `json:"body"`            // the first KiB of the answer's body
	Error     string          `json:"error,omitempty"` // why no answer came (timeout, refused, blocked address)
	Event     json.RawMessage `json:"event"`           // the sample event sent
}

// test is POST /api/v1/webhooks/:id/test: it sends one sample event (type
// telemetry.webhook-test, never in the log) to the endpoint now, in its format, signed, with
// its headers and auth, whatever its filters and state (a paused or disabled endpoint can be
// tried before it is resumed), and answers 200 with what the endpoint answered. The body is
// empty or {}. The attempt is recorded (kind test) like any other.
func (a *API) test(c *fiber.Ctx) error {
	p, err := a.sendable(c)
	if p == nil {
		return err
	}
	var none struct{}
	if probs := decodeBody(c.Body(), &none); len(probs) > 0 {
		return badRequest(c, probs)
	}
	ctx := c.UserContext()
	w := a.svc.newWorker(p)
	defer w.client.CloseIdleConnections()
	now := time.Now().UTC()
	var b event.Builder
	b.Str("endpoint", p.ID).Str("message", "a test event from mailpulse: this endpoint is reachable and verifies the signature")
	ev := event.Event{ID: a.svc.ids.New(now), CreatedAt: now, Type: TestEventType, Level: event.Info, Source: a.svc.cfg.Source, Data: b.Data()}
	raw := ev.AppendJSON(nil)
	r := w.post(ctx, "msg_test_"+strings.ToLower(ev.ID), appendBody(nil, p.Format, [][]byte{raw}))
	rec := record{attempt: 1, events: 1, res: r, ids: []string{ev.ID}}
	out := testResult{Status: r.status, OK: r.status >= 200 && r.status < 300, LatencyMs: r.elapsed.Milliseconds(), Body: r.snippet, Event: raw}
	typ := outcomeDelivered
	if !out.OK {
		typ, rec.reason = outcomeError, "test: "+r.describe()
	}
	if r.err != nil {
		out.Error = r.err.Error()
	}
	a.svc.record(ctx, p, typ, withKind(rec, kindTest, ""))
	return c.JSON(out)
}

// replayPlan is p for sending events again: its requests carry webhook-replay: true.
func replayPlan(p *plan) *plan {
	rp := *p
	rp.Headers = make(map[string]string, len(p.Headers)+1)
	for k, v := range p.Headers {
		rp.Headers[k] = v
	}
	rp.Headers[HeaderReplay] = "true"
	return &rp
}

// withKind marks a repair route's record.
func withKind(r record, kind, job string) record {
	r.kind, r.job = kind, job
	return r
}
