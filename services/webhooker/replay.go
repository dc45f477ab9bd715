package webhooker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/httpserver"
	"github.com/mailpulse/mailpulse/shared/ssrf"
)

// A replay sends a time range of the log to one endpoint again: POST …/replay starts it in
// the background and answers 202 with a job; GET …/replay/:job shows its progress, DELETE
// stops it.
//
//   - It reads the log with bus.ReadRange (an ordered consumer of its own, filtered by the
//     endpoint's subjects), a batch at a time, and never touches the endpoint's durable
//     consumer: live delivery goes on, at its own position, while the replay runs.
//   - The range is fixed when it starts: [from, to] in the log's time, and no further than
//     the log's last sequence then, so a replay ends even while events keep coming.
//   - Each batch is the endpoint's (its types, level and sources; never its own delivery
//     records), sized by its batch settings, signed, with its headers, auth and rate limit,
//     and marked webhook-replay: true. Its webhook-id is a hash of the job and the events,
//     so it differs from the original delivery's (a receiver that deduplicates would drop
//     the replay otherwise) and stays the same across retries within the replay.
//   - A failed batch is tried again on the endpoint's schedule (Retry-After honoured), at
//     most 3 times and a minute apart; a permanent failure, or the third, stops the replay
//     as failed, with the position reached: a replay is not the delivery of record, and
//     nothing goes to the dead letters. Every attempt is recorded (kind replay, job <id>).
//   - One replay per endpoint at a time, across replicas: the job lives in the WEBHOOKS
//     bucket under replay.<id> (only the latest is kept), written with compare-and-set, and
//     holds a lease the running replica renews with every batch. Another POST gets 409
//     while it holds; a job whose replica died shows as abandoned once its lease runs out,
//     and a new replay may start. Any replica answers GET.
//   - It runs in the process that accepted it, until it ends or the process stops
//     (interrupted: start another from positionTime).

// Job states.
const (
	jobRunning     = "running"
	jobDone        = "done"
	jobFailed      = "failed"
	jobCanceled    = "canceled"
	jobInterrupted = "interrupted" // the process running it stopped
	jobAbandoned   = "abandoned"   // shown for a running job whose lease ran out
)

// Bounds of a replay.
const (
	replayTries    = 3
	replayMaxWait  = time.Minute     // the longest wait before a batch is tried again
	replaySaveWait = 5 * time.Second // progress is saved at least this often while reading
)

// ReplayJob is a replay's state, as GET …/replay/:job shows it.
type ReplayJob struct {
	ID       string    `json:"id"`
	Endpoint string    `json:"endpoint"`
	Status   string    `json:"status"`
	From     time.Time `json:"from"`
	To       time.Time `json:"to"`
	// EndSeq is the log's last sequence when the replay started: nothing after it is sent.
	EndSeq uint64 `json:"endSeq"`
	// Position is the last sequence read (sent or passed over), positionTime when the log
	// stored it: a replay that stopped early resumes with from = positionTime.
	Position     uint64     `json:"position,omitempty"`
	PositionTime *time.Time `json:"positionTime,omitempty"`
	Read         int        `json:"read"`    // events of the range read
	Sent         int        `json:"sent"`    // delivered (2xx)
	Skipped      int        `json:"skipped"` // read but not for the endpoint: level, source, its own records, not JSON
	Missing      uint64     `json:"missing,omitempty"`
	Requests     int        `json:"requests"`
	Failures     int        `json:"failures"` // requests without a 2xx
	// LogStart is set when the log no longer holds the start of the range: events before
	// it are gone (the history still has them).
	LogStart   *time.Time `json:"logStart,omitempty"`
	Error      string     `json:"error,omitempty"`
	Cancel     bool       `json:"cancel,omitempty"` // asked to stop; it does at its next batch
	StartedAt  time.Time  `json:"startedAt"`
	UpdatedAt  time.Time  `json:"updatedAt"`
	EndedAt    *time.Time `json:"endedAt,omitempty"`
	LeaseUntil time.Time  `json:"leaseUntil"`
}

func replayKey(id string) string { return "replay." + id }

// shown is the job as answered: a running job whose lease ran out is abandoned.
func (j ReplayJob) shown(now time.Time) ReplayJob {
	if j.Status == jobRunning && now.After(j.LeaseUntil) {
		j.Status = jobAbandoned
	}
	return j
}

