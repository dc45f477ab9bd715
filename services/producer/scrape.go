package producer

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/metric"
)

// ScrapeConfig configures the scraper of a Stalwart /metrics/prometheus endpoint.
type ScrapeConfig struct {
	URL            string
	User, Password string // Basic auth, optional
	Interval       time.Duration
	// Buckets says how the endpoint writes histogram buckets: "per-bucket" (Stalwart: each
	// bucket counts only its own range), "cumulative" (Prometheus' rule), or "auto".
	Buckets string
	Source  string
}

// maxScrapeBytes bounds one scraped page.
const maxScrapeBytes = 16 << 20

// scraper turns a Stalwart Prometheus page into metric snapshots. It copes with Stalwart's
// quirks: names without _total and with underscores for dots and dashes (mapped back to
// event ids), per-bucket histogram counts (made cumulative), metrics that appear only once
// non-zero (absent means zero), and counters that reset when Stalwart restarts (the
// published counters carry on from where they were, so they only ever grow). It is not safe
// for concurrent use.
type scraper struct {
	cfg    ScrapeConfig
	client *http.Client
	names  map[string]string // Prometheus name -> metric id
	start  time.Time

	lastCounters map[string]float64 // raw values of the previous scrape
	offCounters  map[string]float64 // added to raw values after resets
	lastHists    map[string]metric.Histogram
	offHists     map[string]metric.Histogram
}

func newScraper(cfg ScrapeConfig, client *http.Client, now time.Time) *scraper {
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	s := &scraper{
		cfg: cfg, client: client, names: map[string]string{}, start: now.UTC(),
		lastCounters: map[string]float64{}, offCounters: map[string]float64{},
		lastHists: map[string]metric.Histogram{}, offHists: map[string]metric.Histogram{},
	}
	for _, info := range event.Known().All() {
		// A 0.15 server's names (queue_queue_message) count under their 0.16 ids, as its events do.
		s.names[event.PromName(info.Type)] = event.From015(info.Type)
	}
	for _, n := range metric.Names() {
		s.names[event.PromName(n)] = n
	}
	return s
}

func (s *scraper) metricID(promName string) string {
	if id, ok := s.names[promName]; ok {
		return id
	}
	if id, ok := s.names[strings.TrimSuffix(promName, "_total")]; ok {
		return id
	}
	return strings.TrimSuffix(promName, "_total")
}

