package livegateway

import (
	"errors"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/mailpulse/mailpulse/shared/history"
	"github.com/mailpulse/mailpulse/shared/httpserver"
	"github.com/mailpulse/mailpulse/shared/metric"
)

// stalwartMetrics is Stalwart 0.15's GET /api/telemetry/metrics?after=&before=, meaning
// what its metric history means (crates/common/src/telemetry/metrics/store.rs): one sample
// per metric and hour, only the metrics Stalwart keeps, under 0.15's ids; counters and
// histograms as their increase since the previous sample (the first sample of a process is
// its count since it started, as Stalwart's first sample after a restart), left out when
// nothing changed; gauges as their value, left out when 0. Each source counts once, from the
// origin gateway.metrics_origin chooses. Samples are stamped at the end of their hour, or
// now for the current one: never in the future.
func (s *Service) stalwartMetrics(c *fiber.Ctx) error {
	now := time.Now().UTC()
	req, err := parseStalwartMetrics(c, now)
	if err != nil {
		return httpserver.Error(c, fiber.StatusBadRequest, err.Error())
	}
	req.Origin = string(s.cfg.MetricsOrigin)
	var reply history.MetricsReply
	if err := s.ask(history.SubjectMetrics, req, &reply); err != nil {
		return historyUnavailable(c, err)
	}
	if reply.Error != "" {
		return httpserver.Error(c, fiber.StatusServiceUnavailable, "history: "+reply.Error)
	}
	return c.JSON(fiber.Map{"data": stalwartMetricItems(reply.Series)})
}

// stalwartMetricItem is one sample of 0.15's MetricsList; Stalwart's numbers are integers.
type stalwartMetricItem struct {
	Type      string `json:"type"`
	ID        string `json:"id"`
	Timestamp string `json:"timestamp"`
	Value     *int64 `json:"value,omitempty"`
	Count     *int64 `json:"count,omitempty"`
	Sum       *int64 `json:"sum,omitempty"`
}

func stalwartMetricItems(series []history.Series) []stalwartMetricItem {
	kept := make(map[string]metric.StalwartHistoryMetric, len(metric.StalwartHistory015))
	for _, m := range metric.StalwartHistory015 {
		kept[m.ID] = m
	}
	num := func(f float64) *int64 { n := int64(math.Round(f)); return &n }
	items := []stalwartMetricItem{}
	for _, sr := range series {
		m, ok := kept[sr.Metric]
		if !ok || m.Kind != sr.Kind {
			continue
		}
		for _, p := range sr.Points {
			it := stalwartMetricItem{Type: m.Kind, ID: m.ID15, Timestamp: p.Time.UTC().Format(time.RFC3339)}
			switch m.Kind {
			case "counter":
				if p.Delta <= 0 {
					continue
				}
				it.Value = num(p.Delta)
			case "gauge":
				if p.Value <= 0 {
					continue
				}
				it.Value = num(p.Value)
			case "histogram":
				if p.CountDelta == 0 && p.SumDelta <= 0 {
					continue
				}
				it.Count, it.Sum = num(float64(p.CountDelta)), num(p.SumDelta)
			}
			items = append(items, it)
		}
	}
	sort.SliceStable(items, func(i, j int) bool { return items[i].Timestamp < items[j].Timestamp })
	return items
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
	if req.To.After(now) {
		req.To = now
	}
	if req.From.After(req.To) {
		req.From = req.To
	}
	return req, nil
}
