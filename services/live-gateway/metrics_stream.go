package livegateway

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/httpserver"
	"github.com/mailpulse/mailpulse/shared/metric"
)

// metricsStream is GET /api/telemetry/metrics/live (0.15) and /api/live/metrics (0.16):
// every interval, the selected metrics of the latest snapshots, counters also as rates.
func (s *Service) metricsStream(fm format) fiber.Handler {
	return func(c *fiber.Ctx) error {
		req, err := parseMetricsStream(c, fm)
		if err != nil {
			return httpserver.Error(c, fiber.StatusBadRequest, err.Error())
		}
		key := httpserver.KeyOf(c)
		if err := s.acquire(key.ID); err != nil {
			return tooManyStreams(c, err)
		}
		revoked := s.keys.Revoked(key.ID)
		s.metrics.streamsBy.WithLabelValues("metrics-" + fm.String()).Inc()
		setSSEHeaders(c)
		gone := watchClose(c)
		c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
			defer s.release(key.ID)
			s.metrics.closed.WithLabelValues(s.serveMetrics(w, fm, req, revoked, gone)).Inc()
		})
		return nil
	}
}

// metricsStreamRequest is a parsed metrics stream request: metrics=a,b* (none: all),
// interval= (seconds) and source= (none: summed over the sources).
type metricsStreamRequest struct {
	patterns []string
	interval time.Duration
	source   string
}

// The request outlives its handler (the stream is written after it returns), and Fiber's
// strings point into a buffer fasthttp reuses for the next request: what is kept is copied.
func parseMetricsStream(c *fiber.Ctx, fm format) (metricsStreamRequest, error) {
	req := metricsStreamRequest{interval: 30 * time.Second, source: strings.Clone(c.Query("source"))}
	for _, p := range strings.Split(strings.Clone(c.Query("metrics")), ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		if len(p) > 96 || strings.Count(p, "*") > 1 || strings.ContainsAny(p, " \t") {
			return req, fmt.Errorf("metrics: pattern %q: want a metric id with at most one *", p)
		}
		if fm == formatStalwart15 { // 0.15's names for the counters 0.16 renamed
			p = event.From015(p)
		}
		req.patterns = append(req.patterns, p)
	}
	if len(req.patterns) > 100 {
		return req, errors.New("metrics: at most 100 patterns")
	}
	if iv := c.Query("interval"); iv != "" {
		n, err := strconv.Atoi(iv)
		if err != nil || n < 1 || n > 3600 {
			return req, errors.New("interval: want whole seconds from 1 to 3600")
		}
		req.interval = time.Duration(n) * time.Second
	}
	return req, nil
}

func (s *Service) serveMetrics(w *bufio.Writer, fm format, req metricsStreamRequest, revoked, gone <-chan struct{}) string {
	sw := &sseWriter{w: w}
	sw.comment("connected")
	sw.raw("retry: 2000\n\n")
	write := func() bool {
		sw.namedJSON("metrics", s.metricItems(fm, req.patterns, req.source))
		return sw.err == nil && w.Flush() == nil
	}
	if !write() {
		return "gone"
	}
	t := time.NewTicker(req.interval)
	defer t.Stop()
	hb := time.NewTicker(s.cfg.Heartbeat)
	defer hb.Stop()
	for {
		select {
		case <-t.C:
			if !write() {
				return "gone"
			}
		case <-hb.C:
			sw.comment("ping")
			if sw.err != nil || w.Flush() != nil {
				return "gone"
			}
		case <-s.closing:
			sw.named("shutdown", shutdownData{Reason: "the gateway is stopping"})
			_ = w.Flush()
			return "shutdown"
		case <-revoked:
			sw.named("error", errorData{Error: errRevoked.Error()})
			_ = w.Flush()
			return "revoked"
		case <-gone:
			return "gone"
		}
	}
}

func matchMetric(patterns []string, name string) bool {
	if len(patterns) == 0 {
		return true
	}
	for _, p := range patterns {
		if pre, suf, ok := strings.Cut(p, "*"); ok {
			if strings.HasPrefix(name, pre) && strings.HasSuffix(name, suf) && len(name) >= len(pre)+len(suf) {
				return true
			}
		} else if p == name {
			return true
		}
	}
	return false
}

// metricItems is one frame's JSON array, summed over sources unless source is given. Each
// source counts once, from the origin the policy chooses for it (gateway.metrics_origin):
// a server both scraped and sending its events would otherwise count every event twice.
func (s *Service) metricItems(fm format, patterns []string, source string) []byte {
	counters, rates, gauges := map[string]float64{}, map[string]float64{}, map[string]float64{}
	hists := map[string]metric.Histogram{}
	views := s.snaps.views()
	pairs := make(map[[2]string]bool, len(views))
	for _, v := range views {
		pairs[[2]string{v.source, v.origin}] = true
	}
	chosen := s.cfg.MetricsOrigin.Chosen(pairs)
	for _, v := range views {
		if (source != "" && v.source != source) || chosen[v.source] != v.origin {
			continue
		}
		for k, x := range v.counters {
			counters[k] += x
			rates[k] += v.rates[k]
		}
		for k, x := range v.gauges {
			gauges[k] += x
		}
		for k, h := range v.hists {
			cur := hists[k]
			cur.Count += h.Count
			cur.Sum += h.Sum
			hists[k] = cur
		}
	}
	var items []map[string]any
	for _, k := range sortedKeys(counters) {
		if !matchMetric(patterns, k) {
			continue
		}
		rate := math.Round(rates[k]*1000) / 1000
		if fm == formatStalwart15 {
			items = append(items, map[string]any{"id": event.To015(k), "type": "counter", "value": counters[k], "rate": rate})
		} else {
			items = append(items, map[string]any{"metric": k, "@type": "Counter", "count": counters[k], "rate": rate})
		}
	}
	for _, k := range sortedKeys(gauges) {
		if !matchMetric(patterns, k) {
			continue
		}
		if fm == formatStalwart15 {
			items = append(items, map[string]any{"id": k, "type": "gauge", "value": gauges[k]})
		} else {
			items = append(items, map[string]any{"metric": k, "@type": "Gauge", "count": gauges[k]})
		}
	}
	for _, k := range sortedKeys(hists) {
		if !matchMetric(patterns, k) {
			continue
		}
		h := hists[k]
		if fm == formatStalwart15 {
			items = append(items, map[string]any{"id": k, "type": "histogram", "count": h.Count, "sum": h.Sum})
		} else {
			items = append(items, map[string]any{"metric": k, "@type": "Histogram", "count": h.Count, "sum": h.Sum})
		}
	}
	if items == nil {
		return []byte("[]")
	}
	b, _ := json.Marshal(items)
	return b
}
