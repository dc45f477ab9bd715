package livegateway

import (
	"bufio"
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/filter"
)

// replay is GET /api/v1/replay?from=&to=&types=…: the original events of a time range,
// straight from the log, at full speed, with the live filters. It ends when the range is
// exhausted; without to, at the end of the log as it was when the request came. NDJSON by
// default (one event per line); SSE with Accept: text/event-stream or format=sse.
func (s *Service) replayRange(c *fiber.Ctx) error {
	q, err := queryValues(c)
	if err != nil {
		return deny(c, fiber.StatusBadRequest, "query: "+err.Error())
	}
	var problems []string
	from, to := time.Time{}, time.Time{}
	if v := q.Get("from"); v == "" {
		problems = append(problems, "from: required (RFC 3339)")
	} else if from, err = time.Parse(time.RFC3339Nano, v); err != nil {
		problems = append(problems, "from: want an RFC 3339 time")
	}
	if v := q.Get("to"); v != "" {
		if to, err = time.Parse(time.RFC3339Nano, v); err != nil {
			problems = append(problems, "to: want an RFC 3339 time")
		} else if !from.IsZero() && to.Before(from) {
			problems = append(problems, "from is after to: the range is reversed")
		}
	}
	sse := c.Query("format") == "sse" || strings.Contains(c.Get(fiber.HeaderAccept), "text/event-stream")
	if f := c.Query("format"); f != "" && f != "sse" && f != "ndjson" {
		problems = append(problems, "format: want ndjson or sse")
	}
	q.Del("from")
	q.Del("to")
	q.Del("format")
	f, err := filter.Parse(q)
	if err != nil {
		problems = append(problems, strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	if len(problems) > 0 {
		return deny(c, fiber.StatusBadRequest, strings.Join(problems, "; "))
	}
	// The end: the last sequence now, so the replay ends even while events keep coming.
	ctx, cancel := requestContext()
	st, err := s.js.Stream(ctx, bus.StreamEvents)
	var end uint64
	if err == nil {
		var info *jetstream.StreamInfo
		if info, err = st.Info(ctx); err == nil {
			end = info.State.LastSeq
		}
	}
	cancel()
	if err != nil {
		return deny(c, fiber.StatusServiceUnavailable, "the log is unavailable: "+err.Error())
	}
	key := keyOf(c)
	if err := s.acquire(key.ID); err != nil {
		c.Set(fiber.HeaderRetryAfter, "5")
		return deny(c, fiber.StatusTooManyRequests, err.Error())
	}
	s.metrics.replays.Inc()
	if sse {
		c.Set(fiber.HeaderContentType, "text/event-stream")
		c.Set("X-Accel-Buffering", "no")
	} else {
		c.Set(fiber.HeaderContentType, "application/x-ndjson")
	}
	c.Set(fiber.HeaderCacheControl, "no-store")
	subjects := f.Subjects()
	c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
		defer s.release(key.ID)
		reason := s.streamRange(w, f, subjects, from, to, end, sse)
		s.metrics.closed.WithLabelValues("replay-" + reason).Inc()
	})
	return nil
}

// lateArrival is how long after its own time an event may reach the log and still be
// replayed with its range.
const lateArrival = time.Hour

func (s *Service) streamRange(w *bufio.Writer, f *filter.Filter, subjects []string, from, to time.Time, end uint64, sse bool) string {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-s.closing:
			cancel()
		case <-stop:
		}
	}()
	fl := filter.NewFollower(f)
	if sse {
		_, _ = w.WriteString(": replay\n\n")
	}
	if end == 0 {
		return finish(w, sse, 0)
	}
	cons, err := s.js.OrderedConsumer(ctx, bus.StreamEvents, jetstream.OrderedConsumerConfig{
		FilterSubjects: subjects, DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &from,
	})
	if err != nil {
		return finish(w, sse, 0)
	}
	sent := 0
	for {
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return finish(w, sse, sent)
		}
		got := 0
		for msg := range batch.Messages() {
			got++
			meta, err := msg.Metadata()
			if err != nil {
				continue
			}
			seq := meta.Sequence.Stream
			// The log is ordered by arrival; events are selected by their own time. Past
			// lateArrival after to, no event of the range is expected any more.
			if seq > end || (!to.IsZero() && meta.Timestamp.After(to.Add(lateArrival))) {
				return finish(w, sse, sent)
			}
			typ := strings.TrimPrefix(msg.Subject(), bus.EventsPrefix)
			if !fl.Match(typ, msg.Data(), nil) || !inRange(msg.Data(), from, to) {
				if seq == end || meta.NumPending == 0 {
					return finish(w, sse, sent)
				}
				continue
			}
			if sse {
				_, _ = w.WriteString("id: " + strconv.FormatUint(seq, 10) + "\nevent: event\ndata: ")
				_, _ = w.Write(msg.Data())
				_, _ = w.WriteString("\n\n")
			} else {
				_, _ = w.Write(msg.Data())
				_ = w.WriteByte('\n')
			}
			sent++
			if seq == end || meta.NumPending == 0 {
				return finish(w, sse, sent)
			}
		}
		if err := w.Flush(); err != nil {
			return "gone"
		}
		if got == 0 || errors.Is(ctx.Err(), context.Canceled) {
			return finish(w, sse, sent)
		}
	}
}

// inRange checks the event time (createdAt), which may differ from the time the log stored
// the event: the consumer starts at the stored time, and events are kept by their own time.
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

func finish(w *bufio.Writer, sse bool, sent int) string {
	if sse {
		_, _ = w.WriteString("event: end\ndata: {\"events\":" + strconv.Itoa(sent) + "}\n\n")
	}
	if err := w.Flush(); err != nil {
		return "gone"
	}
	return "done"
}
