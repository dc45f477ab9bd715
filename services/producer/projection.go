package producer

import (
	"maps"
	"strings"
	"sync"
	"time"

	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/metric"
)

// projection computes metrics from the events this producer stores, as Stalwart computes
// them from its own: a counter per event type (span ends and raw I/O excepted), Stalwart's
// histograms fed from elapsed and size, active connections per protocol from span starts and
// ends, and the queue size. Counters are cumulative from Start; a restart of the producer
// starts them again, with a new Start that tells readers so.
type projection struct {
	instance string
	start    time.Time
	hists    map[string][]int // event type -> indexes into metric.Histograms

	mu        sync.Mutex
	sources   map[string]*sourceMetrics
	untracked uint64 // span starts not tracked because a source had too many open spans
}

type sourceMetrics struct {
	counters map[string]uint64
	gauges   map[string]float64
	hists    []metric.Histogram // parallel to metric.Histograms; nil until first observation
	spans    map[string]string  // open span id -> its gauge
	changed  bool
}

// Bounds on the projection's memory.
const (
	maxSources       = 1000
	maxOpenSpans     = 100_000 // per source
	overflowSourceID = "_overflow"
)

func newProjection(instance string, now time.Time) *projection {
	p := &projection{instance: instance, start: now.UTC(), hists: map[string][]int{}, sources: map[string]*sourceMetrics{}}
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
		if len(p.sources) >= maxSources {
			name = overflowSourceID
			if sm = p.sources[name]; sm != nil {
				return sm
			}
		}
		sm = &sourceMetrics{counters: map[string]uint64{}, gauges: map[string]float64{}, spans: map[string]string{}}
		p.sources[name] = sm
	}
	return sm
}

func (p *projection) observeOne(e *event.Event) {
	sm := p.source(e.Source)
	sm.changed = true
	if countsAsCounter(e.Type) {
		sm.counters[e.Type]++
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
			p.untracked++
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