func (j ReplayJob) holds(now time.Time) bool {
	return j.Status == jobRunning && !now.After(j.LeaseUntil)
}

// replayRequest is the body of POST …/replay.
type replayRequest struct {
	From  string `json:"from"`
	To    string `json:"to"`
	Start string `json:"start"` // the history routes' names
	End   string `json:"end"`
}

// parse reads the range: from (or start) is required, to (or end) defaults to now, and an
// end past now is now.
func (r replayRequest) parse(now time.Time) (from, to time.Time, probs []string) {
	pick := func(a, an, b, bn string) (string, string) {
		if a != "" && b != "" {
			probs = append(probs, fmt.Sprintf("give %s or %s, not both", an, bn))
		}
		if a != "" {
			return a, an
		}
		return b, bn
	}
	fv, fname := pick(r.From, "from", r.Start, "start")
	tv, tname := pick(r.To, "to", r.End, "end")
	parse := func(v, name string) (time.Time, bool) {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil || !event.Representable(t) {
			probs = append(probs, fmt.Sprintf("%s: %q: want an RFC 3339 time", name, trunc(v)))
			return time.Time{}, false
		}
		return t, true
	}
	okFrom, okTo := false, true
	if fv == "" {
		probs = append(probs, `from: required (an RFC 3339 time; "start" is accepted too)`)
	} else {
		from, okFrom = parse(fv, fname)
	}
	to = now
	if tv != "" {
		to, okTo = parse(tv, tname)
	}
	if okFrom && okTo {
		if to.After(now) {
			to = now
		}
		if !from.Before(to) {
			probs = append(probs, fmt.Sprintf("%s must be before %s (and before now)", fname, tname))
		}
	}
	return from.UTC(), to.UTC(), probs
}

// replay is POST /api/v1/webhooks/:id/replay {"from","to"}.
func (a *API) replay(c *fiber.Ctx) error {
	p, err := a.sendable(c)
	if p == nil {
		return err
	}
	now := a.endpoints.now().UTC()
	var req replayRequest
	probs := decodeBody(c.Body(), &req)
	var from, to time.Time
	if len(probs) == 0 {
		from, to, probs = req.parse(now)
	}
	if len(probs) > 0 {
		return badRequest(c, probs)
	}
	ctx := c.UserContext()
	str, err := a.endpoints.js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	info, err := str.Info(ctx)
	if err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	job := ReplayJob{ID: newID(), Endpoint: p.ID, Status: jobRunning, From: from, To: to, EndSeq: info.State.LastSeq,
		StartedAt: now, UpdatedAt: now, LeaseUntil: now.Add(replayLease(p))}
	if first := info.State.FirstTime; info.State.Msgs > 0 && first.After(from) {
		ft := first.UTC()
		job.LogStart = &ft
	}
	rev, cur, err := a.startJob(ctx, job)
	if err != nil {
		return err
	}
	if rev == 0 {
		return c.Status(fiber.StatusConflict).JSON(fiber.Map{"error": "a replay of this endpoint is under way: wait for it, or stop it", "job": cur.shown(now)})
	}
	run := &replayRun{s: a.svc, eps: a.endpoints, job: job, rev: rev, p: replayPlan(p)}
	if !a.endpoints.spawn(run.run) {
		return httpserver.Error(c, fiber.StatusServiceUnavailable, "shutting down")
	}
	c.Location("/api/v1/webhooks/" + p.ID + "/replay/" + job.ID)
	return c.Status(fiber.StatusAccepted).JSON(job)
}

// startJob writes job as the endpoint's replay unless one holds it (rev 0 then, with
// the one that holds).
func (a *API) startJob(ctx context.Context, job ReplayJob) (rev uint64, cur ReplayJob, err error) {
	kv := a.endpoints.kv
	key := replayKey(job.Endpoint)
	b, err := json.Marshal(job)
	if err != nil {
		return 0, cur, err
	}
	for range 3 {
		e, err := kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			rev, err = kv.Create(ctx, key, b)
			if errors.Is(err, jetstream.ErrKeyExists) {
				continue
			}
		case err != nil:
			return 0, cur, fmt.Errorf("replay state: %w", err)
		default:
			if json.Unmarshal(e.Value(), &cur) == nil && cur.holds(job.StartedAt) {
				return 0, cur, nil
			}
			rev, err = kv.Update(ctx, key, b, e.Revision())
			if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
				continue
			}
		}
		if err != nil {
			return 0, cur, fmt.Errorf("replay state: %w", err)
		}
		return rev, cur, nil
	}
	// Lost every race: another replica started one just now.
	e, err := kv.Get(ctx, key)
	if err == nil {
		_ = json.Unmarshal(e.Value(), &cur)
	}
	return 0, cur, nil
}

