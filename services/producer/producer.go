// Package producer is mailpulse's way in: it puts every event once into the EVENTS log.
// Events arrive through the ingest API (native JSON or NDJSON, and Stalwart's webhooks),
// from the simulator, and as metric snapshots scraped from Stalwart's Prometheus endpoint or
// projected from the events themselves. Nothing is acknowledged to a client before
// JetStream has stored it.
package producer

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/mailpulse/mailpulse/shared/apikey"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/config"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/metric"
)

// Deps are what the producer uses but does not own.
type Deps struct {
	Conn      *nats.Conn     // the caller closes it after Run returns
	Publisher *bus.Publisher // on Conn
	Keys      *apikey.Store
	Log       *slog.Logger
	Registry  *prometheus.Registry // the service's own metrics go here; nil: a new one
}

// Service is a running producer. Create it with New, then call Run once.
type Service struct {
	cfg  Config
	deps Deps
	log  *slog.Logger
	ln   net.Listener

	defaults event.Defaults
	proj     *projection
	metrics  *serviceMetrics
	server   *httpServer
}

// New prepares the producer and opens its listener, so Addr is known before Run.
func New(cfg Config, deps Deps) (*Service, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("producer: %w", err)
	}
	// The bounds on createdAt and on the metrics' cardinality, with the defaults their zero
	// values take (checkTimeBounds, projectionLimits).
	limits, err := cfg.Metrics.projectionLimits()
	if err := errors.Join(err, cfg.Ingest.checkTimeBounds()); err != nil {
		return nil, fmt.Errorf("producer: %w", err)
	}
	if deps.Conn == nil || deps.Publisher == nil || deps.Keys == nil {
		return nil, errors.New("producer: Conn, Publisher and Keys are required")
	}
	if deps.Log == nil {
		deps.Log = slog.New(slog.DiscardHandler)
	}
	if deps.Registry == nil {
		deps.Registry = prometheus.NewRegistry()
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("producer: listen on %s: %w", cfg.Addr, err)
	}
	s := &Service{
		cfg: cfg, deps: deps, log: deps.Log, ln: ln,
		defaults: event.Defaults{IDs: event.NewIDs(), Source: cfg.Source, MaxFuture: cfg.Ingest.MaxFuture, MaxAge: cfg.Ingest.MaxAge},
		metrics:  newServiceMetrics(deps.Registry, deps.Publisher),
	}
	if s.defaults.MaxFuture == 0 {
		s.defaults.MaxFuture = defaultMaxFuture
	}
	s.proj = newProjection(cfg.Instance, time.Now(), limits, deps.Log, s.metrics)
	s.server = newHTTPServer(s)
	return s, nil
}

// defaultMaxFuture is ingest.max_future's default: Stalwart sends its events within
// seconds, so an hour ahead is a wrong clock, not a delay.
const defaultMaxFuture = time.Hour

// checkTimeBounds checks ingest.max_future and ingest.max_age (zero takes the default).
func (in *Ingest) checkTimeBounds() error {
	var errs []error
	if in.MaxFuture < 0 || in.MaxFuture > 7*24*time.Hour {
		errs = append(errs, config.Problem("ingest.max_future", "want 0 (1h) up to 168h"))
	}
	if in.MaxAge < 0 || (in.MaxAge > 0 && in.MaxAge < time.Hour) {
		errs = append(errs, config.Problem("ingest.max_age", "want 0 (no bound) or at least 1h"))
	}
	return errors.Join(errs...)
}

// Addr is the ingest API's listen address.
func (s *Service) Addr() net.Addr { return s.ln.Addr() }

