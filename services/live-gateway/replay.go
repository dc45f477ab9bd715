package livegateway

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/filter"
	"github.com/mailpulse/mailpulse/shared/httpserver"
)

// lateArrival is how long after its own time an event may reach the log and still be
// replayed with its range.
const lateArrival = time.Hour

// replayRequest is a parsed GET /api/v1/replay.
type replayRequest struct {
	from, to time.Time
	sse      bool
	filter   *filter.Filter
}

// replayRange is GET /api/v1/replay?start=&end=&types=…: the original events of a time range,
// straight from the log, at full speed, with the live filters. It ends when the range is
// exhausted; without end, at the end of the log as it was when the request came. NDJSON by
// default (one event per line); SSE with Accept: text/event-stream or format=sse.
//
// A replay never ends as if complete when it is not: a read that fails ends SSE with an error
// frame, and NDJSON with an error line and no end of the chunked body, so that a client
// reading to the end sees an unexpected EOF.
func (s *Service) replayRange(c *fiber.Ctx) error {
	req, err := parseReplay(c)
	if err != nil {
		return httpserver.Error(c, fiber.StatusBadRequest, err.Error())
	}
	// The end: the last sequence now, so the replay ends even while events keep coming.
	ctx, cancel := requestContext()
	_, end, err := bus.Bounds(ctx, s.js, bus.StreamEvents)
	cancel()
	if err != nil {
		return httpserver.Error(c, fiber.StatusServiceUnavailable, "the log is unavailable: "+err.Error())
	}
	key := httpserver.KeyOf(c)
	if err := s.acquire(key.ID); err != nil {
		return tooManyStreams(c, err)
	}
	revoked := s.keys.Revoked(key.ID)
	s.metrics.replays.Inc()
	if req.sse {
		setSSEHeaders(c)
	} else {
		c.Set(fiber.HeaderContentType, "application/x-ndjson")
		c.Set(fiber.HeaderCacheControl, "no-store")
	}
	// The body is a pipe that this goroutine writes, rather than a fasthttp stream writer:
	// fasthttp ends a chunked body cleanly when its writer returns, whereas a pipe closed
	// with an error makes it stop and close the connection without the last chunk. Pipe
	// writes return once fasthttp has read them, so the error line goes out first.
	pr, pw := io.Pipe()
	s.replays.Add(1)
	go func() {
		defer s.replays.Done()
		defer s.release(key.ID)
		w := bufio.NewWriterSize(pw, 4096)
		reason := s.streamRange(w, req, end, revoked)
		s.metrics.closed.WithLabelValues("replay-" + reason).Inc()
		if reason == "failed" && !req.sse {
			pw.CloseWithError(errReplayFailed)
			return
		}
		pw.Close()
	}()
	c.Context().SetBodyStream(pr, -1)
	return nil
}