// readJob reads the endpoint's latest replay, and answers 404 unless it is job.
func (a *API) readJob(c *fiber.Ctx) (ReplayJob, uint64, bool, error) {
	id, jobID := c.Params("id"), c.Params("job")
	if _, ok := a.endpoints.Get(id); !ok {
		return ReplayJob{}, 0, false, httpserver.Error(c, fiber.StatusNotFound, ErrNotFound.Error())
	}
	e, err := a.endpoints.kv.Get(c.UserContext(), replayKey(id))
	var j ReplayJob
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
	case err != nil:
		return j, 0, false, fmt.Errorf("replay state: %w", err)
	default:
		if err := json.Unmarshal(e.Value(), &j); err != nil {
			return j, 0, false, fmt.Errorf("replay state unreadable: %w", err)
		}
	}
	if j.ID == "" || j.ID != jobID {
		return j, 0, false, httpserver.Error(c, fiber.StatusNotFound, "no replay "+trunc(jobID)+" of this endpoint (only the latest is kept)")
	}
	return j, e.Revision(), true, nil
}

// replayStatus is GET /api/v1/webhooks/:id/replay/:job.
func (a *API) replayStatus(c *fiber.Ctx) error {
	j, _, ok, err := a.readJob(c)
	if !ok {
		return err
	}
	return c.JSON(j.shown(a.endpoints.now()))
}

// replayCancel is DELETE /api/v1/webhooks/:id/replay/:job: a running replay is asked to
// stop (202; it does before its next batch); one whose replica died is marked canceled
// (200); one that ended gets 409.
func (a *API) replayCancel(c *fiber.Ctx) error {
	for range 3 {
		j, rev, ok, err := a.readJob(c)
		if !ok {
			return err
		}
		now := a.endpoints.now().UTC()
		status := fiber.StatusAccepted
		switch {
		case j.holds(now):
			j.Cancel = true
		case j.Status == jobRunning: // abandoned
			j.Cancel, j.Status, j.EndedAt, j.UpdatedAt = true, jobCanceled, &now, now
			status = fiber.StatusOK
		default:
			return c.Status(fiber.StatusConflict).JSON(fiber.Map{"error": "the replay is not running", "job": j.shown(now)})
		}
		b, err := json.Marshal(j)
		if err != nil {
			return err
		}
		if _, err := a.endpoints.kv.Update(c.UserContext(), replayKey(j.Endpoint), b, rev); err != nil {
			if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
				continue // it saved progress meanwhile
			}
			return fmt.Errorf("replay state: %w", err)
		}
		return c.Status(status).JSON(j.shown(now))
	}
	return httpserver.Error(c, fiber.StatusConflict, ErrConflict.Error())
}

// replayLease is how long a running replay holds its endpoint without saving: a request
// and the longest wait before the next.
func replayLease(p *plan) time.Duration { return p.Timeout.D() + replayMaxWait + 30*time.Second }

// Why a replay stopped, besides its endpoint's failures.
var (
	errReplayCanceled = errors.New("canceled")
	// errReplayLost: the job's state is no longer this run's (the endpoint was deleted, or
	// the lease ran out and another replay took over): it stops without writing.
	errReplayLost = errors.New("replay state taken over")
	errChunkFull  = errors.New("chunk full")
)

// replayRun is a replay under way, in the process that accepted it.
type replayRun struct {
	s   *Service
	eps *Endpoints
	job ReplayJob
	rev uint64
	p   *plan // the endpoint as the replay started, sending with webhook-replay: true
}

