package livegateway

import (
	"sort"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/metric"
)

// GET /metrics/prometheus: the mail servers' metrics, from the latest snapshots.

// collector exposes the mail servers' metrics in correct Prometheus form: counters with
// _total, cumulative histograms, source and origin labels, help from the catalogue. A metric
// that cannot be exposed (an invalid name, say) is reported as an invalid metric, so that
// the scrape fails with the reason instead of leaving it out in silence.
type collector struct{ s *snapshots }

func (c collector) Describe(chan<- *prometheus.Desc) {} // unchecked: the metric set follows the data

func (c collector) Collect(ch chan<- prometheus.Metric) {
	descs := map[string]*prometheus.Desc{}
	desc := func(name, help string) *prometheus.Desc {
		if d, ok := descs[name]; ok {
			return d
		}
		d := prometheus.NewDesc(name, help, []string{"source", "origin"}, nil)
		descs[name] = d
		return d
	}
	send := func(d *prometheus.Desc, m prometheus.Metric, err error) {
		if err != nil {
			m = prometheus.NewInvalidMetric(d, err)
		}
		ch <- m
	}
	for _, v := range c.s.views() {
		for _, name := range sortedKeys(v.counters) {
			d := desc(event.PromName(name)+"_total", helpOf(name))
			m, err := prometheus.NewConstMetric(d, prometheus.CounterValue, v.counters[name], v.source, v.origin)
			send(d, m, err)
		}
		for _, name := range sortedKeys(v.gauges) {
			d := desc(event.PromName(name), helpOf(name))
			m, err := prometheus.NewConstMetric(d, prometheus.GaugeValue, v.gauges[name], v.source, v.origin)
			send(d, m, err)
		}
		for _, name := range sortedKeys(v.hists) {
			h := v.hists[name]
			d := desc(event.PromName(name), helpOf(name))
			m, err := prometheus.NewConstHistogram(d, h.Count, h.Sum, bucketsOf(h), v.source, v.origin)
			send(d, m, err)
		}
	}
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