func parseReplay(c *fiber.Ctx) (replayRequest, error) {
	q, err := queryValues(c)
	if err != nil {
		return replayRequest{}, fmt.Errorf("query: %w", err)
	}
	var problems []string
	var req replayRequest
	// start and end, not from and to: those are mail keys, filterable like any other.
	// Both must fit JetStream's int64 nanoseconds (a start in 2263 wrapped to 1678).
	if v := q.Get("start"); v == "" {
		problems = append(problems, "start: required (RFC 3339)")
	} else if req.from, err = time.Parse(time.RFC3339Nano, v); err != nil {
		problems = append(problems, "start: want an RFC 3339 time")
	} else if !event.Representable(req.from) {
		problems = append(problems, "start: want a time from 1970 to 2261")
	}
	if v := q.Get("end"); v != "" {
		if req.to, err = time.Parse(time.RFC3339Nano, v); err != nil {
			problems = append(problems, "end: want an RFC 3339 time")
		} else if !event.Representable(req.to) {
			problems = append(problems, "end: want a time from 1970 to 2261")
		} else if !req.from.IsZero() && req.to.Before(req.from) {
			problems = append(problems, "start is after end: the range is reversed")
		}
	}
	req.sse = q.Get("format") == "sse" || strings.Contains(c.Get(fiber.HeaderAccept), "text/event-stream")
	if f := q.Get("format"); f != "" && f != "sse" && f != "ndjson" {
		problems = append(problems, "format: want ndjson or sse")
	}
	for _, k := range []string{"start", "end", "format"} {
		q.Del(k)
	}
	if req.filter, err = filter.Parse(q); err != nil {
		problems = append(problems, strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	if len(problems) > 0 {
		return replayRequest{}, errors.New(strings.Join(problems, "; "))
	}
	return req, nil
}

// errReplayFailed ends an NDJSON replay's body in place of its last chunk.
var errReplayFailed = errors.New("the replay failed")

// replayWriter writes a replay's events in NDJSON or SSE, and its end.
type replayWriter struct {
	w       *bufio.Writer
	sw      *sseWriter
	sse     bool
	fl      *filter.Follower
	from    time.Time
	to      time.Time
	sent    int
	lastSeq uint64 // of the last event sent
}

// streamRange writes the replay and returns how it ended: done, gone or failed.
func (s *Service) streamRange(w *bufio.Writer, req replayRequest, end uint64, revoked <-chan struct{}) string {
	rw := &replayWriter{w: w, sw: &sseWriter{w: w, fm: formatNative}, sse: req.sse, fl: filter.NewFollower(req.filter), from: req.from, to: req.to}
	if rw.sse {
		rw.sw.comment("replay")
	}
	if end == 0 {
		return rw.done()
	}
	ctx, cancel := s.streamContext(revoked)
	defer cancel()
	r := bus.Range{Stream: bus.StreamEvents, Subjects: req.filter.Subjects(), FromTime: req.from, ToSeq: end, Stall: s.readStall}
	if !req.to.IsZero() {
		// The log is ordered by arrival; events are selected by their own time. Past
		// lateArrival after to, no event of the range is expected any more.
		r.ToTime = req.to.Add(lateArrival)
	}
	if rw.sse {
		r.OnGap = rw.gap // NDJSON has no way to say it: the read fails with ErrGap
	}
	_, err := bus.ReadRange(ctx, s.js, r, rw.write)
	switch {
	case err == nil:
		return rw.done()
	case errors.Is(err, errClientGone):
		return "gone"
	case errors.Is(context.Cause(ctx), errRevoked):
		err = errRevoked
	case s.stopping():
		err = errors.New("the gateway is stopping")
	}
	return rw.fail(err)
}

func (rw *replayWriter) write(m bus.Message) error {
	typ := strings.TrimPrefix(m.Subject, bus.EventsPrefix)
	if !rw.fl.Match(typ, m.Data, nil) || !inRange(m.Data, rw.from, rw.to) {
		return nil
	}
	if rw.sse {
		rw.sw.event(frame{seq: m.Seq, typ: typ, data: m.Data})
	} else {
		rw.sw.data(m.Data)
		rw.sw.raw("\n")
	}
	rw.sent++
	rw.lastSeq = m.Seq
	if rw.sw.err != nil {
		return fmt.Errorf("%w: %w", errClientGone, rw.sw.err)
	}
	return nil
}

func (rw *replayWriter) gap(g bus.Gap) error {
	rw.sw.named("gap", gapData{Reason: fmt.Sprintf("the log no longer holds events %d to %d", g.From, g.To), From: g.From, To: g.To})
	if rw.sw.err != nil {
		return fmt.Errorf("%w: %w", errClientGone, rw.sw.err)
	}
	return nil
}

func (rw *replayWriter) done() string {
	if rw.sse {
		rw.sw.named("end", endData{Events: rw.sent})
	}
	if rw.sw.err != nil || rw.w.Flush() != nil {
		return "gone"
	}
	return "done"
}

// replayError is the last line of an NDJSON replay that failed.
type replayError struct {
	Error        string `json:"error"`
	LastSequence uint64 `json:"lastSequence"`
}

// fail ends a replay whose read failed: with an error frame (SSE) or an error line (NDJSON,
// whose body the caller then ends uncleanly).
func (rw *replayWriter) fail(err error) string {
	msg := "the replay is incomplete: " + err.Error()
	if rw.sse {
		rw.sw.named("error", errorData{Error: msg, LastSequence: rw.lastSeq})
	} else {
		line, _ := json.Marshal(replayError{Error: msg, LastSequence: rw.lastSeq})
		rw.sw.write(append(line, '\n'))
	}
	_ = rw.w.Flush()
	return "failed"
}

// inRange checks the event time (createdAt), which may differ from the time the log stored
// the event: the read starts at the stored time, and events are kept by their own time.
func inRange(raw []byte, from, to time.Time) bool {
	i := strings.Index(string(raw[:min(len(raw), 200)]), `"createdAt":"`)
	if i < 0 {
		return true
	}
	rest := raw[i+len(`"createdAt":"`):]
	j := strings.IndexByte(string(rest[:min(len(rest), 40)]), '"')
	if j < 0 {
		return true
	}
	t, err := time.Parse(time.RFC3339Nano, string(rest[:j]))
	if err != nil {
		return true
	}
	return !t.Before(from) && (to.IsZero() || !t.After(to))
}
