package livegateway

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/metric"
)

// snapshots keeps the latest metric snapshot of every source, origin and producer instance,
// and the one before it for rates, by following the METRICS stream.
type snapshots struct {
	js  jetstream.JetStream
	log *slog.Logger

	mu      sync.RWMutex
	latest  map[string]metric.Snapshot // by origin/instance/source
	prev    map[string]metric.Snapshot
	updates atomic.Uint64
}

const maxSnapshotSeries = 10_000 // bounds the map against a flood of sources

// snapshotLookback is how far back the gateway reads snapshots when it starts: longer than
// any sensible snapshot or scrape interval.
const snapshotLookback = 10 * time.Minute

func newSnapshots(js jetstream.JetStream, log *slog.Logger) *snapshots {
	return &snapshots{js: js, log: log, latest: map[string]metric.Snapshot{}, prev: map[string]metric.Snapshot{}}
}

func (s *snapshots) run(ctx context.Context) error {
	wait := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := s.consume(ctx)
		if ctx.Err() != nil {
			break
		}
		s.log.Warn("metrics consumer stopped; restarting", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
		wait = min(wait*2, 5*time.Second)
	}
	return nil
}

func (s *snapshots) consume(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	// The snapshots of the last minutes first, then every new one. Not "last per subject":
	// several producer instances publish on the same subject (metrics.<source>), and the
	// gateway needs the latest of each of them.
	since := time.Now().Add(-snapshotLookback)
	cons, err := s.js.OrderedConsumer(cctx, bus.StreamMetrics, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{bus.SubjectMetrics},
		DeliverPolicy:  jetstream.DeliverByStartTimePolicy,
		OptStartTime:   &since,
	})
	cancel()
	if err != nil {
		return err
	}
	it, err := cons.Messages()
	if err != nil {
		return err
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	for {
		msg, err := it.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) && ctx.Err() != nil {
				return nil
			}
			return err
		}
		snap, err := metric.Unmarshal(msg.Data())
		if err != nil {
			continue
		}
		s.add(snap)
	}
}

func (s *snapshots) add(snap metric.Snapshot) {
	k := snap.Origin + "/" + snap.Instance + "/" + snap.Source
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := s.latest[k]
	if !ok && len(s.latest) >= maxSnapshotSeries {
		return
	}
	if ok && !snap.Time.After(old.Time) {
		return
	}
	if ok {
		s.prev[k] = old
	}
	s.latest[k] = snap
	s.updates.Add(1)
}

// view is the metrics of one source and origin, summed over producer instances.
type view struct {
	source, origin string
	counters       map[string]float64
	rates          map[string]float64 // per second, from the previous snapshots
	gauges         map[string]float64
	hists          map[string]metric.Histogram
}

// views returns the current metrics, one view per source and origin.
func (s *snapshots) views() []view {
	s.mu.RLock()
	defer s.mu.RUnlock()
	by := map[string]*view{}
	for k, snap := range s.latest {
		vk := snap.Origin + "/" + snap.Source
		v := by[vk]
		if v == nil {
			v = &view{source: snap.Source, origin: snap.Origin, counters: map[string]float64{}, rates: map[string]float64{}, gauges: map[string]float64{}, hists: map[string]metric.Histogram{}}
			by[vk] = v
		}
		prev, hasPrev := s.prev[k]
		dt := snap.Time.Sub(prev.Time).Seconds()
		for name, c := range snap.Counters {
			v.counters[name] += float64(c)
			if hasPrev && dt > 0 && prev.Start.Equal(snap.Start) && c >= prev.Counters[name] {
				v.rates[name] += float64(c-prev.Counters[name]) / dt
			} else if _, ok := v.rates[name]; !ok {
				v.rates[name] = 0
			}
		}
		for name, g := range snap.Gauges {
			v.gauges[name] += g
		}
		for name, h := range snap.Histograms {
			cur, ok := v.hists[name]
			if !ok || len(cur.Counts) != len(h.Counts) {
				v.hists[name] = h.Clone()
				continue
			}
			for i := range cur.Counts {
				cur.Counts[i] += h.Counts[i]
			}
			cur.Sum += h.Sum
			cur.Count += h.Count
			v.hists[name] = cur
		}
	}
	out := make([]view, 0, len(by))
	for _, v := range by {
		out = append(out, *v)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].source+out[i].origin < out[j].source+out[j].origin
	})
	return out
}

// collector exposes the mail servers' metrics in correct Prometheus form: counters with
// _total, cumulative histograms, source and origin labels, help from the catalogue.
type collector struct{ s *snapshots }

