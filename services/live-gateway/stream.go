package livegateway

import (
	"bufio"
	"context"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/tidwall/gjson"

	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/filter"
)

type format int

const (
	formatNative     format = iota // one frame per event, id = stream sequence
	formatStalwart15               // Stalwart 0.15: event: trace, JSON array of {text, createdAt, type, data}
	formatStalwart16               // Stalwart 0.16: event: ping first, event: trace, JSON array of TraceEvent
)

func (f format) String() string {
	return [...]string{"native", "stalwart-0.15", "stalwart-0.16"}[f]
}

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
		q, err := queryValues(c)
		if err != nil {
			return deny(c, fiber.StatusBadRequest, "query: "+err.Error())
		}
		f, err := filter.Parse(q)
		if err != nil {
			return deny(c, fiber.StatusBadRequest, strings.ReplaceAll(err.Error(), "\n", "; "))
		}
		from, err := parseResume(c.Get("Last-Event-ID"), c.Query("since"))
		if err != nil {
			return deny(c, fiber.StatusBadRequest, err.Error())
		}
		key := keyOf(c)
		if err := s.acquire(key.ID); err != nil {
			c.Set(fiber.HeaderRetryAfter, "5")
			return deny(c, fiber.StatusTooManyRequests, err.Error())
		}
		cl := &client{key: key.ID, follow: filter.NewFollower(f), needs: f.NeedsSpan(), ch: make(chan frame, s.cfg.QueueSize)}
		s.metrics.streamsBy.WithLabelValues(fm.String()).Inc()
		c.Set(fiber.HeaderContentType, "text/event-stream")
		c.Set(fiber.HeaderCacheControl, "no-store")
		c.Set(fiber.HeaderConnection, "keep-alive")
		c.Set("X-Accel-Buffering", "no")
		subjects := f.Subjects()
		// The writer runs after this handler has returned (fasthttp), so it gets copies of
		// everything it needs, never the fiber context.
		c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
			defer s.release(key.ID)
			reason := s.serve(w, cl, fm, from, subjects)
			s.metrics.closed.WithLabelValues(reason).Inc()
		})
		return nil
	}
}

