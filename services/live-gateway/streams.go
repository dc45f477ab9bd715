package livegateway

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/tidwall/gjson"

	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/filter"
	"github.com/mailpulse/mailpulse/shared/httpserver"
)

// Live event streams: GET /api/v1/live/events (native), /api/telemetry/traces/live (Stalwart
// 0.15) and /api/live/tracing (Stalwart 0.16). A stream may resume from a point in the log
// (Last-Event-ID or since=): the events since then are read from the log, then the stream
// joins the hub's live fan-out with nothing lost or repeated at the seam.

// errClientGone: a write to the client failed.
var errClientGone = errors.New("the client is gone")

// errRevoked ends the streams of a key that was revoked.
var errRevoked = errors.New("the API key of this stream was revoked")

// resumePoint is where a stream starts in the log; the zero value means "from now".
type resumePoint struct {
	afterSeq uint64    // resume after this sequence (Last-Event-ID or since=<seq>)
	since    time.Time // or from this time (since=<RFC 3339>)
	set      bool
}

func parseResume(lastEventID, since string) (resumePoint, error) {
	switch {
	case lastEventID != "":
		n, err := strconv.ParseUint(strings.TrimSpace(lastEventID), 10, 64)
		if err != nil {
			return resumePoint{}, fmt.Errorf("Last-Event-ID %q: want the stream sequence sent as id", truncate(lastEventID))
		}
		return resumePoint{afterSeq: n, set: true}, nil
	case since != "":
		if n, err := strconv.ParseUint(since, 10, 64); err == nil {
			return resumePoint{afterSeq: n, set: true}, nil
		}
		t, err := time.Parse(time.RFC3339Nano, since)
		if err != nil {
			return resumePoint{}, fmt.Errorf("since %q: want a stream sequence or an RFC 3339 time", truncate(since))
		}
		// JetStream keeps start times in int64 nanoseconds: year 2263 would wrap to 1678 and
		// replay the whole log.
		if !event.Representable(t) {
			return resumePoint{}, fmt.Errorf("since %q: want a time from 1970 to 2261", truncate(since))
		}
		return resumePoint{since: t, set: true}, nil
	}
	return resumePoint{}, nil
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// eventStream opens a live event stream in the given format.
func (s *Service) eventStream(fm format) fiber.Handler {
	return func(c *fiber.Ctx) error {
		f, from, err := parseStreamRequest(c, fm)
		if err != nil {
			return httpserver.Error(c, fiber.StatusBadRequest, err.Error())
		}
		key := httpserver.KeyOf(c)
		if err := s.acquire(key.ID); err != nil {
			return tooManyStreams(c, err)
		}
		revoked := s.keys.Revoked(key.ID)
		cl := &client{key: key.ID, follow: filter.NewFollower(f), needs: f.NeedsSpan(), ch: make(chan frame, s.cfg.QueueSize)}
		s.metrics.streamsBy.WithLabelValues(fm.String()).Inc()
		setSSEHeaders(c)
		gone := watchClose(c)
		subjects := f.Subjects()
		// The writer runs after this handler has returned (fasthttp), so it gets copies of
		// everything it needs, never the fiber context.
		c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
			defer s.release(key.ID)
			st := &stream{s: s, w: w, sw: &sseWriter{w: w, fm: fm}, cl: cl, fm: fm, subjects: subjects, revoked: revoked, gone: gone}
			s.metrics.closed.WithLabelValues(st.serve(from)).Inc()
		})
		return nil
	}
}

