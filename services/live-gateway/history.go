package livegateway

import (
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/nats-io/nats.go"

	"github.com/mailpulse/mailpulse/shared/history"
)

// historyTimeout bounds a history request to the archivers.
const historyTimeout = 10 * time.Second

// events is GET /api/v1/events: a history search answered by an archiver.
func (s *Service) events(c *fiber.Ctx) error {
	q, err := queryValues(c)
	if err != nil {
		return deny(c, fiber.StatusBadRequest, "query: "+err.Error())
	}
	hq, err := history.ParseQuery(q, time.Now())
	if err != nil {
		return deny(c, fiber.StatusBadRequest, strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	body, _ := json.Marshal(hq)
	m, err := s.nc.Request(history.SubjectQuery, body, historyTimeout)
	if err != nil {
		return historyUnavailable(c, err)
	}
	var reply history.QueryReply
	if err := json.Unmarshal(m.Data, &reply); err != nil {
		return deny(c, fiber.StatusBadGateway, "archiver reply: "+err.Error())
	}
	if reply.Error != "" {
		code := reply.Code
		if code == 0 {
			code = fiber.StatusServiceUnavailable
		}
		return deny(c, code, reply.Error)
	}
	return c.JSON(reply.Page)
}

// span is GET /api/v1/spans/:id: a session with all its events.
func (s *Service) span(c *fiber.Ctx) error {
	id := c.Params("id")
	if id == "" || len(id) > 128 {
		return deny(c, fiber.StatusBadRequest, "span id: 1 to 128 characters")
	}
	m, err := s.nc.Request(history.SubjectSpan, []byte(id), historyTimeout)
	if err != nil {
		return historyUnavailable(c, err)
	}
	var reply history.SpanReply
	if err := json.Unmarshal(m.Data, &reply); err != nil {
		return deny(c, fiber.StatusBadGateway, "archiver reply: "+err.Error())
	}
	switch {
	case reply.Error == "not found":
		return deny(c, fiber.StatusNotFound, "no span "+id+" in the history")
	case reply.Error != "":
		return deny(c, fiber.StatusServiceUnavailable, reply.Error)
	}
	return c.JSON(fiber.Map{"span": reply.Span, "events": reply.Events})
}

func historyUnavailable(c *fiber.Ctx, err error) error {
	c.Set(fiber.HeaderRetryAfter, "5")
	if errors.Is(err, nats.ErrNoResponders) {
		return deny(c, fiber.StatusServiceUnavailable, "no archiver is running: the history is unavailable")
	}
	return deny(c, fiber.StatusServiceUnavailable, "history: "+err.Error())
}