// serve writes one stream until the client goes, the gateway stops, or the client is
// hopelessly slow. It returns why it ended.
func (s *Service) serve(w *bufio.Writer, cl *client, fm format, from resumePoint, subjects []string) string {
	last := s.hub.register(cl)
	defer s.hub.unregister(cl)
	sw := &sseWriter{w: w, fm: fm}
	sw.comment("connected")
	sw.raw("retry: 2000\n\n")
	if fm == formatStalwart16 {
		sw.ping(s.cfg.Heartbeat)
	}
	if err := w.Flush(); err != nil {
		return "gone"
	}
	written := last
	if from.set {
		s.metrics.replays.Inc()
		var err error
		if written, err = s.replay(w, sw, cl, from, last, subjects); err != nil {
			return "gone"
		}
	}
	hb := time.NewTicker(s.cfg.Heartbeat)
	defer hb.Stop()
	var batchTimer <-chan time.Time
	if fm != formatNative {
		t := time.NewTicker(s.cfg.StalwartBatch)
		defer t.Stop()
		batchTimer = t.C
	}
	reported := uint64(0)
	var losingSince, lastLoss time.Time
	yielded := false
	unreported := 0
	defer func() { s.metrics.frames.Add(float64(unreported)) }()
	for {
		select {
		case f := <-cl.ch:
			// Write everything queued (up to a bound), then flush once.
			sent := 0
			for n := 0; ; n++ {
				if f.seq > written {
					sw.event(f)
					written = f.seq
					sent++
				}
				if n == 1023 {
					break
				}
				select {
				case f = <-cl.ch:
					continue
				default:
				}
				// Under load (more than one frame was waiting), let the hub hand over
				// what it is dispatching right now before the flush (a syscall), so
				// frames share flushes. A lone frame is flushed at once: with many
				// streams, yielding would only add latency.
				if !yielded && n > 0 {
					yielded = true
					runtime.Gosched()
					select {
					case f = <-cl.ch:
						continue
					default:
					}
				}
				break
			}
			yielded = false
			unreported += sent
		case <-hb.C:
			// The shared counter is updated once a heartbeat, not on every wake-up:
			// with a thousand streams that was a contended cache line.
			if unreported > 0 {
				s.metrics.frames.Add(float64(unreported))
				unreported = 0
			}
			if sw.idle() {
				if fm == formatStalwart16 {
					sw.ping(s.cfg.Heartbeat)
				} else {
					sw.comment("ping")
				}
			}
			sw.touched = false
		case <-batchTimer:
			sw.flushBatch()
		case <-s.closing:
			sw.flushBatch()
			sw.named("shutdown", `{"reason":"the gateway is stopping; reconnect with Last-Event-ID to resume"}`)
			_ = w.Flush()
			return "shutdown"
		}
		if fm == formatNative {
			sw.flushBatch()
		}
		// Report losses, and give up on a stream that keeps losing: one that has lost
		// frames again and again for the whole hopeless period, never going half that
		// period without a loss.
		now := time.Now()
		if d := cl.dropped.Load(); d != reported {
			sw.named("dropped", `{"dropped":`+strconv.FormatUint(d-reported, 10)+`,"total":`+strconv.FormatUint(d, 10)+`}`)
			s.metrics.dropped.Add(float64(d - reported))
			reported = d
			if losingSince.IsZero() {
				losingSince = now
			}
			lastLoss = now
			if now.Sub(losingSince) > s.cfg.Hopeless {
				sw.named("error", `{"error":"the stream cannot keep up and is closed; reconnect with Last-Event-ID to resume"}`)
				_ = w.Flush()
				return "too-slow"
			}
		} else if !losingSince.IsZero() && now.Sub(lastLoss) > s.cfg.Hopeless/2 {
			losingSince = time.Time{} // it caught up
		}
		if err := sw.err; err != nil {
			return "gone"
		}
		if err := w.Flush(); err != nil {
			return "gone"
		}
	}
}

// replay writes the matching events after from up to the sequence last (the hub delivers
// the ones after), and returns the last sequence written. If the log no longer holds the
// start, or the start is past the end of the log, a gap event says so first.
func (s *Service) replay(w *bufio.Writer, sw *sseWriter, cl *client, from resumePoint, last uint64, subjects []string) (uint64, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-s.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	st, err := s.js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		sw.named("gap", `{"reason":"the log is unavailable; events until now are not replayed"}`)
		return last, w.Flush()
	}
	info, err := st.Info(ctx)
	if err != nil {
		sw.named("gap", `{"reason":"the log is unavailable; events until now are not replayed"}`)
		return last, w.Flush()
	}
	first, end := info.State.FirstSeq, info.State.LastSeq
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: subjects}
	switch {
	case !from.since.IsZero():
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &from.since
	case from.afterSeq > end:
		sw.named("gap", fmt.Sprintf(`{"reason":"resume point %d is past the end of the log (%d); streaming from now","lastSequence":%d}`, from.afterSeq, end, end))
		return last, w.Flush()
	case from.afterSeq+1 < first:
		sw.named("gap", fmt.Sprintf(`{"reason":"the log no longer holds events %d to %d","from":%d,"to":%d}`, from.afterSeq+1, first-1, from.afterSeq+1, first-1))
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, first
	default:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, from.afterSeq+1
	}
	written := from.afterSeq
	if last <= written && from.since.IsZero() {
		return written, w.Flush()
	}
	cons, err := s.js.OrderedConsumer(ctx, bus.StreamEvents, cfg)
	if err != nil {
		return last, w.Flush()
	}
	if info := cons.CachedInfo(); info != nil && info.NumPending == 0 {
		return max(written, last), w.Flush()
	}
	for {
		batch, err := cons.Fetch(500, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return max(written, last), w.Flush()
		}
		got := 0
		for msg := range batch.Messages() {
			got++
			meta, err := msg.Metadata()
			if err != nil {
				continue
			}
			seq := meta.Sequence.Stream
			if seq > last {
				// The live queue has this one and everything after it.
				return max(written, last), w.Flush()
			}
			typ := strings.TrimPrefix(msg.Subject(), bus.EventsPrefix)
			var spanStart []byte
			if cl.needs {
				if id := gjson.GetBytes(msg.Data(), "data.spanId").String(); id != "" {
					spanStart = s.hub.spans.get(id)
				}
			}
			if cl.match(typ, msg.Data(), spanStart) {
				sw.event(frame{seq: seq, typ: typ, data: msg.Data(), spanStart: spanStart})
				s.metrics.frames.Inc()
			}
			written = seq
			if meta.NumPending == 0 || seq == last {
				sw.flushBatch()
				return max(written, last), w.Flush()
			}
		}
		sw.flushBatch()
		if sw.err != nil {
			return written, sw.err
		}
		if err := w.Flush(); err != nil {
			return written, err
		}
		if got == 0 {
			return max(written, last), nil
		}
	}
}