// scrape fetches and converts one page.
func (s *scraper) scrape(ctx context.Context, now time.Time) (metric.Snapshot, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.cfg.URL, nil)
	if err != nil {
		return metric.Snapshot{}, err
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	if s.cfg.User != "" {
		req.SetBasicAuth(s.cfg.User, s.cfg.Password)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return metric.Snapshot{}, fmt.Errorf("scrape %s: %w", redactURL(s.cfg.URL), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return metric.Snapshot{}, fmt.Errorf("scrape %s: HTTP %d", redactURL(s.cfg.URL), resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxScrapeBytes+1))
	if err != nil {
		return metric.Snapshot{}, fmt.Errorf("scrape %s: %w", redactURL(s.cfg.URL), err)
	}
	if len(body) > maxScrapeBytes {
		return metric.Snapshot{}, fmt.Errorf("scrape %s: page larger than %d bytes", redactURL(s.cfg.URL), maxScrapeBytes)
	}
	return s.convert(strings.NewReader(string(body)), now)
}

func redactURL(u string) string {
	if i := strings.Index(u, "@"); i > 0 {
		if j := strings.Index(u, "://"); j > 0 && j < i {
			return u[:j+3] + "…" + u[i:]
		}
	}
	return u
}

// convert parses a Prometheus text page into a snapshot.
func (s *scraper) convert(page io.Reader, now time.Time) (metric.Snapshot, error) {
	fams, err := parsePage(page)
	if err != nil {
		return metric.Snapshot{}, err
	}
	snap := metric.Snapshot{
		Source: s.cfg.Source, Origin: metric.OriginPrometheus, Instance: "scrape",
		Time: now.UTC(), Start: s.start,
		Counters: map[string]uint64{}, Gauges: map[string]float64{}, Histograms: map[string]metric.Histogram{},
	}
	seen := map[string]bool{}
	for name, fam := range fams {
		for _, m := range fam.GetMetric() {
			if len(m.GetLabel()) > 0 {
				continue // Stalwart has no labels; a labelled series is not one of its metrics
			}
			id := s.metricID(name)
			switch fam.GetType() {
			case dto.MetricType_COUNTER:
				v := m.GetCounter().GetValue()
				snap.Counters[id] = uint64(s.counter(id, v))
				seen[id] = true
			case dto.MetricType_GAUGE:
				snap.Gauges[id] = m.GetGauge().GetValue()
			case dto.MetricType_UNTYPED:
				snap.Gauges[id] = m.GetUntyped().GetValue()
			case dto.MetricType_HISTOGRAM:
				h := s.histogram(m.GetHistogram())
				snap.Histograms[id] = s.histogramOffsets(id, h)
				seen["h:"+id] = true
			}
		}
	}
	// A counter that vanished is zero: Stalwart shows only non-zero ones, and after a
	// restart the next scrape may not list it yet. Keep publishing what it had reached.
	for id := range s.lastCounters {
		if !seen[id] {
			snap.Counters[id] = uint64(s.counter(id, 0))
		}
	}
	for id := range s.lastHists {
		if !seen["h:"+id] {
			snap.Histograms[id] = s.histogramOffsets(id, metric.Histogram{})
		}
	}
	return snap, nil
}

// parsePage parses a Prometheus text page. The parser panics on some malformed pages (found
// by FuzzScraperConvert: "#0\n{}" in prometheus/common v0.67.5); a page from the network
// must not take the producer down, so a panic becomes an error.
func parsePage(page io.Reader) (fams map[string]*dto.MetricFamily, err error) {
	defer func() {
		if r := recover(); r != nil {
			fams, err = nil, fmt.Errorf("parse metrics page: malformed page (parser panicked: %v)", r)
		}
	}()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err = parser.TextToMetricFamilies(page)
	if err != nil {
		return nil, fmt.Errorf("parse metrics page: %w", err)
	}
	return fams, nil
}

// counter returns the monotonic value of a counter whose raw value is v.
func (s *scraper) counter(id string, v float64) float64 {
	if math.IsNaN(v) || v < 0 {
		v = 0
	}
	if last, ok := s.lastCounters[id]; ok && v < last {
		s.offCounters[id] += last // the server restarted
	}
	s.lastCounters[id] = v
	return v + s.offCounters[id]
}

// histogram converts a parsed histogram to a cumulative one without the +Inf bucket in
// Bounds.
func (s *scraper) histogram(h *dto.Histogram) metric.Histogram {
	type bucket struct {
		le float64
		n  float64
	}
	var bs []bucket
	for _, b := range h.GetBucket() {
		n := float64(b.GetCumulativeCount())
		if n == 0 {
			n = b.GetCumulativeCountFloat()
		}
		bs = append(bs, bucket{b.GetUpperBound(), n})
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i].le < bs[j].le })
	count := float64(h.GetSampleCount())
	if count == 0 {
		count = h.GetSampleCountFloat()
	}
	if len(bs) > 0 && math.IsInf(bs[len(bs)-1].le, 1) {
		bs = bs[:len(bs)-1]
	}
	perBucket := false
	switch s.cfg.Buckets {
	case "per-bucket":
		perBucket = true
	case "cumulative":
	default:
		// Cumulative counts never decrease, and their total exceeds the count as soon as
		// two buckets hold anything; per-bucket counts add up to at most the count. When
		// both readings fit, trust what Stalwart is known to write: per-bucket.
		monotonic, sum := true, 0.0
		for i, b := range bs {
			sum += b.n
			if i > 0 && b.n < bs[i-1].n {
				monotonic = false
			}
		}
		perBucket = !monotonic || sum <= count
	}
	out := metric.Histogram{Sum: h.GetSampleSum(), Count: uint64(count)}
	run := 0.0
	for _, b := range bs {
		if perBucket {
			run += b.n
		} else {
			run = b.n
		}
		if run > count {
			run = count
		}
		out.Bounds = append(out.Bounds, b.le)
		out.Counts = append(out.Counts, uint64(run))
	}
	out.Counts = append(out.Counts, uint64(count))
	return out
}

// histogramOffsets carries a histogram across server restarts, like counter.
func (s *scraper) histogramOffsets(id string, h metric.Histogram) metric.Histogram {
	last, had := s.lastHists[id]
	off := s.offHists[id]
	if h.Counts == nil { // vanished: zero with the last shape
		h = metric.Histogram{Bounds: last.Bounds, Counts: make([]uint64, len(last.Bounds)+1)}
	}
	if had && h.Count < last.Count && sameBounds(last.Bounds, h.Bounds) {
		if off.Counts == nil {
			off = metric.Histogram{Bounds: h.Bounds, Counts: make([]uint64, len(h.Counts))}
		}
		for i := range off.Counts {
			off.Counts[i] += last.Counts[i]
		}
		off.Sum += last.Sum
		off.Count += last.Count
		s.offHists[id] = off
	}
	s.lastHists[id] = h.Clone()
	if off.Counts == nil || !sameBounds(off.Bounds, h.Bounds) {
		return h
	}
	out := h.Clone()
	for i := range out.Counts {
		out.Counts[i] += off.Counts[i]
	}
	out.Sum += off.Sum
	out.Count += off.Count
	return out
}

func sameBounds(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
