package producer

import (
	"errors"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailpulse/mailpulse/shared/config"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/metric"
)

// projection computes metrics from the events this producer stores, as Stalwart computes
// them from its own: a counter per event type (span ends and raw I/O excepted), Stalwart's
// histograms fed from elapsed and size, active connections per protocol from span starts and
// ends, and the queue size. Counters are cumulative from Start; a restart of the producer
// starts them again, with a new Start that tells readers so.
//
// Its cardinality is bounded (issue 9 #7: 100,000 types from one source made a 1.7 MB
// snapshot every 10 s, and /metrics/prometheus 12.9 MB): at most limits.sources sources,
// limits.types counters per source and limits.series counters in all. Events past a limit
// are counted under _overflow (the source, or the counter of their source), so totals stay
// right; each limit is logged the first time it bites and counted in
// mailpulse_producer_metrics_overflow_total.
type projection struct {
	instance string
	start    time.Time
	hists    map[string][]int // event type -> indexes into metric.Histograms
	limits   projectionLimits
	log      *slog.Logger
	overflow *prometheus.CounterVec // events counted under _overflow, by limit
	spansOff prometheus.Counter     // span starts not tracked: too many open spans

	mu      sync.Mutex
	sources map[string]*sourceMetrics
	series  int             // counters in all sources
	warned  map[string]bool // limits already logged
}

// projectionLimits bound the projection (metrics.max_sources, max_types, max_series).
type projectionLimits struct {
	sources, types, series int
}

// Defaults of the limits, taken when the configuration leaves them at zero. Stalwart 0.16
// has about 340 event types, and a mail server rarely sees half of them; the series bound
// keeps the projection's maps to a few tens of MB whatever the sources.
const (
	defaultMaxSources = 1000
	defaultMaxTypes   = 1000
	defaultMaxSeries  = 100_000
)

// projectionLimits returns the limits of the configuration, defaults for zero fields.
func (m *Metrics) projectionLimits() (projectionLimits, error) {
	l := projectionLimits{sources: m.MaxSources, types: m.MaxTypes, series: m.MaxSeries}
	var errs []error
	for _, f := range []struct {
		key string
		v   *int
		def int
	}{{"metrics.max_sources", &l.sources, defaultMaxSources}, {"metrics.max_types", &l.types, defaultMaxTypes}, {"metrics.max_series", &l.series, defaultMaxSeries}} {
		switch {
		case *f.v == 0:
			*f.v = f.def
		case *f.v < 1 || *f.v > 10_000_000:
			errs = append(errs, config.Problem(f.key, "want 1 to 10000000 (0: %d)", f.def))
		}
	}
	return l, errors.Join(errs...)
}

type sourceMetrics struct {
	counters map[string]uint64
	gauges   map[string]float64
	hists    []metric.Histogram // parallel to metric.Histograms; nil until first observation
	spans    map[string]string  // open span id -> its gauge
	changed  bool
}

// maxOpenSpans bounds the spans tracked per source for the active-connection gauges.
const maxOpenSpans = 100_000

// overflowID names the source, and the counter of a source, that count the events past a
// limit. No event type can have it (types start with a letter).
const overflowID = "_overflow"

// Labels of mailpulse_producer_metrics_overflow_total: the limit that was reached.
const (
	limitSources = "max_sources"
	limitTypes   = "max_types"
	limitSeries  = "max_series"
)

func newProjection(instance string, now time.Time, limits projectionLimits, log *slog.Logger, m *serviceMetrics) *projection {
	p := &projection{instance: instance, start: now.UTC(), hists: map[string][]int{}, sources: map[string]*sourceMetrics{},
		limits: limits, log: log, overflow: m.metricsOverflow, spansOff: m.spansUntracked, warned: map[string]bool{}}
	for i, h := range metric.Histograms {
		for _, t := range h.Events {
			p.hists[t] = append(p.hists[t], i)
		}
	}
	return p
}

func countsAsCounter(typ string) bool {
	return !strings.HasSuffix(typ, ".connection-end") && typ != "delivery.attempt-end" &&
		!strings.HasSuffix(typ, ".raw-input") && !strings.HasSuffix(typ, ".raw-output")
}

// observe adds the stored events.
func (p *projection) observe(evs []event.Event, stored func(i int) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range evs {
		if stored != nil && !stored(i) {
			continue
		}
		p.observeOne(&evs[i])
	}
}

