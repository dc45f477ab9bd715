package livegateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/tidwall/gjson"
	"golang.org/x/sync/errgroup"

	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/history"
	"github.com/mailpulse/mailpulse/shared/httpserver"
)

// Stalwart 0.15's history API (stalwart.md §7.3), answered from mailpulse's history:
// GET /api/telemetry/traces lists sessions, GET /api/telemetry/trace/{id} returns one's
// events, GET /api/telemetry/metrics the metrics by the hour.

// maxTraces bounds the sessions one GET /api/telemetry/traces lists. In Stalwart limit=0, or
// no limit, lists every session that matches; here it lists the first maxTraces of them, as
// does a larger limit. total still counts them all, so a client sees what it did not get.
const maxTraces = 10_000

// maxTraceIDs bounds the sessions one GET /api/telemetry/trace?id=a,b,… asks for.
const maxTraceIDs = 100

// fetchers bounds the sessions one request reads from the archivers at once.
const fetchers = 8

// traces is GET /api/telemetry/traces?type=&queue_id=&filter=&before=&after=&page=&limit=&values=,
// as Stalwart 0.15's handler (http/src/management/enterprise/telemetry.rs, "traces"): newest
// first; with no keyword, queue or time filter, the last 24 hours; page counts from 1 (0 is
// the first page too), limit=0 means every session (here at most maxTraces). Answers
// {"data":{"items":[span ids],"total":n}}, span ids as numbers as Stalwart's u64 are. With
// values (any value but an empty one, as in Stalwart: values=0 too) the items are instead
// each session's delivery attempt start or queueing event in 0.15's item shape, and a
// session without one has no item. Stalwart's list items have no text and details (its
// trace items do); these have both, which WebAdmin reads as optional.
func (s *Service) traces(c *fiber.Ctx) error {
	req, err := parseTraces(c, time.Now())
	if err != nil {
		return httpserver.Error(c, fiber.StatusBadRequest, err.Error())
	}
	spans, total, err := s.listSpans(req)
	if err != nil {
		return historyFailed(c, err)
	}
	if c.Query("values") == "" {
		items := make([]json.RawMessage, 0, len(spans))
		for _, sp := range spans {
			items = append(items, spanID(sp.ID))
		}
		return c.JSON(fiber.Map{"data": fiber.Map{"items": items, "total": total}})
	}
	evs, err := s.spansEvents(spanIDs(spans))
	if err != nil {
		return historyFailed(c, err)
	}
	items := make([]json.RawMessage, 0, len(spans))
	for _, ev := range evs {
		if rep := representative(ev); rep != nil {
			if item, ok := stalwart15Item(rep); ok {
				items = append(items, item)
			}
		}
	}
	return c.JSON(fiber.Map{"data": fiber.Map{"items": items, "total": total}})
}

// parseTraces reads the query of GET /api/telemetry/traces. Limit is the number of sessions
// wanted, from Offset, at most maxTraces; the archivers answer at most history.MaxLimit a
// request, so listSpans asks for them a page at a time.
func parseTraces(c *fiber.Ctx, now time.Time) (history.SpansRequest, error) {
	var problems []string
	// type= names a type as 0.15 does (queue.queue-message); the history has 0.16's names.
	req := history.SpansRequest{Kind: event.From015(c.Query("type")), QueueID: c.Query("queue_id")}
	var after, before time.Time
	var err error
	if v := c.Query("after"); v != "" {
		if after, err = time.Parse(time.RFC3339, v); err != nil {
			problems = append(problems, "after: want an RFC 3339 time")
		}
	}
	if v := c.Query("before"); v != "" {
		if before, err = time.Parse(time.RFC3339, v); err != nil {
			problems = append(problems, "before: want an RFC 3339 time")
		}
	}
	if v := c.Query("filter"); v != "" {
		if req.Terms, err = history.ParseTerms(v); err != nil {
			problems = append(problems, err.Error())
		}
	}
	page, limit := 0, 0 // Stalwart's defaults: the first page, every session
	if v := c.Query("page"); v != "" {
		if page, err = strconv.Atoi(v); err != nil || page < 0 || page > 100_000 {
			problems = append(problems, "page: want a number from 0 to 100000 (0 and 1 are the first page)")
		}
	}
	if v := c.Query("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 0 {
			problems = append(problems, fmt.Sprintf("limit: want a number from 0 (every session, at most %d)", maxTraces))
		}
	}
	if len(problems) > 0 {
		return req, errors.New(strings.Join(problems, "; "))
	}
	if limit > 0 {
		// A page size past any history's size is as good as one of 2^30, whose offsets
		// cannot overflow.
		req.Offset = (max(page, 1) - 1) * min(limit, 1<<30)
	}
	req.Limit = maxTraces
	if limit > 0 && limit < maxTraces {
		req.Limit = limit
	}
	switch {
	case !after.IsZero() || !before.IsZero():
		req.From, req.To = after, before
		if req.To.IsZero() {
			req.To = now
		}
	case len(req.Terms) == 0 && req.QueueID == "":
		req.From, req.To = now.Add(-24*time.Hour), now
	default:
		req.From, req.To = time.Unix(0, 0), now
	}
	return req, nil
}