// Run serves until ctx ends, then stops intake (HTTP, simulator, scraper), lets in-flight
// requests finish within the grace period, publishes a last snapshot of the metrics, and
// waits for every publish to be acknowledged.
func (s *Service) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.server.serve(gctx, s.ln) })
	if s.cfg.Simulate > 0 {
		g.Go(func() error { return s.runSimulator(gctx) })
	}
	if s.cfg.Stalwart.MetricsURL != "" {
		g.Go(func() error { return s.runScraper(gctx) })
	}
	g.Go(func() error { return s.runSnapshots(gctx) })
	err := g.Wait()
	// Intake has stopped; what was published must be acknowledged before we return.
	fctx, cancel := context.WithTimeout(context.Background(), s.cfg.Grace)
	defer cancel()
	s.publishSnapshots(fctx, true)
	if ferr := s.deps.Publisher.Flush(fctx); ferr != nil {
		s.log.Warn("shutdown: publishes left unacknowledged", "err", ferr)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// ingest encodes and publishes evs, waits until each is stored or failed, and projects the
// newly stored ones into the metrics. errs[i] reports evs[i]; it returns how many of the
// stored events the log already had (sent again within the duplicate window). key gives the
// id JetStream deduplicates an event by (byID or byContent).
func (s *Service) ingest(ctx context.Context, evs []event.Event, errs []error, key keyFunc) (duplicates int) {
	if len(evs) == 0 {
		return 0
	}
	size := 0
	for i := range evs {
		size += 160 + len(evs[i].Data) + len(evs[i].Type) + len(evs[i].Source)
	}
	buf := make([]byte, 0, size)
	msgs := make([]bus.Msg, len(evs))
	// The keys are appended to one buffer and cut from one string: no allocation per event
	// on the ingest path.
	keys := make([]byte, 0, len(evs)*48)
	ends := make([]int, len(evs))
	for i := range evs {
		start := len(buf)
		buf = evs[i].AppendJSON(buf)
		enc := buf[start:len(buf):len(buf)]
		keys = key(keys, &evs[i], enc)
		ends[i] = len(keys)
		msgs[i] = bus.Msg{Subject: bus.EventSubject(evs[i].Type), Data: enc}
	}
	all := string(keys)
	for i, start := 0, 0; i < len(msgs); i++ {
		msgs[i].ID, start = all[start:ends[i]], ends[i]
	}
	dups := make([]bool, len(evs))
	s.deps.Publisher.PublishAllDuplicates(ctx, msgs, errs, dups)
	for _, d := range dups {
		if d {
			duplicates++
		}
	}
	// A duplicate was counted when it was first stored.
	s.proj.observe(evs, func(i int) bool { return errs[i] == nil && !dups[i] })
	return duplicates
}

// keyFunc appends to b the id JetStream deduplicates an event by.
type keyFunc func(b []byte, e *event.Event, encoded []byte) []byte

// byID deduplicates by the event's source and id: a client that sends an event again with
// its id has it stored once, and two sources' ids never collide.
func byID(b []byte, e *event.Event, _ []byte) []byte {
	b = append(b, e.Source...)
	b = append(b, 0)
	return append(b, e.ID...)
}

// byContent deduplicates by a digest of the whole event as stored (source, id, time, type,
// level, data). Stalwart's ids do not identify an event: they are a timestamp, a per-process
// counter and a type number, so two servers, or one server across restarts, send the same
// id for different events, and Stalwart before 0.16.11 reuses ids within a second. A batch
// Stalwart sends again is identical, so it is still stored once.
func byContent(b []byte, _ *event.Event, encoded []byte) []byte {
	sum := sha256.Sum256(encoded)
	return base64.RawURLEncoding.AppendEncode(b, sum[:18])
}

// runSimulator feeds simulated traffic at the configured rate, in small batches.
func (s *Service) runSimulator(ctx context.Context) error {
	sim := NewSimulator(s.cfg.SimulateSeed, "sim.example.org", nil)
	const tick = 50 * time.Millisecond
	t := time.NewTicker(tick)
	defer t.Stop()
	owed, last := 0.0, time.Now()
	var evs []event.Event
	var errs []error
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			owed += s.cfg.Simulate * now.Sub(last).Seconds()
			last = now
			n := int(owed)
			if n == 0 {
				continue
			}
			if max := int(s.cfg.Simulate) + 1; n > max {
				n = max // after a stall, do not burst more than a second's worth
			}
			owed -= float64(n)
			if owed > 1 {
				owed = 0
			}
			evs, errs = evs[:0], errs[:0]
			for range n {
				evs = append(evs, sim.Next())
				errs = append(errs, nil)
			}
			pctx, cancel := context.WithTimeout(ctx, s.cfg.Ingest.Timeout)
			s.ingest(pctx, evs, errs, byID)
			cancel()
			stored := 0
			for _, err := range errs {
				if err == nil {
					stored++
				}
			}
			s.metrics.simulated.Add(float64(stored))
			if stored < n {
				s.metrics.simulatorLost.Add(float64(n - stored))
			}
		}
	}
}

