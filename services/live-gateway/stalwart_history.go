package livegateway

import (
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/tidwall/gjson"

	"github.com/mailpulse/mailpulse/shared/history"
)

// Stalwart 0.15's history API (stalwart.md §7.3), answered from mailpulse's history:
// GET /api/telemetry/traces lists sessions, GET /api/telemetry/trace/{id} returns one's events.

// traces is GET /api/telemetry/traces?type=&queue_id=&filter=&before=&after=&page=&limit=&values=.
// Newest first; with no keyword, queue or time filter, the last 24 hours, as Stalwart does.
// Answers {"data":{"items":[span ids],"total":n}}, or with values=1 each session's
// representative event in 0.15's item shape.
func (s *Service) traces(c *fiber.Ctx) error {
	var problems []string
	req := history.SpansRequest{Kind: c.Query("type"), QueueID: c.Query("queue_id"), Limit: 100}
	now := time.Now()
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
		return deny(c, fiber.StatusBadRequest, strings.Join(problems, "; "))
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
	body, _ := json.Marshal(req)
	m, err := s.nc.Request(history.SubjectSpans, body, historyTimeout)
	if err != nil {
		return historyUnavailable(c, err)
	}
	var reply history.SpansReply
	if err := json.Unmarshal(m.Data, &reply); err != nil || reply.Error != "" {
		return deny(c, fiber.StatusServiceUnavailable, "history: "+reply.Error)
	}
	if c.Query("values") == "" || c.Query("values") == "0" || c.Query("values") == "false" {
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

// trace is GET /api/telemetry/trace/{id} (or ?id=a,b,c): the events of sessions in 0.15's
// item shape.
func (s *Service) trace(c *fiber.Ctx) error {
	ids := []string{c.Params("id")}
	if ids[0] == "" {
		ids = strings.Split(c.Query("id"), ",")
	}
	if len(ids) > 100 {
		return deny(c, fiber.StatusBadRequest, "id: at most 100 sessions")
	}
	out := []json.RawMessage{}
	for _, id := range ids {
		if id = strings.TrimSpace(id); id == "" || len(id) > 128 {
			return deny(c, fiber.StatusBadRequest, "id: 1 to 128 characters")
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

func (s *Service) spanEvents(id string) ([]history.Stored, error) {
	m, err := s.nc.Request(history.SubjectSpan, []byte(id), historyTimeout)
	if err != nil {
		return nil, err
	}
	var reply history.SpanReply
	if err := json.Unmarshal(m.Data, &reply); err != nil {
		return nil, err
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
	return appendStalwart15(nil, frame{seq: e.Seq, typ: typ, data: e.Raw()})
}