// sseWriter writes frames of one format; Stalwart formats gather events into one frame.
type sseWriter struct {
	w       *bufio.Writer
	fm      format
	items   []byte // the JSON array being gathered (Stalwart formats)
	count   int
	lastSeq uint64
	touched bool // something was written since the last heartbeat tick
	err     error
}

func (sw *sseWriter) raw(s string) {
	if _, err := sw.w.WriteString(s); err != nil && sw.err == nil {
		sw.err = err
	}
	sw.touched = true
}

func (sw *sseWriter) idle() bool { return !sw.touched }

func (sw *sseWriter) comment(s string) { sw.raw(": " + s + "\n\n") }

func (sw *sseWriter) named(name, data string) { sw.raw("event: " + name + "\ndata: " + data + "\n\n") }

func (sw *sseWriter) ping(interval time.Duration) {
	sw.named("ping", `{"interval":`+strconv.FormatInt(interval.Milliseconds(), 10)+`}`)
}

func (sw *sseWriter) event(f frame) {
	if sw.fm == formatNative {
		sw.raw("id: " + strconv.FormatUint(f.seq, 10) + "\nevent: event\ndata: ")
		if _, err := sw.w.Write(f.data); err != nil && sw.err == nil {
			sw.err = err
		}
		sw.raw("\n\n")
		return
	}
	if sw.count == 0 {
		sw.items = append(sw.items[:0], '[')
	} else {
		sw.items = append(sw.items, ',')
	}
	if sw.fm == formatStalwart15 {
		sw.items = appendStalwart15(sw.items, f)
	} else {
		sw.items = appendStalwart16(sw.items, f)
	}
	sw.count++
	sw.lastSeq = f.seq
	if sw.count >= 1000 {
		sw.flushBatch()
	}
}

// flushBatch writes the gathered Stalwart frame, with the last sequence as its id so that
// EventSource resumes from it after a reconnect.
func (sw *sseWriter) flushBatch() {
	if sw.count == 0 {
		return
	}
	sw.items = append(sw.items, ']')
	sw.raw("id: " + strconv.FormatUint(sw.lastSeq, 10) + "\nevent: trace\ndata: ")
	if _, err := sw.w.Write(sw.items); err != nil && sw.err == nil {
		sw.err = err
	}
	sw.raw("\n\n")
	sw.count = 0
}

// mergedData is the event's data followed by its span start's keys the event lacks, as
// Stalwart's JSON merges them (the event's own keys win).
func mergedData(f frame) []gjson.Result {
	data := gjson.GetBytes(f.data, "data")
	var out []gjson.Result
	seen := map[string]bool{}
	data.ForEach(func(k, v gjson.Result) bool {
		seen[k.Str] = true
		out = append(out, k, v)
		return true
	})
	if f.spanStart != nil {
		gjson.GetBytes(f.spanStart, "data").ForEach(func(k, v gjson.Result) bool {
			if !seen[k.Str] {
				out = append(out, k, v)
			}
			return true
		})
	}
	return out
}

