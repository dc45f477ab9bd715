// Package archiver keeps the history: a durable consumer of the EVENTS log writes events in
// batched transactions to a store (SQLite by default), acknowledging them only once they are
// committed, and answers history queries over NATS request-reply, so any number of
// archivers and gateways can be deployed. The log stays the source of truth: the history
// can always be rebuilt by replaying it.
package archiver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/mailpulse/mailpulse/services/archiver/store"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/history"
	"github.com/mailpulse/mailpulse/shared/metric"
)

// Deps are what the archiver uses but does not own.
type Deps struct {
	Conn     *nats.Conn
	Store    store.Store // the caller closes it after Run returns
	Log      *slog.Logger
	Registry *prometheus.Registry
	// Now is the clock of the history's window and of retention (nil: time.Now).
	Now func() time.Time
}

// Service is a running archiver.
type Service struct {
	cfg     Config
	nc      *nats.Conn
	js      jetstream.JetStream
	st      store.Store
	log     *slog.Logger
	metrics *archiverMetrics
	events  *bus.BatchConsumer[store.Record]
	snaps   *bus.BatchConsumer[store.SnapshotRecord]
	now     func() time.Time

	warned sync.Map // "kind/side" -> true once an event or snapshot out of the window is logged
}

// New prepares an archiver.
func New(cfg Config, deps Deps) (*Service, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("archiver: %w", err)
	}
	if deps.Conn == nil || deps.Store == nil {
		return nil, errors.New("archiver: Conn and Store are required")
	}
	if deps.Log == nil {
		deps.Log = slog.New(slog.DiscardHandler)
	}
	if deps.Registry == nil {
		deps.Registry = prometheus.NewRegistry()
	}
	js, err := jetstream.New(deps.Conn)
	if err != nil {
		return nil, err
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	s := &Service{cfg: cfg, nc: deps.Conn, js: js, st: deps.Store, log: deps.Log, now: deps.Now}
	s.metrics = newArchiverMetrics(deps.Registry, s)
	common := bus.BatchConsumerConfig{Service: "archiver", Grace: cfg.Grace, Log: deps.Log, Registry: deps.Registry}
	ec := common
	ec.Stream, ec.Durable, ec.Subjects = bus.StreamEvents, cfg.Consumer, []string{bus.SubjectEvents}
	ec.Description = "the archiver: every event into the history store"
	ec.BatchSize, ec.MaxWait = cfg.BatchSize, cfg.MaxWait
	if s.events, err = bus.NewBatchConsumer(js, ec, bus.BatchHandler[store.Record]{Decode: s.decodeEvent, Write: s.write}); err != nil {
		return nil, err
	}
	mc := common
	mc.Stream, mc.Durable, mc.Subjects = bus.StreamMetrics, cfg.Consumer+"-metrics", []string{bus.SubjectMetrics}
	mc.Description = "the archiver: metric snapshots into the history"
	mc.BatchSize, mc.MaxWait = 100, time.Second
	if s.snaps, err = bus.NewBatchConsumer(js, mc, bus.BatchHandler[store.SnapshotRecord]{Decode: s.decodeSnapshot, Write: s.writeSnapshots}); err != nil {
		return nil, err
	}
	return s, nil
}

// Run archives and answers queries until ctx ends; the batch being written is finished
// (within the grace period) and the ones fetched after it are handed back.
func (s *Service) Run(ctx context.Context) error {
	// Answer queries before anything else, so a started archiver is never "no responders".
	subs, err := s.subscribe(ctx)
	if err != nil {
		return err
	}
	defer func() {
		for _, sub := range subs {
			_ = sub.Drain()
		}
	}()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.events.Run(gctx) })
	g.Go(func() error { return s.snaps.Run(gctx) })
	g.Go(func() error { return s.retention(gctx) })
	err = g.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// decodeEvent turns a message of the log into a record, or says it is not kept. An
// undecodable event is a permanent failure: the consumer dead-letters it. An event dated
// out of the history's window is left out or filed under its arrival (window.go).
func (s *Service) decodeEvent(d bus.Delivery) (store.Record, bool, error) {
	e, err := event.Decode(d.Data)
	if err != nil {
		return store.Record{}, false, err
	}
	if !s.cfg.keep(&e) {
		return store.Record{}, false, nil
	}
	created := e.CreatedAt
	switch s.cfg.place(&e, d.Time, s.now()) {
	case tooOld:
		s.outOfWindow("event", sidePast, d.Seq, created)
		return store.Record{}, false, nil
	case refiled:
		s.outOfWindow("event", sideFuture, d.Seq, created)
	}
	return store.Record{Seq: d.Seq, Event: e}, true, nil
}