func (c collector) Describe(chan<- *prometheus.Desc) {} // unchecked: the metric set follows the data

func (c collector) Collect(ch chan<- prometheus.Metric) {
	labels := []string{"source", "origin"}
	descs := map[string]*prometheus.Desc{}
	desc := func(name, help string) *prometheus.Desc {
		if d, ok := descs[name]; ok {
			return d
		}
		d := prometheus.NewDesc(name, help, labels, nil)
		descs[name] = d
		return d
	}
	for _, v := range c.s.views() {
		for _, name := range sortedKeys(v.counters) {
			ch <- prometheus.MustNewConstMetric(desc(event.PromName(name)+"_total", helpOf(name)), prometheus.CounterValue, v.counters[name], v.source, v.origin)
		}
		for _, name := range sortedKeys(v.gauges) {
			ch <- prometheus.MustNewConstMetric(desc(event.PromName(name), helpOf(name)), prometheus.GaugeValue, v.gauges[name], v.source, v.origin)
		}
		for _, name := range sortedKeys(v.hists) {
			h := v.hists[name]
			buckets := map[float64]uint64{}
			for i, b := range h.Bounds {
				if i < len(h.Counts) {
					buckets[b] = h.Counts[i]
				}
			}
			m, err := prometheus.NewConstHistogram(desc(event.PromName(name), helpOf(name)), h.Count, h.Sum, buckets, v.source, v.origin)
			if err == nil {
				ch <- m
			}
		}
	}
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

// metricsStream is GET /api/telemetry/metrics/live (0.15) and /api/live/metrics (0.16):
// every interval, the selected metrics of the latest snapshots, counters also as rates.
func (s *Service) metricsStream(fm format) fiber.Handler {
	return func(c *fiber.Ctx) error {
		var patterns []string
		for _, p := range strings.Split(c.Query("metrics"), ",") {
			if p = strings.TrimSpace(p); p == "" {
				continue
			}
			if len(p) > 96 || strings.Count(p, "*") > 1 || strings.ContainsAny(p, " \t") {
				return deny(c, fiber.StatusBadRequest, fmt.Sprintf("metrics: pattern %q: want a metric id with at most one *", p))
			}
			patterns = append(patterns, p)
		}
		if len(patterns) > 100 {
			return deny(c, fiber.StatusBadRequest, "metrics: at most 100 patterns")
		}
		interval := 30 * time.Second
		if iv := c.Query("interval"); iv != "" {
			n, err := strconv.Atoi(iv)
			if err != nil || n < 1 || n > 3600 {
				return deny(c, fiber.StatusBadRequest, "interval: want whole seconds from 1 to 3600")
			}
			interval = time.Duration(n) * time.Second
		}
		source := c.Query("source")
		key := keyOf(c)
		if err := s.acquire(key.ID); err != nil {
			c.Set(fiber.HeaderRetryAfter, "5")
			return deny(c, fiber.StatusTooManyRequests, err.Error())
		}
		s.metrics.streamsBy.WithLabelValues("metrics-" + fm.String()).Inc()
		c.Set(fiber.HeaderContentType, "text/event-stream")
		c.Set(fiber.HeaderCacheControl, "no-store")
		c.Set("X-Accel-Buffering", "no")
		c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
			defer s.release(key.ID)
			s.metrics.closed.WithLabelValues(s.serveMetrics(w, fm, patterns, source, interval)).Inc()
		})
		return nil
	}
}

func (s *Service) serveMetrics(w *bufio.Writer, fm format, patterns []string, source string, interval time.Duration) string {
	sw := &sseWriter{w: w}
	sw.comment("connected")
	sw.raw("retry: 2000\n\n")
	write := func() bool {
		sw.named("metrics", string(s.metricItems(fm, patterns, source)))
		return sw.err == nil && w.Flush() == nil
	}
	if !write() {
		return "gone"
	}
	t := time.NewTicker(interval)
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
			sw.named("shutdown", `{"reason":"the gateway is stopping"}`)
			_ = w.Flush()
			return "shutdown"
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

// metricItems is one frame's JSON array, summed over sources unless source is given.
func (s *Service) metricItems(fm format, patterns []string, source string) []byte {
	counters, rates, gauges := map[string]float64{}, map[string]float64{}, map[string]float64{}
	hists := map[string]metric.Histogram{}
	for _, v := range s.snaps.views() {
		if source != "" && v.source != source {
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
			items = append(items, map[string]any{"id": k, "type": "counter", "value": counters[k], "rate": rate})
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
