package livegateway

import (
	"sort"
	"strings"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/adaptor"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/httpserver"
	"github.com/mailpulse/mailpulse/shared/metric"
)

// GET /metrics/prometheus: the mail servers' metrics, from the latest snapshots.

// Prometheus naming schemes (gateway.prometheus_names, or names= on the request).
const (
	// namesMailpulse: correct Prometheus names, which promtool check metrics accepts:
	// counters with _total, no gauge with a suffix Prometheus reserves, labels source and
	// origin.
	namesMailpulse = "mailpulse"
	// namesStalwart: the names of Stalwart's own exporter (smtp_connection_start,
	// queue_count), for Grafana dashboards built on it; with the label source only, and
	// buckets that are cumulative, which Stalwart's are not.
	namesStalwart = "stalwart"
)

// gaugeNames renames the gauges whose Stalwart name ends in _count, a suffix Prometheus
// reserves for histograms and summaries (promtool: "non-histogram and non-summary metrics
// should not have _count suffix").
var gaugeNames = map[string]string{"queue.count": "queue_messages", "user.count": "users", "domain.count": "domains"}

// reservedSuffixes are the suffixes a gauge may not end with.
var reservedSuffixes = []string{"_count", "_sum", "_bucket", "_total", "_created"}

// promGaugeName is a gauge's name in the mailpulse scheme.
func promGaugeName(id string) string {
	if n, ok := gaugeNames[id]; ok {
		return n
	}
	n := event.PromName(id)
	for _, suf := range reservedSuffixes {
		if strings.HasSuffix(n, suf) {
			return n + "_value"
		}
	}
	return n
}

// collector exposes the mail servers' metrics. Each source appears from the one origin the
// policy chooses (gateway.metrics_origin), so that summing a metric never counts a server
// twice. A metric that cannot be exposed (an invalid name, say) is reported as an invalid
// metric, so that the scrape fails with the reason instead of leaving it out in silence.
type collector struct {
	s      *snapshots
	policy metric.OriginPolicy
	names  string
}

func (c collector) Describe(chan<- *prometheus.Desc) {} // unchecked: the metric set follows the data

func (c collector) Collect(ch chan<- prometheus.Metric) {
	stalwart := c.names == namesStalwart
	labels := []string{"source", "origin"}
	if stalwart {
		labels = labels[:1]
	}
	descs := map[string]*prometheus.Desc{}
	desc := func(name, help string) *prometheus.Desc {
		if d, ok := descs[name]; ok {
			return d
		}
		d := prometheus.NewDesc(name, help, labels, nil)
		descs[name] = d
		return d
	}
	send := func(d *prometheus.Desc, m prometheus.Metric, err error) {
		if err != nil {
			m = prometheus.NewInvalidMetric(d, err)
		}
		ch <- m
	}
	views := c.s.views()
	pairs := make(map[[2]string]bool, len(views))
	for _, v := range views {
		pairs[[2]string{v.source, v.origin}] = true
	}
	chosen := c.policy.Chosen(pairs)
	for _, v := range views {
		if chosen[v.source] != v.origin {
			continue
		}
		lv := []string{v.source, v.origin}[:len(labels)]
		for _, name := range sortedKeys(v.counters) {
			n := event.PromName(name)
			if !stalwart {
				n += "_total"
			}
			d := desc(n, helpOf(name))
			m, err := prometheus.NewConstMetric(d, prometheus.CounterValue, v.counters[name], lv...)
			send(d, m, err)
		}
		for _, name := range sortedKeys(v.gauges) {
			n := event.PromName(name)
			if !stalwart {
				n = promGaugeName(name)
			}
			d := desc(n, helpOf(name))
			m, err := prometheus.NewConstMetric(d, prometheus.GaugeValue, v.gauges[name], lv...)
			send(d, m, err)
		}
		for _, name := range sortedKeys(v.hists) {
			h := v.hists[name]
			d := desc(event.PromName(name), helpOf(name))
			m, err := prometheus.NewConstHistogram(d, h.Count, h.Sum, bucketsOf(h), lv...)
			send(d, m, err)
		}
	}
}

// exposition is GET /metrics/prometheus[?names=mailpulse|stalwart].
func (s *Service) exposition(c *fiber.Ctx) error {
	names := s.cfg.PrometheusNames
	if v := c.Query("names"); v != "" {
		if v != namesMailpulse && v != namesStalwart {
			return httpserver.Error(c, fiber.StatusBadRequest, "names: want mailpulse or stalwart")
		}
		names = v
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{s: s.snaps, policy: s.cfg.MetricsOrigin, names: names})
	return adaptor.HTTPHandler(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))(c)
}

// bucketsOf returns a histogram's buckets by upper bound (its counts are cumulative already).
func bucketsOf(h metric.Histogram) map[float64]uint64 {
	buckets := map[float64]uint64{}
	for i, b := range h.Bounds {
		if i < len(h.Counts) {
			buckets[b] = h.Counts[i]
		}
	}
	return buckets
}

func helpOf(name string) string {
	if info, ok := event.Known().Lookup(name); ok {
		return info.Description + " (" + name + ")"
	}
	for _, h := range metric.Histograms {
		if h.Name == name {
			return h.Help + ", " + h.Unit + " (" + name + ")"
		}
	}
	return name
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
