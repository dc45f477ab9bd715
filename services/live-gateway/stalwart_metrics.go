package livegateway

import (
	"errors"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/mailpulse/mailpulse/shared/history"
	"github.com/mailpulse/mailpulse/shared/httpserver"
)

// stalwartMetrics is Stalwart 0.15's GET /api/telemetry/metrics?after=&before=: one item per
// metric and hour, counters as the delta of the hour, as Stalwart's metric history keeps them.
func (s *Service) stalwartMetrics(c *fiber.Ctx) error {
	req, err := parseStalwartMetrics(c, time.Now())
	if err != nil {
		return httpserver.Error(c, fiber.StatusBadRequest, err.Error())
	}
	var reply history.MetricsReply
	if err := s.ask(history.SubjectMetrics, req, &reply); err != nil {
		return historyUnavailable(c, err)
	}
	if reply.Error != "" {
		return httpserver.Error(c, fiber.StatusServiceUnavailable, "history: "+reply.Error)
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

func parseStalwartMetrics(c *fiber.Ctx, now time.Time) (history.MetricsRequest, error) {
	req := history.MetricsRequest{Step: time.Hour}
	var problems []string
	var errs []error
	req.From, req.To, errs = history.ParseRange("after", c.Query("after"), "before", c.Query("before"), 24*time.Hour, now)
	for _, err := range errs {
		problems = append(problems, err.Error())
	}
	if len(problems) > 0 {
		return req, errors.New(strings.Join(problems, "; "))
	}
	return req, nil
}