func parseStreamRequest(c *fiber.Ctx, fm format) (*filter.Filter, resumePoint, error) {
	q, err := queryValues(c)
	if err != nil {
		return nil, resumePoint{}, fmt.Errorf("query: %w", err)
	}
	if fm == formatStalwart15 {
		from015(q, "types", "type")
	}
	f, err := filter.Parse(q)
	if err != nil {
		return nil, resumePoint{}, errors.New(strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	from, err := parseResume(c.Get("Last-Event-ID"), c.Query("since"))
	if err != nil {
		return nil, resumePoint{}, err
	}
	return f, from, nil
}

// stream is one live event stream being written. It is used by its writer goroutine only.
type stream struct {
	s        *Service
	w        *bufio.Writer
	sw       *sseWriter
	cl       *client
	fm       format
	subjects []string
	revoked  <-chan struct{} // closed when the stream's key is revoked
	gone     <-chan struct{} // closed when the client closes the connection

	written uint64 // the last sequence covered: only later frames of the live queue are written
	unsent  int    // frames written but not yet added to the shared counter

	reported              uint64 // losses reported to the client
	losingSince, lastLoss time.Time
}

// serve writes the stream until the client goes, the gateway stops, the resume fails or the
// client is hopelessly slow, and returns which.
func (st *stream) serve(from resumePoint) string {
	s := st.s
	last := s.hub.register(st.cl)
	defer s.hub.unregister(st.cl)
	defer func() { s.metrics.frames.Add(float64(st.unsent)) }()
	st.sw.comment("connected")
	st.sw.raw("retry: 2000\n\n")
	if st.fm == formatStalwart16 {
		st.sw.ping(s.cfg.Heartbeat)
	}
	if st.flush() != nil {
		return "gone"
	}
	st.written = last
	if from.set {
		s.metrics.replays.Inc()
		if reason := st.resume(from, last); reason != "" {
			return reason
		}
	}
	return st.live()
}

func (st *stream) flush() error {
	if st.sw.err != nil {
		return st.sw.err
	}
	return st.w.Flush()
}

// resume writes the matching events of the log after from, up to the sequence last (the hub
// queues the ones after it for this stream). Gaps the log reports are sent as gap frames and
// the stream goes on. A read that fails ends the stream with an error frame naming what it
// missed; the client resumes from its Last-Event-ID. It returns why the stream ended, or ""
// when it goes on live.
func (st *stream) resume(from resumePoint, last uint64) string {
	s := st.s
	ctx, cancel := s.streamContext(st.revoked)
	defer cancel()
	r := bus.Range{
		Stream: bus.StreamEvents, Subjects: st.subjects,
		AfterSeq: from.afterSeq, FromTime: from.since, ToSeq: last,
		OnGap: st.gap, Stall: s.readStall,
	}
	res, err := bus.ReadRange(ctx, s.js, r, st.replayed)
	st.sw.flushBatch()
	switch {
	case err == nil:
		st.written = max(st.written, res.Last, res.End)
		return st.flushed("")
	case errors.Is(err, bus.ErrBeyondEnd):
		st.sw.named("gap", gapData{
			Reason:       fmt.Sprintf("resume point %d is past the end of the log (%d); streaming from now", from.afterSeq, res.End),
			LastSequence: res.End,
		})
		return st.flushed("")
	case errors.Is(err, errClientGone):
		return "gone"
	case errors.Is(context.Cause(ctx), errRevoked):
		st.written = max(st.written, res.Last)
		return st.revoke()
	case s.stopping():
		return st.shutdown()
	}
	st.sw.named("error", resumeFailed(err, from, last, res))
	_ = st.flush()
	return "resume-failed"
}

// resumeFailed is the error frame of a resume that read up to res.Last of a range that
// ended at last: the events after res.Last were missed, and the client resumes after it.
func resumeFailed(err error, from resumePoint, last uint64, res bus.RangeResult) errorData {
	e := errorData{
		Error:        "the log failed during the resume: " + err.Error() + "; reconnect with Last-Event-ID to resume",
		LastSequence: res.Last,
	}
	// A resume by time that read nothing does not know where it would have started.
	if to := max(last, res.End); res.Last < to && (from.since.IsZero() || res.Read > 0) {
		e.From, e.To = res.Last+1, to
	}
	return e
}

// flushed flushes the stream and returns reason, or "gone" if the client is.
func (st *stream) flushed(reason string) string {
	if st.flush() != nil {
		return "gone"
	}
	return reason
}

// replayed writes one event of a resume.
func (st *stream) replayed(m bus.Message) error {
	typ := strings.TrimPrefix(m.Subject, bus.EventsPrefix)
	var spanStart []byte
	if st.cl.needs {
		if id := gjson.GetBytes(m.Data, "data.spanId").String(); id != "" {
			spanStart = st.s.hub.spans.get(id)
		}
	}
	if st.cl.match(typ, m.Data, spanStart) {
		st.sw.event(frame{seq: m.Seq, typ: typ, data: m.Data, spanStart: spanStart})
		st.unsent++
	}
	if m.Pending == 0 {
		st.sw.flushBatch()
		if err := st.flush(); err != nil {
			return fmt.Errorf("%w: %w", errClientGone, err)
		}
	}
	if st.sw.err != nil {
		return fmt.Errorf("%w: %w", errClientGone, st.sw.err)
	}
	return nil
}

// gap tells the client about events of its resume that the log dropped before they were
// read; the stream goes on.
func (st *stream) gap(g bus.Gap) error {
	st.sw.flushBatch()
	st.sw.named("gap", gapData{Reason: fmt.Sprintf("the log no longer holds events %d to %d", g.From, g.To), From: g.From, To: g.To})
	if err := st.flush(); err != nil {
		return fmt.Errorf("%w: %w", errClientGone, err)
	}
	return nil
}

// revoke ends the stream of a revoked key with an error frame; reconnecting gets a 401.
func (st *stream) revoke() string {
	st.sw.flushBatch()
	st.sw.named("error", errorData{Error: errRevoked.Error(), LastSequence: st.written})
	_ = st.w.Flush()
	return "revoked"
}

func (st *stream) shutdown() string {
	st.sw.flushBatch()
	st.sw.named("shutdown", shutdownData{Reason: "the gateway is stopping; reconnect with Last-Event-ID to resume"})
	_ = st.w.Flush()
	return "shutdown"
}

// live writes the frames the hub queues for the stream, heartbeats and loss reports.
func (st *stream) live() string {
	s := st.s
	hb := time.NewTicker(s.cfg.Heartbeat)
	defer hb.Stop()
	var batch <-chan time.Time
	if st.fm != formatNative {
		t := time.NewTicker(s.cfg.StalwartBatch)
		defer t.Stop()
		batch = t.C
	}
	for {
		select {
		case f := <-st.cl.ch:
			st.writeQueued(f)
		case <-hb.C:
			st.heartbeat()
		case <-batch:
			st.sw.flushBatch()
		case <-s.closing:
			return st.shutdown()
		case <-st.revoked:
			return st.revoke()
		case <-st.gone:
			return "gone"
		}
		if st.hopeless(time.Now()) {
			return "too-slow"
		}
		if st.flush() != nil {
			return "gone"
		}
	}
}

// writeQueued writes f and everything queued behind it (up to a bound), to flush once.
func (st *stream) writeQueued(f frame) {
	yielded := false
	for n := 0; ; n++ {
		if f.seq > st.written {
			st.sw.event(f)
			st.written = f.seq
			st.unsent++
		}
		if n == 1023 {
			return
		}
		select {
		case f = <-st.cl.ch:
			continue
		default:
		}
		// Under load (more than one frame was waiting), let the hub hand over what it is
		// dispatching right now before the flush (a syscall), so frames share flushes. A
		// lone frame is flushed at once: with many streams, yielding would only add latency.
		if yielded || n == 0 {
			return
		}
		yielded = true
		runtime.Gosched()
		select {
		case f = <-st.cl.ch:
		default:
			return
		}
	}
}

func (st *stream) heartbeat() {
	// The shared counter is updated once a heartbeat, not on every wake-up: with a thousand
	// streams that was a contended cache line.
	if st.unsent > 0 {
		st.s.metrics.frames.Add(float64(st.unsent))
		st.unsent = 0
	}
	if st.sw.idle() {
		if st.fm == formatStalwart16 {
			st.sw.ping(st.s.cfg.Heartbeat)
		} else {
			st.sw.comment("ping")
		}
	}
	st.sw.touched = false
}

// hopeless reports the frames the stream lost since the last report, and whether to give it
// up: it has lost frames again and again for the whole hopeless period, never going half
// that period without a loss. A stream given up has been sent an error frame.
func (st *stream) hopeless(now time.Time) bool {
	s := st.s
	d := st.cl.dropped.Load()
	if d == st.reported {
		if !st.losingSince.IsZero() && now.Sub(st.lastLoss) > s.cfg.Hopeless/2 {
			st.losingSince = time.Time{} // it caught up
		}
		return false
	}
	st.sw.named("dropped", droppedData{Dropped: d - st.reported, Total: d})
	s.metrics.dropped.Add(float64(d - st.reported))
	st.reported = d
	if st.losingSince.IsZero() {
		st.losingSince = now
	}
	st.lastLoss = now
	if now.Sub(st.losingSince) <= s.cfg.Hopeless {
		return false
	}
	st.sw.flushBatch()
	st.sw.named("error", errorData{Error: "the stream cannot keep up and is closed; reconnect with Last-Event-ID to resume", LastSequence: st.written})
	_ = st.w.Flush()
	return true
}

// streamContext is cancelled when the gateway stops, when revoked is closed (its cause is
// then errRevoked), or when cancel is called. Stream writers run after their handler has
// returned, beyond fasthttp's request context (which must not be used as a
// context.Context), so it has no parent but the gateway's lifetime.
func (s *Service) streamContext(revoked <-chan struct{}) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(context.Background())
	go func() {
		select {
		case <-s.closing:
			cancel(nil)
		case <-revoked:
			cancel(errRevoked)
		case <-ctx.Done():
		}
	}()
	return ctx, func() { cancel(nil) }
}

// stopping reports whether the gateway is stopping.
func (s *Service) stopping() bool {
	select {
	case <-s.closing:
		return true
	default:
		return false
	}
}

// from015 renames, in the named parameters' comma lists, the event types that Stalwart 0.15
// calls otherwise (queue.queue-message is queue.message-queued): a 0.15 client asks with
// 0.15's names.
func from015(q url.Values, names ...string) {
	for _, name := range names {
		for i, v := range q[name] {
			parts := strings.Split(v, ",")
			for j, p := range parts {
				parts[j] = event.From015(strings.TrimSpace(p))
			}
			q[name][i] = strings.Join(parts, ",")
		}
	}
}

// watchClose returns a channel closed when the client closes the connection of a stream.
// While a stream is written nothing reads the connection, so a client that went away was
// noticed only by the next write failing: an idle stream held its slot until the next
// heartbeat. A stream's client sends nothing more, so a read that returns means it is gone
// (a pipelined request would be read and dropped: the response says Connection: close, so
// no request after a stream is served on its connection, and the read ends with it).
func watchClose(c *fiber.Ctx) <-chan struct{} {
	ch := make(chan struct{})
	conn := c.Context().Conn()
	c.Context().SetConnectionClose()
	go func() {
		defer close(ch)
		var b [64]byte
		for {
			if _, err := conn.Read(b[:]); err != nil {
				return
			}
		}
	}()
	return ch
}

func setSSEHeaders(c *fiber.Ctx) {
	c.Set(fiber.HeaderContentType, "text/event-stream")
	c.Set(fiber.HeaderCacheControl, "no-store")
	c.Set("X-Accel-Buffering", "no")
}
