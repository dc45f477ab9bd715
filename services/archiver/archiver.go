// Package archiver keeps the history: a durable consumer of the EVENTS log writes events in
// batched transactions to a store (SQLite by default), acknowledging them only once they are
// committed, and answers history queries over NATS request-reply, so any number of
// archivers and gateways can be deployed. The log stays the source of truth: the history
// can always be rebuilt by replaying it.
package archiver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/mailpulse/mailpulse/services/archiver/store"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/history"
)

// Config configures the archiver. Zero fields take the defaults in parentheses.
type Config struct {
	Consumer  string        // durable consumer name, shared by replicas ("archiver")
	BatchSize int           // events per transaction (1000)
	MaxWait   time.Duration // longest an event waits for its batch to fill (250 ms)
	// Keep decides what is stored: a minimum level and type patterns to include (none: all)
	// and exclude. Events not kept are acknowledged without being stored.
	MinLevel         event.Level
	Include          []string
	Exclude          []string
	Retention        time.Duration // events older than this are dropped, by whole days (30 days)
	MetricsRetention time.Duration // metric snapshots older than this are dropped (90 days)
	Grace            time.Duration // bound of a graceful stop (15 s)
}

func (c *Config) setDefaults() {
	if c.Consumer == "" {
		c.Consumer = "archiver"
	}
	if c.BatchSize == 0 {
		c.BatchSize = 1000
	}
	if c.MaxWait == 0 {
		c.MaxWait = 250 * time.Millisecond
	}
	if c.Retention == 0 {
		c.Retention = 30 * 24 * time.Hour
	}
	if c.MetricsRetention == 0 {
		c.MetricsRetention = 90 * 24 * time.Hour
	}
	if c.Grace == 0 {
		c.Grace = 15 * time.Second
	}
}

func (c *Config) keep(e *event.Event) bool {
	if e.Level < c.MinLevel {
		return false
	}
	for _, p := range c.Exclude {
		if history.MatchType(p, e.Type) {
			return false
		}
	}
	if len(c.Include) == 0 {
		return true
	}
	for _, p := range c.Include {
		if history.MatchType(p, e.Type) {
			return true
		}
	}
	return false
}

// Deps are what the archiver uses but does not own.
type Deps struct {
	Conn     *nats.Conn
	Store    store.Store // the caller closes it after Run returns
	Log      *slog.Logger
	Registry *prometheus.Registry
}

// Service is a running archiver.
type Service struct {
	cfg     Config
	nc      *nats.Conn
	js      jetstream.JetStream
	st      store.Store
	log     *slog.Logger
	metrics *archiverMetrics
}

// New prepares an archiver.
func New(cfg Config, deps Deps) (*Service, error) {
	cfg.setDefaults()
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
	s := &Service{cfg: cfg, nc: deps.Conn, js: js, st: deps.Store, log: deps.Log}
	s.metrics = newArchiverMetrics(deps.Registry, s)
	return s, nil
}

// Run archives and answers queries until ctx ends; the batch in hand is written (or left
// unacknowledged) before it returns.
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
	g.Go(func() error { return s.consume(gctx) })
	g.Go(func() error { return s.consumeMetrics(gctx) })
	g.Go(func() error { return s.retention(gctx) })
	err = g.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