// appendStalwart15 writes Stalwart 0.15's item: {"text","createdAt","type","data"}.
func appendStalwart15(b []byte, f frame) []byte {
	r := gjson.GetManyBytes(f.data, "createdAt", "type")
	desc := f.typ
	if info, ok := event.Known().Lookup(f.typ); ok {
		desc = info.Description
	}
	b = append(b, `{"text":`...)
	b = appendJSONString(b, desc)
	b = append(b, `,"createdAt":`...)
	b = append(b, r[0].Raw...)
	b = append(b, `,"type":`...)
	b = append(b, r[1].Raw...)
	b = append(b, `,"data":{`...)
	kv := mergedData(f)
	for i := 0; i < len(kv); i += 2 {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, kv[i].Raw...)
		b = append(b, ':')
		b = append(b, kv[i+1].Raw...)
	}
	return append(b, "}}"...)
}

// appendStalwart16 writes Stalwart 0.16's TraceEvent: {"event","timestamp","keyValues":[{key,
// value:{"@type",value}}]}.
func appendStalwart16(b []byte, f frame) []byte {
	r := gjson.GetManyBytes(f.data, "createdAt", "type")
	b = append(b, `{"event":`...)
	b = append(b, r[1].Raw...)
	b = append(b, `,"timestamp":`...)
	b = append(b, r[0].Raw...)
	b = append(b, `,"keyValues":[`...)
	kv := mergedData(f)
	for i := 0; i < len(kv); i += 2 {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"key":`...)
		b = append(b, kv[i].Raw...)
		b = append(b, `,"value":`...)
		b = appendTagged(b, kv[i+1])
		b = append(b, '}')
	}
	return append(b, "]}"...)
}

// appendTagged writes a value as Stalwart's registry does: {"@type": …, "value": …}.
func appendTagged(b []byte, v gjson.Result) []byte {
	tag := "String"
	switch v.Type {
	case gjson.Number:
		switch {
		case strings.ContainsAny(v.Raw, ".eE"):
			tag = "Float"
		case strings.HasPrefix(v.Raw, "-"):
			tag = "Integer"
		default:
			tag = "UnsignedInt"
		}
	case gjson.True, gjson.False:
		tag = "Boolean"
	case gjson.Null:
		return append(b, `{"@type":"Null"}`...)
	case gjson.String:
		if _, err := time.Parse(time.RFC3339Nano, v.Str); err == nil {
			tag = "UTCDateTime"
		}
	case gjson.JSON:
		if v.IsArray() {
			b = append(b, `{"@type":"List","value":[`...)
			first := true
			v.ForEach(func(_, e gjson.Result) bool {
				if !first {
					b = append(b, ',')
				}
				first = false
				b = appendTagged(b, e)
				return true
			})
			return append(b, "]}"...)
		}
		// A nested event: {"type","data"}.
		b = append(b, `{"@type":"Event","event":`...)
		if t := v.Get("type"); t.Exists() {
			b = append(b, t.Raw...)
		} else {
			b = append(b, `""`...)
		}
		b = append(b, `,"value":[`...)
		first := true
		v.Get("data").ForEach(func(k, e gjson.Result) bool {
			if !first {
				b = append(b, ',')
			}
			first = false
			b = append(b, `{"key":`...)
			b = append(b, k.Raw...)
			b = append(b, `,"value":`...)
			b = appendTagged(b, e)
			b = append(b, '}')
			return true
		})
		return append(b, "]}"...)
	}
	b = append(b, `{"@type":"`...)
	b = append(b, tag...)
	b = append(b, `","value":`...)
	b = append(b, v.Raw...)
	return append(b, '}')
}

func appendJSONString(b []byte, s string) []byte {
	return append(b, strconv.Quote(s)...) // descriptions are plain ASCII
}