func (s *Service) decodeSnapshot(d bus.Delivery) (store.SnapshotRecord, bool, error) {
	snap, err := metric.Unmarshal(d.Data)
	if err != nil {
		return store.SnapshotRecord{}, false, err
	}
	if side, keep := s.cfg.keepSnapshot(&snap, s.now()); !keep {
		s.outOfWindow("snapshot", side, d.Seq, snap.Time)
		return store.SnapshotRecord{}, false, nil
	}
	return store.SnapshotRecord{Seq: d.Seq, Snapshot: snap}, true, nil
}

// outOfWindow counts an event or snapshot dated out of the window, and logs the first of
// each kind and side.
func (s *Service) outOfWindow(kind, side string, seq uint64, at time.Time) {
	s.metrics.outOfWindow.WithLabelValues(kind, side).Inc()
	if _, logged := s.warned.LoadOrStore(kind+"/"+side, true); logged {
		return
	}
	msg := kind + " dated before the history's retention: not kept (counted in mailpulse_archiver_out_of_window_total)"
	if side == sideFuture {
		msg = kind + " dated after now + archiver.max_future: filed under its arrival time (counted in mailpulse_archiver_out_of_window_total)"
		if kind == "snapshot" {
			msg = "snapshot dated after now + archiver.max_future: not kept (counted in mailpulse_archiver_out_of_window_total)"
		}
	}
	s.log.Warn(msg, "seq", seq, "created_at", at.Format(time.RFC3339Nano))
}

// write stores a batch. A time the store cannot hold is a permanent failure (never
// reached: the window keeps times near now), not one to retry for ever.
func (s *Service) write(ctx context.Context, recs []store.Record) error {
	err := s.st.Write(ctx, recs)
	if errors.Is(err, store.ErrUnrepresentable) {
		return bus.Permanent(err)
	}
	return err
}

func (s *Service) writeSnapshots(ctx context.Context, snaps []store.SnapshotRecord) error {
	err := s.st.WriteSnapshots(ctx, snaps)
	if errors.Is(err, store.ErrUnrepresentable) {
		return bus.Permanent(err)
	}
	return err
}

// subscribe starts answering history requests, in the archivers' queue group.
func (s *Service) subscribe(ctx context.Context) ([]*nats.Subscription, error) {
	qs, err := s.nc.QueueSubscribe(history.SubjectQuery, history.QueueGroup, func(m *nats.Msg) { s.answerQuery(ctx, m) })
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", history.SubjectQuery, err)
	}
	ss, err := s.nc.QueueSubscribe(history.SubjectSpan, history.QueueGroup, func(m *nats.Msg) { s.answerSpan(ctx, m) })
	if err != nil {
		_ = qs.Unsubscribe()
		return nil, fmt.Errorf("subscribe %s: %w", history.SubjectSpan, err)
	}
	sl, err := s.nc.QueueSubscribe(history.SubjectSpans, history.QueueGroup, func(m *nats.Msg) { s.answerSpans(ctx, m) })
	if err != nil {
		_ = qs.Unsubscribe()
		_ = ss.Unsubscribe()
		return nil, fmt.Errorf("subscribe %s: %w", history.SubjectSpans, err)
	}
	sm, err := s.nc.QueueSubscribe(history.SubjectMetrics, history.QueueGroup, func(m *nats.Msg) { s.answerMetrics(ctx, m) })
	if err != nil {
		for _, sub := range []*nats.Subscription{qs, ss, sl} {
			_ = sub.Unsubscribe()
		}
		return nil, fmt.Errorf("subscribe %s: %w", history.SubjectMetrics, err)
	}
	return []*nats.Subscription{qs, ss, sl, sm}, nil
}

func (s *Service) answerSpans(ctx context.Context, m *nats.Msg) {
	start := time.Now()
	var req history.SpansRequest
	var reply history.SpansReply
	if err := json.Unmarshal(m.Data, &req); err != nil {
		reply.Error = "request: " + err.Error()
	} else {
		if req.Limit <= 0 || req.Limit > history.MaxLimit {
			req.Limit = history.DefaultLimit
		}
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		// Clamped: the stores keep int64 nanoseconds, which a bound far out would wrap.
		spans, total, err := s.st.Spans(qctx, store.SpanQuery{From: store.Clamp(req.From), To: store.Clamp(req.To), Kind: req.Kind, QueueID: req.QueueID, Terms: req.Terms, Offset: req.Offset, Limit: req.Limit})
		cancel()
		if err != nil {
			reply.Error = err.Error()
		} else {
			reply = history.SpansReply{Spans: spans, Total: total}
		}
	}
	respond(m, reply)
	s.metrics.querySeconds.WithLabelValues("spans").Observe(time.Since(start).Seconds())
}