func (s *Service) consumer(ctx context.Context) (jetstream.Consumer, error) {
	return s.js.CreateOrUpdateConsumer(ctx, bus.StreamEvents, jetstream.ConsumerConfig{
		Durable:       s.cfg.Consumer,
		Description:   "the archiver: every event into the history store",
		FilterSubject: bus.SubjectEvents,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       time.Minute,
		MaxAckPending: 4 * s.cfg.BatchSize,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
}

// consume reads the log in batches and stores them, until ctx ends. A batch that cannot be
// stored is not acknowledged: it is delivered again after a back-off, so nothing is lost
// while the store is unavailable, and nothing is stored twice (the sequence is the key).
func (s *Service) consume(ctx context.Context) error {
	wait := 200 * time.Millisecond
	for ctx.Err() == nil {
		cons, err := s.consumer(ctx)
		if err != nil {
			s.log.Warn("archiver consumer unavailable; retrying", "err", err, "retry_in", wait)
			if !sleep(ctx, wait) {
				return nil
			}
			wait = min(wait*2, 10*time.Second)
			continue
		}
		wait = 200 * time.Millisecond
		if err := s.loop(ctx, cons); err != nil && ctx.Err() == nil {
			s.log.Warn("archiver consumer stopped; restarting", "err", err)
			sleep(ctx, wait)
		}
	}
	return nil
}

// batch is a fetched batch, decoded: what to store, and every message to acknowledge
// once it is stored.
type batch struct {
	msgs    []jetstream.Msg
	recs    []store.Record
	skipped int
	dead    int
}

// loop fetches and decodes the next batch while the current one is written: the two stages
// overlap on two cores. A batch is acknowledged only after its commit.
func (s *Service) loop(ctx context.Context, cons jetstream.Consumer) error {
	ch := make(chan batch, 1)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer close(ch)
		for gctx.Err() == nil {
			fetched, err := cons.Fetch(s.cfg.BatchSize, jetstream.FetchMaxWait(s.cfg.MaxWait))
			if err != nil {
				if errors.Is(err, jetstream.ErrNoMessages) || errors.Is(err, context.DeadlineExceeded) {
					continue
				}
				return err
			}
			var msgs []jetstream.Msg
			for m := range fetched.Messages() {
				msgs = append(msgs, m)
			}
			if len(msgs) == 0 {
				continue
			}
			b, err := s.decode(gctx, msgs)
			if err != nil {
				for _, m := range msgs {
					_ = m.NakWithDelay(time.Second)
				}
				return err
			}
			select {
			case ch <- b:
			case <-gctx.Done():
				// Stopping: hand the batch back at once rather than after the ack wait.
				for _, m := range msgs {
					_ = m.Nak()
				}
				return nil
			}
		}
		return nil
	})
	g.Go(func() error {
		backoff := 500 * time.Millisecond
		for b := range ch {
			if err := s.commit(gctx, b); err != nil {
				s.metrics.storeErrors.Inc()
				s.log.Warn("batch not stored; it will be delivered again", "events", len(b.msgs), "err", err, "retry_in", backoff)
				for _, m := range b.msgs {
					_ = m.NakWithDelay(backoff)
				}
				backoff = min(backoff*2, 30*time.Second)
				sleep(gctx, backoff/2)
				continue
			}
			backoff = 500 * time.Millisecond
		}
		return nil
	})
	return g.Wait()
}

// decode turns fetched messages into records. Undecodable messages go to the dead-letter
// stream with the reason; events the keep filters reject are only acknowledged.
func (s *Service) decode(ctx context.Context, msgs []jetstream.Msg) (batch, error) {
	b := batch{msgs: msgs, recs: make([]store.Record, 0, len(msgs))}
	for _, m := range msgs {
		meta, err := m.Metadata()
		if err != nil {
			b.dead++
			continue
		}
		e, err := event.Decode(m.Data())
		if err != nil {
			if derr := s.deadLetter(ctx, m, meta.Sequence.Stream, err); derr != nil {
				return batch{}, fmt.Errorf("dead-letter: %w", derr)
			}
			b.dead++
			continue
		}
		if !s.cfg.keep(&e) {
			b.skipped++
			continue
		}
		b.recs = append(b.recs, store.Record{Seq: meta.Sequence.Stream, Event: e})
	}
	return b, nil
}

// commit writes a batch in one transaction, then acknowledges all its messages.
func (s *Service) commit(ctx context.Context, b batch) error {
	start := time.Now()
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := s.st.Write(wctx, b.recs); err != nil {
		return err
	}
	s.metrics.writeSeconds.Observe(time.Since(start).Seconds())
	s.metrics.stored.Add(float64(len(b.recs)))
	s.metrics.skipped.Add(float64(b.skipped))
	s.metrics.dead.Add(float64(b.dead))
	for _, m := range b.msgs {
		_ = m.Ack()
	}
	return nil
}