func (p *projection) source(name string) *sourceMetrics {
	sm := p.sources[name]
	if sm == nil {
		if len(p.sources) >= p.limits.sources {
			p.overflowed(limitSources, p.limits.sources, name)
			name = overflowID
			if sm = p.sources[name]; sm != nil {
				return sm
			}
		}
		sm = &sourceMetrics{counters: map[string]uint64{}, gauges: map[string]float64{}, spans: map[string]string{}}
		p.sources[name] = sm
	}
	return sm
}

// count adds an event to its type's counter, or to the source's _overflow counter once the
// source has limits.types counters or the projection limits.series.
func (p *projection) count(sm *sourceMetrics, typ, source string) {
	if _, ok := sm.counters[typ]; ok {
		sm.counters[typ]++
		return
	}
	switch {
	case len(sm.counters) >= p.limits.types:
		p.overflowed(limitTypes, p.limits.types, source)
		typ = overflowID
	case p.series >= p.limits.series:
		p.overflowed(limitSeries, p.limits.series, source)
		typ = overflowID
	}
	if _, ok := sm.counters[typ]; !ok {
		p.series++
	}
	sm.counters[typ]++
}

// overflowed counts an event past a limit, and logs the limit the first time.
func (p *projection) overflowed(limit string, value int, source string) {
	p.overflow.WithLabelValues(limit).Inc()
	if !p.warned[limit] {
		p.warned[limit] = true
		p.log.Warn("metrics limit reached: further series are counted under "+overflowID,
			"limit", "metrics."+limit, "value", value, "source", source)
	}
}

func (p *projection) observeOne(e *event.Event) {
	sm := p.source(e.Source)
	sm.changed = true
	if countsAsCounter(e.Type) {
		p.count(sm, e.Type, e.Source)
	}
	for _, hi := range p.hists[e.Type] {
		def := metric.Histograms[hi]
		v := e.Data.Get(def.Key)
		if !v.Exists() {
			continue
		}
		if sm.hists == nil {
			sm.hists = make([]metric.Histogram, len(metric.Histograms))
		}
		if sm.hists[hi].Counts == nil {
			sm.hists[hi] = metric.NewHistogram(def.Bounds)
		}
		sm.hists[hi].Observe(v.Float())
	}
	group := e.Group()
	name := e.Type[len(group)+1:]
	switch {
	case name == "connection-start" || e.Type == "delivery.attempt-start":
		g, ok := metric.SpanGauges[group]
		span := e.Data.Get("spanId").String()
		if !ok || span == "" {
			return
		}
		if len(sm.spans) >= maxOpenSpans {
			p.spansOff.Inc()
			return
		}
		if _, open := sm.spans[span]; !open {
			sm.spans[span] = g
			sm.gauges[g]++
		}
	case name == "connection-end" || e.Type == "delivery.attempt-end":
		span := e.Data.Get("spanId").String()
		// Only spans seen starting are closed, so a producer that starts mid-session never
		// drives a gauge below zero.
		if g, open := sm.spans[span]; open {
			delete(sm.spans, span)
			sm.gauges[g]--
		}
	case group == "queue" && strings.HasSuffix(name, "-queued"):
		sm.gauges[metric.QueueCount]++
	case e.Type == "delivery.completed":
		if sm.gauges[metric.QueueCount] > 0 {
			sm.gauges[metric.QueueCount]--
		}
	}
}

// snapshots returns a snapshot of every source that changed since the last call (all of
// them when all is true).
func (p *projection) snapshots(now time.Time, all bool) []metric.Snapshot {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []metric.Snapshot
	for name, sm := range p.sources {
		if !sm.changed && !all {
			continue
		}
		sm.changed = false
		s := metric.Snapshot{
			Source: name, Origin: metric.OriginEvents, Instance: p.instance,
			Time: now.UTC(), Start: p.start,
			Counters: maps.Clone(sm.counters),
			Gauges:   maps.Clone(sm.gauges),
		}
		for i, h := range sm.hists {
			if h.Counts == nil {
				continue
			}
			if s.Histograms == nil {
				s.Histograms = map[string]metric.Histogram{}
			}
			s.Histograms[metric.Histograms[i].Name] = h.Clone()
		}
		out = append(out, s)
	}
	return out
}