func (s *Service) answerQuery(ctx context.Context, m *nats.Msg) {
	start := time.Now()
	var q history.Query
	var reply history.QueryReply
	if err := json.Unmarshal(m.Data, &q); err != nil {
		reply = history.QueryReply{Error: "request: " + err.Error(), Code: 400}
	} else {
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		page, err := s.st.Query(qctx, q)
		cancel()
		switch {
		case errors.Is(err, store.ErrInvalid):
			reply = history.QueryReply{Error: err.Error(), Code: 400}
		case err != nil:
			reply = history.QueryReply{Error: err.Error(), Code: 503}
		default:
			reply = history.QueryReply{Page: &page}
		}
	}
	respond(m, reply)
	s.metrics.querySeconds.WithLabelValues("query").Observe(time.Since(start).Seconds())
}

func (s *Service) answerSpan(ctx context.Context, m *nats.Msg) {
	start := time.Now()
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	sp, evs, err := s.st.Span(qctx, string(m.Data))
	cancel()
	var reply history.SpanReply
	switch {
	case errors.Is(err, store.ErrNotFound):
		reply.Error, reply.Code = "not found", 404
	case err != nil:
		reply.Error = err.Error()
	default:
		reply = history.SpanReply{Span: &sp, Events: evs}
	}
	respond(m, reply)
	s.metrics.querySeconds.WithLabelValues("span").Observe(time.Since(start).Seconds())
}

// retention drops the partitions past the retention every hour, and those further ahead
// than anything the window files under (a day more than max_future, for clocks that
// differ): only a history written before the window existed has any.
func (s *Service) retention(ctx context.Context) error {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		n, err := s.st.DropBefore(ctx, s.now().Add(-s.cfg.Retention))
		if err != nil && ctx.Err() == nil {
			s.log.Warn("retention failed", "err", err)
		} else if n > 0 {
			s.log.Info("retention dropped old partitions", "partitions", n)
		}
		n, err = s.st.DropAfter(ctx, s.now().Add(s.cfg.MaxFuture+24*time.Hour))
		if err != nil && ctx.Err() == nil {
			s.log.Warn("retention of days ahead failed", "err", err)
		} else if n > 0 {
			s.log.Info("retention dropped partitions of days ahead", "partitions", n)
		}
		if m, err := s.st.DropSnapshotsBefore(ctx, s.now().Add(-s.cfg.MetricsRetention)); err != nil && ctx.Err() == nil {
			s.log.Warn("metric retention failed", "err", err)
		} else if m > 0 {
			s.log.Info("retention dropped old metric snapshots", "snapshots", m)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// archiverMetrics are the archiver's own; its consumers' (stored, skipped, dead letters,
// write errors, lag) are the common ones of bus.BatchConsumer, labelled consumer="archiver"
// and consumer="archiver-metrics".
type archiverMetrics struct {
	querySeconds *prometheus.HistogramVec
	outOfWindow  *prometheus.CounterVec
}

func newArchiverMetrics(reg prometheus.Registerer, s *Service) *archiverMetrics {
	m := &archiverMetrics{
		querySeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "mailpulse_archiver_query_seconds", Help: "Duration of history queries.", Buckets: []float64{.001, .0025, .005, .01, .02, .05, .1, .25, .5, 1, 2.5}}, []string{"kind"}),
		outOfWindow: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mailpulse_archiver_out_of_window_total",
			Help: "Events and snapshots dated out of the history's window, by kind and side: past (before the retention: not kept) or future (after archiver.max_future: events filed under their arrival time, snapshots not kept)."}, []string{"kind", "side"}),
	}
	for _, kind := range []string{"event", "snapshot"} {
		for _, side := range []string{sidePast, sideFuture} {
			m.outOfWindow.WithLabelValues(kind, side)
		}
	}
	reg.MustRegister(m.querySeconds, m.outOfWindow,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "mailpulse_archiver_store_bytes", Help: "Size of the history store on disk (-1: the store did not answer)."}, func() float64 {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			st, err := s.st.Stats(ctx)
			if err != nil {
				return -1
			}
			return float64(st.Bytes)
		}),
	)
	return m
}

// respond answers a history request. Events go out as they were stored: encoding/json would
// rewrite <, > and & in them (\u003c…), which changes the bytes of a message id such as
// <a@b>. An answer that cannot be encoded is answered with the error instead of silence.
func respond(m *nats.Msg, reply any) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(reply); err != nil {
		b.Reset()
		_ = json.NewEncoder(&b).Encode(map[string]any{"error": "encode the answer: " + err.Error(), "code": 500})
	}
	_ = m.Respond(bytes.TrimSuffix(b.Bytes(), []byte("\n")))
}