func (s *Service) deadLetter(ctx context.Context, m jetstream.Msg, seq uint64, reason error) error {
	_, subj := bus.DeadLetterStream("archiver")
	dl := &nats.Msg{
		Subject: subj[:len(subj)-1] + "undecodable",
		Data:    m.Data(),
		Header:  nats.Header{},
	}
	dl.Header.Set("Mailpulse-Reason", reason.Error())
	dl.Header.Set("Mailpulse-Subject", m.Subject())
	dl.Header.Set("Mailpulse-Sequence", strconv.FormatUint(seq, 10))
	dl.Header.Set(jetstream.MsgIDHeader, "archiver-"+strconv.FormatUint(seq, 10))
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := s.js.PublishMsg(pctx, dl)
	if err == nil {
		s.log.Warn("undecodable event sent to the dead-letter stream", "seq", seq, "subject", m.Subject(), "err", reason)
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
		spans, total, err := s.st.Spans(qctx, store.SpanQuery{From: req.From, To: req.To, Kind: req.Kind, QueueID: req.QueueID, Terms: req.Terms, Offset: req.Offset, Limit: req.Limit})
		cancel()
		if err != nil {
			reply.Error = err.Error()
		} else {
			reply = history.SpansReply{Spans: spans, Total: total}
		}
	}
	b, _ := json.Marshal(reply)
	_ = m.Respond(b)
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
	b, _ := json.Marshal(reply)
	_ = m.Respond(b)
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
		reply.Error = "not found"
	case err != nil:
		reply.Error = err.Error()
	default:
		reply = history.SpanReply{Span: &sp, Events: evs}
	}
	b, _ := json.Marshal(reply)
	_ = m.Respond(b)
	s.metrics.querySeconds.WithLabelValues("span").Observe(time.Since(start).Seconds())
}

// retention drops the partitions past the retention every hour.
func (s *Service) retention(ctx context.Context) error {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		n, err := s.st.DropBefore(ctx, time.Now().Add(-s.cfg.Retention))
		if err != nil && ctx.Err() == nil {
			s.log.Warn("retention failed", "err", err)
		} else if n > 0 {
			s.log.Info("retention dropped old partitions", "partitions", n)
		}
		if m, err := s.st.DropSnapshotsBefore(ctx, time.Now().Add(-s.cfg.MetricsRetention)); err != nil && ctx.Err() == nil {
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

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

type archiverMetrics struct {
	stored, skipped, dead, storeErrors prometheus.Counter
	writeSeconds                       prometheus.Histogram
	querySeconds                       *prometheus.HistogramVec
}

func newArchiverMetrics(reg *prometheus.Registry, s *Service) *archiverMetrics {
	m := &archiverMetrics{
		stored:       prometheus.NewCounter(prometheus.CounterOpts{Name: "mailpulse_archiver_events_stored_total", Help: "Events written to the history store."}),
		skipped:      prometheus.NewCounter(prometheus.CounterOpts{Name: "mailpulse_archiver_events_skipped_total", Help: "Events not kept (level or type filters)."}),
		dead:         prometheus.NewCounter(prometheus.CounterOpts{Name: "mailpulse_archiver_dead_letters_total", Help: "Undecodable messages sent to the dead-letter stream."}),
		storeErrors:  prometheus.NewCounter(prometheus.CounterOpts{Name: "mailpulse_archiver_store_errors_total", Help: "Batches the store refused (they are delivered again)."}),
		writeSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "mailpulse_archiver_write_seconds", Help: "Duration of one batch transaction."}),
		querySeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "mailpulse_archiver_query_seconds", Help: "Duration of history queries.", Buckets: []float64{.001, .0025, .005, .01, .02, .05, .1, .25, .5, 1, 2.5}}, []string{"kind"}),
	}
	reg.MustRegister(m.stored, m.skipped, m.dead, m.storeErrors, m.writeSeconds, m.querySeconds,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "mailpulse_archiver_store_bytes", Help: "Size of the history store on disk."}, func() float64 {
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