// run replays until the range is sent, the job fails or is canceled, or ctx (the store's)
// ends, and writes how it ended.
func (r *replayRun) run(ctx context.Context) {
	w := r.s.newWorker(r.p)
	defer w.client.CloseIdleConnections()
	err := r.loop(ctx, w)
	now := time.Now().UTC()
	switch {
	case errors.Is(err, errReplayLost):
		return
	case err == nil:
		r.job.Status = jobDone
	case errors.Is(err, errReplayCanceled):
		r.job.Status = jobCanceled
	case ctx.Err() != nil:
		r.job.Status, r.job.Error = jobInterrupted, "the process running it stopped: start another from positionTime"
	default:
		r.job.Status, r.job.Error = jobFailed, err.Error()
	}
	r.job.EndedAt = &now
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := r.save(sctx); err != nil && !errors.Is(err, errReplayCanceled) {
		r.s.log.Warn("replay end not saved", "endpoint", r.job.Endpoint, "job", r.job.ID, "err", err)
	}
}

// chunk is what one read of the range gathered: at most one request's events, and how far
// it read (applied to the job once the events are sent).
type chunk struct {
	raws     [][]byte
	seqs     []uint64
	outcomes int // how many are delivery records (a request of nothing else is not recorded)
	bytes    int
	done     bool // the range is read to its end

	read, skipped int
	last          uint64
	lastTime      time.Time
}

func (r *replayRun) loop(ctx context.Context, w *worker) error {
	first := true
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, ok := r.eps.Get(r.job.Endpoint); !ok {
			return errReplayLost // deleted: its state went with it
		}
		ch, err := r.read(ctx, w, first)
		if err != nil {
			return err
		}
		first = false
		if len(ch.raws) > 0 {
			if err := r.send(ctx, w, ch); err != nil {
				return err
			}
		}
		r.job.Read, r.job.Skipped = r.job.Read+ch.read, r.job.Skipped+ch.skipped
		if ch.last > 0 {
			r.job.Position, r.job.PositionTime = ch.last, &ch.lastTime
		}
		if err := r.save(ctx); err != nil {
			return err
		}
		if ch.done {
			return nil
		}
	}
}

// read gathers the next request's events from the range: the first read starts at the
// range's time, the others after the position.
func (r *replayRun) read(ctx context.Context, w *worker, first bool) (chunk, error) {
	var ch chunk
	budget := r.s.cfg.MaxRequestBytes - 4096
	rng := bus.Range{Stream: bus.StreamEvents, Subjects: r.p.subjects, ToSeq: r.job.EndSeq, ToTime: r.job.To,
		OnGap: func(g bus.Gap) error { r.job.Missing += g.To - g.From + 1; return nil }}
	if first {
		rng.FromTime = r.job.From
	} else {
		rng.AfterSeq = r.job.Position
	}
	if r.job.EndSeq == 0 || (!first && r.job.Position >= r.job.EndSeq) {
		ch.done = true
		return ch, nil
	}
	started := time.Now()
	_, err := bus.ReadRange(ctx, r.s.js, rng, func(m bus.Message) error {
		if len(ch.raws) > 0 && ch.bytes+len(m.Data)+1 > budget {
			return errChunkFull // m is the next read's first
		}
		ch.last, ch.lastTime, ch.read = m.Seq, m.Time.UTC(), ch.read+1
		keep, outcome, err := w.match(m.Subject, m.Data)
		if err != nil || !keep {
			ch.skipped++
		} else {
			ch.raws, ch.seqs, ch.bytes = append(ch.raws, m.Data), append(ch.seqs, m.Seq), ch.bytes+len(m.Data)+1
			if outcome {
				ch.outcomes++
			}
		}
		if len(ch.raws) >= r.p.Batch.MaxEvents || time.Since(started) > replaySaveWait {
			return errChunkFull
		}
		return nil
	})
	switch {
	case errors.Is(err, errChunkFull):
	case err != nil:
		return ch, fmt.Errorf("read the log: %w", err)
	default:
		ch.done = true
	}
	return ch, nil
}