// runScraper scrapes the Stalwart metrics endpoint every interval and publishes what it
// finds as a snapshot.
func (s *Service) runScraper(ctx context.Context) error {
	sc := newScraper(s.cfg.scrape(), nil, time.Now())
	t := time.NewTicker(s.cfg.Stalwart.MetricsInterval)
	defer t.Stop()
	failing := false
	for {
		sctx, cancel := context.WithTimeout(ctx, min(s.cfg.Stalwart.MetricsInterval, 30*time.Second))
		snap, err := sc.scrape(sctx, time.Now())
		cancel()
		if err == nil {
			err = s.publishSnapshot(ctx, snap)
		}
		switch {
		case err != nil && ctx.Err() == nil:
			s.metrics.scrapeErrors.Inc()
			if !failing {
				s.log.Warn("Stalwart metrics scrape failing", "url", redactURL(s.cfg.Stalwart.MetricsURL), "err", err)
			}
			failing = true
		case err == nil:
			s.metrics.scrapes.Inc()
			if failing {
				s.log.Info("Stalwart metrics scrape recovered", "url", redactURL(s.cfg.Stalwart.MetricsURL))
			}
			failing = false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// runSnapshots publishes the metrics projected from events every interval.
func (s *Service) runSnapshots(ctx context.Context) error {
	t := time.NewTicker(s.cfg.Metrics.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			s.publishSnapshots(ctx, false)
		}
	}
}

func (s *Service) publishSnapshots(ctx context.Context, all bool) {
	for _, snap := range s.proj.snapshots(time.Now(), all) {
		if err := s.publishSnapshot(ctx, snap); err != nil && ctx.Err() == nil {
			s.log.Warn("metric snapshot not published", "source", snap.Source, "err", err)
		}
	}
}

// publishSnapshot publishes a snapshot, in parts when it is larger than the NATS server
// takes in one message (issue 9 #7: a 1.7 MB snapshot failed on every interval against the
// default 1 MiB). Each part has its own id, so that the log's deduplication keeps them all.
func (s *Service) publishSnapshot(ctx context.Context, snap metric.Snapshot) error {
	parts, err := snap.Split(s.maxSnapshotBytes())
	if err != nil {
		return fmt.Errorf("encode snapshot: %w", err)
	}
	id := snap.Origin + ":" + snap.Instance + ":" + snap.Source + ":" + strconv.FormatInt(snap.Time.UnixNano(), 10)
	msgs := make([]bus.Msg, len(parts))
	for i, b := range parts {
		msgs[i] = bus.Msg{Subject: bus.MetricsSubject(snap.Source), ID: id, Data: b}
		if len(parts) > 1 {
			msgs[i].ID = id + ":" + strconv.Itoa(i+1) + "/" + strconv.Itoa(len(parts))
		}
	}
	pctx, cancel := context.WithTimeout(ctx, s.cfg.Ingest.Timeout)
	defer cancel()
	errs := make([]error, len(msgs))
	s.deps.Publisher.PublishAll(pctx, msgs, errs)
	if err := errors.Join(errs...); err != nil {
		// The parts that were stored are of no use alone: readers leave out a snapshot
		// with a part missing, and the next one carries every counter again.
		return err
	}
	s.metrics.snapshots.Inc()
	if len(parts) > 1 {
		s.metrics.snapshotParts.Add(float64(len(parts)))
	}
	return nil
}

// snapshotHeadroom is kept off the server's max payload for the message's headers (its
// id), which count towards the limit.
const snapshotHeadroom = 1024

// maxSnapshotBytes is the largest snapshot message the NATS server takes, as it says now.
func (s *Service) maxSnapshotBytes() int {
	mp := s.deps.Conn.MaxPayload()
	if mp <= 0 {
		mp = 1 << 20 // not connected yet: NATS's default
	}
	return int(max(mp-snapshotHeadroom, snapshotHeadroom))
}

// serviceMetrics are the producer's own metrics, served on /metrics.
type serviceMetrics struct {
	received      *prometheus.CounterVec
	rejected      *prometheus.CounterVec
	stored        *prometheus.CounterVec
	duplicates    *prometheus.CounterVec
	unavailable   *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	simulated     prometheus.Counter
	simulatorLost prometheus.Counter
	scrapes       prometheus.Counter
	scrapeErrors  prometheus.Counter
	snapshots     prometheus.Counter
	snapshotParts prometheus.Counter
	// The projection's bounds biting.
	metricsOverflow *prometheus.CounterVec
	spansUntracked  prometheus.Counter
}

func newServiceMetrics(reg *prometheus.Registry, pub *bus.Publisher) *serviceMetrics {
	m := &serviceMetrics{
		received:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mailpulse_producer_events_received_total", Help: "Events received by the ingest API, by endpoint."}, []string{"endpoint"}),
		rejected:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mailpulse_producer_events_rejected_total", Help: "Events rejected as invalid, by endpoint."}, []string{"endpoint"}),
		stored:        prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mailpulse_producer_events_stored_total", Help: "Events stored in the log, by endpoint."}, []string{"endpoint"}),
		duplicates:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mailpulse_producer_events_duplicates_total", Help: "Events the log already had (sent again within the duplicate window), by endpoint."}, []string{"endpoint"}),
		unavailable:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mailpulse_producer_events_unavailable_total", Help: "Events answered with 503 because the log did not store them in time, by endpoint."}, []string{"endpoint"}),
		duration:      prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "mailpulse_producer_request_duration_seconds", Help: "Ingest request latency, by endpoint and status.", Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}, []string{"endpoint", "status"}),
		simulated:     prometheus.NewCounter(prometheus.CounterOpts{Name: "mailpulse_producer_simulated_events_total", Help: "Simulated events stored."}),
		simulatorLost: prometheus.NewCounter(prometheus.CounterOpts{Name: "mailpulse_producer_simulated_events_dropped_total", Help: "Simulated events the log did not store (dropped, not retried)."}),
		scrapes:       prometheus.NewCounter(prometheus.CounterOpts{Name: "mailpulse_producer_scrapes_total", Help: "Successful scrapes of the Stalwart metrics endpoint."}),
		scrapeErrors:  prometheus.NewCounter(prometheus.CounterOpts{Name: "mailpulse_producer_scrape_errors_total", Help: "Failed scrapes of the Stalwart metrics endpoint."}),
		snapshots:     prometheus.NewCounter(prometheus.CounterOpts{Name: "mailpulse_producer_snapshots_published_total", Help: "Metric snapshots published."}),
		snapshotParts: prometheus.NewCounter(prometheus.CounterOpts{Name: "mailpulse_producer_snapshot_parts_total", Help: "Parts published of metric snapshots larger than the NATS server's max payload (0 while every snapshot fits in one message)."}),
		metricsOverflow: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mailpulse_producer_metrics_overflow_total",
			Help: "Events counted under an _overflow source or counter because a metrics limit was reached, by limit (max_sources, max_types, max_series)."}, []string{"limit"}),
		spansUntracked: prometheus.NewCounter(prometheus.CounterOpts{Name: "mailpulse_producer_metrics_spans_untracked_total", Help: "Span starts left out of the active-connection gauges because their source had too many open spans."}),
	}
	for _, l := range []string{limitSources, limitTypes, limitSeries} {
		m.metricsOverflow.WithLabelValues(l) // every limit shows, at 0 until it bites
	}
	st := pub.Stats()
	reg.MustRegister(m.received, m.rejected, m.stored, m.duplicates, m.unavailable, m.duration, m.simulated, m.simulatorLost, m.scrapes, m.scrapeErrors, m.snapshots,
		m.snapshotParts, m.metricsOverflow, m.spansUntracked,
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "mailpulse_publish_stored_total", Help: "Messages JetStream acknowledged as stored."}, func() float64 { return float64(st.Stored.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "mailpulse_publish_duplicates_total", Help: "Messages JetStream recognised as already stored (same id)."}, func() float64 { return float64(st.Duplicates.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "mailpulse_publish_retries_total", Help: "Messages sent again after no acknowledgement."}, func() float64 { return float64(st.Retries.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "mailpulse_publish_failed_total", Help: "Messages not stored after every attempt."}, func() float64 { return float64(st.Failed.Load()) }),
	)
	return m
}
