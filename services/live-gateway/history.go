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

// metricsHistory is GET /api/v1/metrics/history?metrics=a,b*&from=&to=&step=&source=: metric
// series from the archived snapshots. Defaults: the last hour, a step of a minute (at most
// 10,000 steps), every metric, summed over sources.
func (s *Service) metricsHistory(c *fiber.Ctx) error {
	req, err := metricsRequest(c, time.Hour, time.Minute)
	if err != nil {
		return deny(c, fiber.StatusBadRequest, err.Error())
	}
	reply, err := s.askMetrics(req)
	if err != nil {
		return historyUnavailable(c, err)
	}
	if reply.Error != "" {
		return deny(c, fiber.StatusServiceUnavailable, reply.Error)
	}
	return c.JSON(fiber.Map{"from": req.From, "to": req.To, "step": req.Step.String(), "series": reply.Series})
}

// stalwartMetrics is Stalwart 0.15's GET /api/telemetry/metrics?after=&before=: one item per
// metric and hour, counters as the delta of the hour, as Stalwart's metric history keeps them.
func (s *Service) stalwartMetrics(c *fiber.Ctx) error {
	now := time.Now()
	req := history.MetricsRequest{From: now.Add(-24 * time.Hour), To: now, Step: time.Hour}
	var problems []string
	if v := c.Query("after"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			problems = append(problems, "after: want an RFC 3339 time")
		}
		req.From = t
	}
	if v := c.Query("before"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			problems = append(problems, "before: want an RFC 3339 time")
		}
		req.To = t
	}
	if req.To.Before(req.From) {
		problems = append(problems, "after is later than before")
	}
	if len(problems) > 0 {
		return deny(c, fiber.StatusBadRequest, strings.Join(problems, "; "))
	}
	reply, err := s.askMetrics(req)
	if err != nil {
		return historyUnavailable(c, err)
	}
	items := []fiber.Map{}
	for _, sr := range reply.Series {
		for _, p := range sr.Points {
			ts := p.Time.UTC().Format(time.RFC3339)
			switch sr.Kind {
			case "counter":
				items = append(items, fiber.Map{"type": "counter", "id": sr.Metric, "timestamp": ts, "value": p.Delta})
			case "gauge":
				items = append(items, fiber.Map{"type": "gauge", "id": sr.Metric, "timestamp": ts, "value": p.Value})
			case "histogram":
				items = append(items, fiber.Map{"type": "histogram", "id": sr.Metric, "timestamp": ts, "count": p.Count, "sum": p.Sum})
			}
		}
	}
	return c.JSON(fiber.Map{"data": items})
}

func metricsRequest(c *fiber.Ctx, span, step time.Duration) (history.MetricsRequest, error) {
	now := time.Now()
	req := history.MetricsRequest{To: now, Source: c.Query("source"), Step: step}
	var problems []string
	if v := c.Query("to"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			problems = append(problems, "to: want an RFC 3339 time")
		}
		req.To = t
	}
	req.From = req.To.Add(-span)
	if v := c.Query("from"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			problems = append(problems, "from: want an RFC 3339 time")
		}
		req.From = t
	}
	if req.To.Before(req.From) {
		problems = append(problems, "from is after to: the range is reversed")
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

func (s *Service) askMetrics(req history.MetricsRequest) (history.MetricsReply, error) {
	body, _ := json.Marshal(req)
	m, err := s.nc.Request(history.SubjectMetrics, body, historyTimeout)
	if err != nil {
		return history.MetricsReply{}, err
	}
	var reply history.MetricsReply
	if err := json.Unmarshal(m.Data, &reply); err != nil {
		return history.MetricsReply{}, err
	}
	return reply, nil
}