// archiverError is an error an archiver answered with.
type archiverError string

func (e archiverError) Error() string { return "history: " + string(e) }

// historyFailed answers a failed history request: an archiver's error, or none answering.
func historyFailed(c *fiber.Ctx, err error) error {
	if ae, ok := errors.AsType[archiverError](err); ok {
		return httpserver.Error(c, fiber.StatusServiceUnavailable, ae.Error())
	}
	return historyUnavailable(c, err)
}

// listSpans lists the sessions of req, req.Limit of them from req.Offset, asking the
// archivers a page of at most history.MaxLimit at a time; total counts every session that
// matches.
func (s *Service) listSpans(req history.SpansRequest) (spans []history.Span, total int, err error) {
	want := req.Limit
	for {
		page := req
		page.Limit = min(history.MaxLimit, want-len(spans))
		var reply history.SpansReply
		if err := s.ask(history.SubjectSpans, page, &reply); err != nil {
			return nil, 0, err
		}
		if reply.Error != "" {
			return nil, 0, archiverError(reply.Error)
		}
		if total == 0 {
			total = reply.Total
		}
		spans = append(spans, reply.Spans...)
		req.Offset += len(reply.Spans)
		if len(reply.Spans) < page.Limit || len(spans) >= want || req.Offset >= reply.Total {
			return spans, total, nil
		}
	}
}

// spanID is a session id in JSON: a number when it is one, as Stalwart's are; a string
// otherwise (the native API takes any span id).
func spanID(id string) json.RawMessage {
	if isDecimal(id) {
		return json.RawMessage(id)
	}
	return appendJSONString(nil, id)
}

func spanIDs(spans []history.Span) []string {
	ids := make([]string, len(spans))
	for i, sp := range spans {
		ids[i] = sp.ID
	}
	return ids
}

// trace is GET /api/telemetry/trace/{id} or /api/telemetry/trace?id=a,b,c: the events of
// sessions in 0.15's item shape, as Stalwart's "trace" handler answers: one session named in
// the path gives {"data":[events]}, a list of them {"data":[[events of a],[events of b]]}. A
// session the history does not hold, or an id that cannot be one, has no events.
func (s *Service) trace(c *fiber.Ctx) error {
	inPath := c.Params("id")
	list := inPath
	if list == "" {
		list = c.Query("id")
	}
	ids := strings.Split(list, ",")
	if len(ids) > maxTraceIDs {
		return httpserver.Error(c, fiber.StatusBadRequest, fmt.Sprintf("id: at most %d sessions", maxTraceIDs))
	}
	evs, err := s.spansEvents(ids)
	if err != nil {
		return historyFailed(c, err)
	}
	lists := make([][]json.RawMessage, len(ids))
	for i := range evs {
		lists[i] = []json.RawMessage{}
		for j := range evs[i] {
			if item, ok := stalwart15Item(&evs[i][j]); ok {
				lists[i] = append(lists[i], item)
			}
		}
	}
	if len(lists) == 1 && inPath != "" {
		return c.JSON(fiber.Map{"data": lists[0]})
	}
	return c.JSON(fiber.Map{"data": lists})
}

// spansEvents returns the events of sessions, in the order of ids, reading a few at a time;
// an id that cannot be a session's has none.
func (s *Service) spansEvents(ids []string) ([][]history.Stored, error) {
	out := make([][]history.Stored, len(ids))
	var g errgroup.Group
	g.SetLimit(fetchers)
	for i, id := range ids {
		if id = strings.TrimSpace(id); id == "" || len(id) > 128 {
			continue
		}
		g.Go(func() error {
			evs, err := s.spanEvents(id)
			out[i] = evs
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return out, nil
}

// spanEvents returns a session's events: none when the history does not hold it, an error
// when the archiver failed.
func (s *Service) spanEvents(id string) ([]history.Stored, error) {
	reply, err := s.askSpan(id)
	switch {
	case err != nil:
		return nil, err
	case reply.Code == fiber.StatusNotFound:
		return nil, nil
	case reply.Error != "":
		return nil, errors.New(reply.Error)
	}
	return reply.Events, nil
}

// representative picks the event Stalwart shows for a session in a list: its delivery
// attempt start or its message queueing (0.15's queue.queue-message and
// queue.queue-message-authenticated, which 0.16 names queue.message-queued and
// queue.authenticated-message-queued); none when it has neither.
func representative(evs []history.Stored) *history.Stored {
	for i := range evs {
		switch gjson.GetBytes(evs[i].Raw(), "type").Str {
		case "delivery.attempt-start", "queue.message-queued", "queue.authenticated-message-queued",
			"queue.queue-message", "queue.queue-message-authenticated":
			return &evs[i]
		}
	}
	return nil
}

// stalwart15Item is a stored event in 0.15's item shape; ok is false for one it cannot show.
func stalwart15Item(e *history.Stored) (json.RawMessage, bool) {
	return appendStalwart15(nil, frame{seq: e.Seq, data: e.Raw()}, nil)
}
