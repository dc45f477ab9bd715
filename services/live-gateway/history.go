package livegateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/nats-io/nats.go"

	"github.com/mailpulse/mailpulse/shared/history"
	"github.com/mailpulse/mailpulse/shared/httpserver"
	"github.com/mailpulse/mailpulse/shared/metric"
)

// The native history API, answered by an archiver over NATS request-reply: GET
// /api/v1/events (search), /api/v1/spans/:id (a session) and /api/v1/metrics/history.

// historyTimeout bounds a history request to the archivers.
const historyTimeout = 10 * time.Second

// events is GET /api/v1/events: a history search answered by an archiver.
func (s *Service) events(c *fiber.Ctx) error {
	q, err := queryValues(c)
	if err != nil {
		return httpserver.Error(c, fiber.StatusBadRequest, "query: "+err.Error())
	}
	hq, err := history.ParseQuery(q, time.Now())
	if err != nil {
		return httpserver.Error(c, fiber.StatusBadRequest, strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	var reply history.QueryReply
	if err := s.ask(history.SubjectQuery, hq, &reply); err != nil {
		return historyUnavailable(c, err)
	}
	if reply.Error != "" {
		return httpserver.Error(c, errorStatus(reply.Code), reply.Error)
	}
	return c.JSON(reply.Page)
}

// span is GET /api/v1/spans/:id: a session with all its events.
func (s *Service) span(c *fiber.Ctx) error {
	id := c.Params("id")
	if id == "" || len(id) > 128 {
		return httpserver.Error(c, fiber.StatusBadRequest, "span id: 1 to 128 characters")
	}
	reply, err := s.askSpan(id)
	if err != nil {
		return historyUnavailable(c, err)
	}
	switch {
	case reply.Code == fiber.StatusNotFound:
		return httpserver.Error(c, fiber.StatusNotFound, "no span "+id+" in the history")
	case reply.Error != "":
		return httpserver.Error(c, errorStatus(reply.Code), reply.Error)
	}
	return c.JSON(fiber.Map{"span": reply.Span, "events": reply.Events})
}

// metricsHistory is GET /api/v1/metrics/history?metrics=a,b*&start=&end=&step=&source=&origin=: metric
// series from the archived snapshots. Defaults: the last hour, a step of a minute (at most
// 10,000 steps), every metric, summed over sources.
func (s *Service) metricsHistory(c *fiber.Ctx) error {
	req, err := metricsRequest(c, time.Hour, time.Minute)
	if err != nil {
		return httpserver.Error(c, fiber.StatusBadRequest, err.Error())
	}
	// origin= overrides gateway.metrics_origin: a source is shown from one origin, never
	// from the sum of its events and its scraped metrics.
	req.Origin = string(s.cfg.MetricsOrigin)
	if v := c.Query("origin"); v != "" {
		p, err := metric.ParseOriginPolicy(v)
		if err != nil {
			return httpserver.Error(c, fiber.StatusBadRequest, err.Error())
		}
		req.Origin = string(p)
	}
	var reply history.MetricsReply
	if err := s.ask(history.SubjectMetrics, req, &reply); err != nil {
		return historyUnavailable(c, err)
	}
	if reply.Error != "" {
		return httpserver.Error(c, fiber.StatusServiceUnavailable, reply.Error)
	}
	return c.JSON(fiber.Map{"start": req.From, "end": req.To, "step": req.Step.String(), "series": reply.Series})
}

func metricsRequest(c *fiber.Ctx, span, step time.Duration) (history.MetricsRequest, error) {
	now := time.Now()
	req := history.MetricsRequest{Source: c.Query("source"), Step: step}
	var problems []string
	var errs []error
	req.From, req.To, errs = history.ParseRange("start", c.Query("start"), "end", c.Query("end"), span, now)
	for _, err := range errs {
		problems = append(problems, err.Error())
	}
	if v := c.Query("step"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Second {
			problems = append(problems, "step: want a duration of at least 1s (30s, 5m, 1h)")
		} else {
			req.Step = d
		}
	}
	if req.Step > 0 && req.To.Sub(req.From)/req.Step > 10_000 {
		problems = append(problems, "step: more than 10000 steps in the range; choose a longer step")
	}
	for _, m := range strings.Split(c.Query("metrics"), ",") {
		if m = strings.TrimSpace(m); m == "" {
			continue
		}
		if len(m) > 96 || strings.Count(m, "*") > 1 {
			problems = append(problems, "metrics: pattern "+m+": want a metric id with at most one *")
			continue
		}
		req.Metrics = append(req.Metrics, m)
	}
	if len(req.Metrics) > 100 {
		problems = append(problems, "metrics: at most 100 patterns")
	}
	if len(problems) > 0 {
		return req, errors.New(strings.Join(problems, "; "))
	}
	return req, nil
}

// errArchiverReply: an archiver's answer could not be read.
var errArchiverReply = errors.New("undecodable archiver reply")

// ask sends a history request to the archivers and decodes the answer into reply.
func (s *Service) ask(subject string, req any, reply any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	return s.request(subject, body, reply)
}

// askSpan asks for a session's summary and events.
func (s *Service) askSpan(id string) (history.SpanReply, error) {
	var reply history.SpanReply
	err := s.request(history.SubjectSpan, []byte(id), &reply)
	return reply, err
}

func (s *Service) request(subject string, body []byte, reply any) error {
	m, err := s.nc.Request(subject, body, historyTimeout)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(m.Data, reply); err != nil {
		return fmt.Errorf("%w: %w", errArchiverReply, err)
	}
	return nil
}

// errorStatus is the HTTP status of an archiver's error: the code it gave, or 503.
func errorStatus(code int) int {
	if code < 400 || code > 599 {
		return fiber.StatusServiceUnavailable
	}
	return code
}

func historyUnavailable(c *fiber.Ctx, err error) error {
	switch {
	case errors.Is(err, errArchiverReply):
		return httpserver.Error(c, fiber.StatusBadGateway, err.Error())
	case errors.Is(err, nats.ErrNoResponders):
		c.Set(fiber.HeaderRetryAfter, "5")
		return httpserver.Error(c, fiber.StatusServiceUnavailable, "no archiver is running: the history is unavailable")
	}
	c.Set(fiber.HeaderRetryAfter, "5")
	return httpserver.Error(c, fiber.StatusServiceUnavailable, "history: "+err.Error())
}
