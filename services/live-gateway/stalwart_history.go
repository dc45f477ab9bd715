package livegateway

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/tidwall/gjson"

	"github.com/mailpulse/mailpulse/shared/history"
	"github.com/mailpulse/mailpulse/shared/httpserver"
)

// Stalwart 0.15's history API (stalwart.md §7.3), answered from mailpulse's history:
// GET /api/telemetry/traces lists sessions, GET /api/telemetry/trace/{id} returns one's
// events, GET /api/telemetry/metrics the metrics by the hour.

// traces is GET /api/telemetry/traces?type=&queue_id=&filter=&before=&after=&page=&limit=&values=.
// Newest first; with no keyword, queue or time filter, the last 24 hours, as Stalwart does.
// Answers {"data":{"items":[span ids],"total":n}}, or with values=1 each session's
// representative event in 0.15's item shape.
func (s *Service) traces(c *fiber.Ctx) error {
	req, err := parseTraces(c, time.Now())
	if err != nil {
		return httpserver.Error(c, fiber.StatusBadRequest, err.Error())
	}
	var reply history.SpansReply
	if err := s.ask(history.SubjectSpans, req, &reply); err != nil {
		return historyUnavailable(c, err)
	}
	if reply.Error != "" {
		return httpserver.Error(c, fiber.StatusServiceUnavailable, "history: "+reply.Error)
	}
	if v := c.Query("values"); v == "" || v == "0" || v == "false" {
		ids := make([]string, 0, len(reply.Spans))
		for _, sp := range reply.Spans {
			ids = append(ids, sp.ID)
		}
		return c.JSON(fiber.Map{"data": fiber.Map{"items": ids, "total": reply.Total}})
	}
	items := make([]json.RawMessage, 0, len(reply.Spans))
	for _, sp := range reply.Spans {
		evs, err := s.spanEvents(sp.ID)
		if err != nil {
			return historyUnavailable(c, err)
		}
		if rep := representative(evs); rep != nil {
			items = append(items, stalwart15Item(rep))
		}
	}
	return c.JSON(fiber.Map{"data": fiber.Map{"items": items, "total": reply.Total}})
}

func parseTraces(c *fiber.Ctx, now time.Time) (history.SpansRequest, error) {
	var problems []string
	req := history.SpansRequest{Kind: c.Query("type"), QueueID: c.Query("queue_id"), Limit: 100}
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
	page := 1
	if v := c.Query("page"); v != "" {
		if page, err = strconv.Atoi(v); err != nil || page < 1 || page > 100_000 {
			problems = append(problems, "page: want a number from 1")
		}
	}
	if v := c.Query("limit"); v != "" {
		if req.Limit, err = strconv.Atoi(v); err != nil || req.Limit < 1 || req.Limit > history.MaxLimit {
			problems = append(problems, "limit: want 1 to 1000")
		}
	}
	if len(problems) > 0 {
		return req, errors.New(strings.Join(problems, "; "))
	}
	req.Offset = (page - 1) * req.Limit
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

// trace is GET /api/telemetry/trace/{id} (or ?id=a,b,c): the events of sessions in 0.15's
// item shape. A session the history does not hold has no events.
func (s *Service) trace(c *fiber.Ctx) error {
	ids := []string{c.Params("id")}
	if ids[0] == "" {
		ids = strings.Split(c.Query("id"), ",")
	}
	if len(ids) > 100 {
		return httpserver.Error(c, fiber.StatusBadRequest, "id: at most 100 sessions")
	}
	out := []json.RawMessage{}
	for _, id := range ids {
		if id = strings.TrimSpace(id); id == "" || len(id) > 128 {
			return httpserver.Error(c, fiber.StatusBadRequest, "id: 1 to 128 characters")
		}
		evs, err := s.spanEvents(id)
		if err != nil {
			return historyUnavailable(c, err)
		}
		for _, e := range evs {
			out = append(out, stalwart15Item(&e))
		}
	}
	return c.JSON(fiber.Map{"data": out})
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

// representative picks the event Stalwart shows for a session: its delivery attempt start
// or its queueing, else its first event.
func representative(evs []history.Stored) *history.Stored {
	for i := range evs {
		t := gjson.GetBytes(evs[i].Raw(), "type").Str
		if t == "delivery.attempt-start" || (strings.HasPrefix(t, "queue.") && strings.HasSuffix(t, "-queued")) {
			return &evs[i]
		}
	}
	if len(evs) > 0 {
		return &evs[0]
	}
	return nil
}

func stalwart15Item(e *history.Stored) json.RawMessage {
	typ := gjson.GetBytes(e.Raw(), "type").Str
	return appendStalwart15(nil, frame{seq: e.Seq, typ: typ, data: e.Raw()}, nil)
}