// send delivers a chunk, trying it again on the endpoint's schedule.
func (r *replayRun) send(ctx context.Context, w *worker, ch chunk) error {
	p := r.p
	body := appendBody(make([]byte, 0, 256+ch.bytes), p.Format, ch.raws)
	msgID := messageID(p.ID+"/replay/"+r.job.ID, ch.seqs)
	recorded := ch.outcomes < len(ch.raws)
	tries := replayTries
	if p.Retry.MaxAttempts > 0 {
		tries = min(tries, p.Retry.MaxAttempts)
	}
	for attempt := 1; ; attempt++ {
		if w.limiter != nil {
			if err := w.limiter.Wait(ctx); err != nil {
				return err
			}
		}
		res := w.post(ctx, msgID, body)
		r.job.Requests++
		rec := record{attempt: attempt, events: len(ch.raws), res: res, ids: eventIDs(ch.raws)}
		if res.status >= 200 && res.status < 300 {
			r.job.Sent += len(ch.raws)
			if recorded {
				r.s.record(ctx, p, outcomeDelivered, withKind(rec, kindReplay, r.job.ID))
			}
			return nil
		}
		r.job.Failures++
		if res.err != nil && ctx.Err() != nil {
			return ctx.Err() // stopping: the attempt did not count
		}
		status := res.status
		permanent := ssrf.IsBlocked(res.err) || status == http.StatusGone ||
			status >= 400 && status < 500 && status != http.StatusRequestTimeout && status != http.StatusTooEarly && status != http.StatusTooManyRequests
		if permanent || attempt >= tries {
			rec.reason = "replay stopped: " + res.describe()
			if recorded {
				r.s.record(ctx, p, outcomeError, withKind(rec, kindReplay, r.job.ID))
			}
			how := "a permanent failure"
			if !permanent {
				how = fmt.Sprintf("%d attempts", attempt)
			}
			return fmt.Errorf("%s at sequence %d: %s", how, ch.seqs[0], res.describe())
		}
		next := jitter(p.Retry.nominal(attempt))
		if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
			if d, ok := retryAfter(res.header, time.Now()); ok {
				next = d
			}
		}
		next = min(next, replayMaxWait)
		rec.reason, rec.next = res.describe(), next
		if recorded {
			r.s.record(ctx, p, outcomeError, withKind(rec, kindReplay, r.job.ID))
		}
		if err := r.save(ctx); err != nil {
			return err
		}
		if !sleep(ctx, next) {
			return ctx.Err()
		}
	}
}

// save writes the job's progress and renews its lease, unless its state is no longer this
// run's (errReplayLost) or it was asked to stop (errReplayCanceled, after writing).
func (r *replayRun) save(ctx context.Context) error {
	kv := r.eps.kv
	key := replayKey(r.job.Endpoint)
	for range 3 {
		now := time.Now().UTC()
		r.job.UpdatedAt, r.job.LeaseUntil = now, now.Add(replayLease(r.p))
		b, err := json.Marshal(r.job)
		if err != nil {
			return err
		}
		rev, err := kv.Update(ctx, key, b, r.rev)
		if err == nil {
			r.rev = rev
			if r.job.Cancel && r.job.Status == jobRunning {
				return errReplayCanceled
			}
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				return errReplayLost
			}
			return fmt.Errorf("save replay state: %w", err)
		}
		// Written meanwhile: a stop asked for, or another replay (this one's lease ran out),
		// or the endpoint deleted (the key purged).
		e, err := kv.Get(ctx, key)
		if err != nil {
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				return errReplayLost
			}
			return fmt.Errorf("save replay state: %w", err)
		}
		var cur ReplayJob
		if json.Unmarshal(e.Value(), &cur) != nil || cur.ID != r.job.ID || (cur.Status != jobRunning && !cur.Cancel) {
			return errReplayLost
		}
		r.job.Cancel = r.job.Cancel || cur.Cancel
		r.rev = e.Revision()
	}
	return fmt.Errorf("save replay state: %w", ErrConflict)
}

// ---- background work ----

// runWork runs the work handed to spawn, each in its own goroutine with ctx (the store's),
// until ctx ends; then it takes no more and waits for what runs.
func (s *Endpoints) runWork(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case f := <-s.work:
			wg.Add(1)
			go func() {
				defer wg.Done()
				f(ctx)
			}()
		case <-ctx.Done():
			close(s.stopping)
			return
		}
	}
}

// spawn hands f to runWork; false when the store is closing.
func (s *Endpoints) spawn(f func(context.Context)) bool {
	select {
	case s.work <- f:
		return true
	case <-s.stopping:
		return false
	}
}
