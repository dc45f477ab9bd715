package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/cenkalti/backoff/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// Metadata keys a Router's messages carry, besides the JetStream headers.
const (
	MetaSubject   = "mp_subject"   // the subject in the log (events.auth.failed)
	MetaSequence  = "mp_seq"       // the stream sequence
	MetaDelivered = "mp_delivered" // deliveries so far, this one included
	MetaTime      = "mp_time"      // when the log stored it, RFC 3339
)

// RouterConfig configures a Watermill router on JetStream. Zero fields take the defaults in
// parentheses.
type RouterConfig struct {
	// Service names the dead-letter stream (DLQ_<SERVICE>) where poisoned messages go.
	Service string
	// Dial opens a NATS connection. Each handler gets its own, so a slow handler's flow
	// control never holds up another's.
	Dial func() (*nats.Conn, error)

	// In-process retries of a failing handler before the message is handed back to
	// JetStream (3; -1: none), paced from RetryInitial (100 ms) to RetryMax (2 s).
	Retries                int
	RetryInitial, RetryMax time.Duration
	// Redelivery by JetStream after the in-process retries: NakWithDelay growing from
	// NakInitial (1 s) to NakMax (5 min) with the number of deliveries.
	NakInitial, NakMax time.Duration
	// MaxDeliveries turns a message that failed this many deliveries into a dead letter
	// (0: never; a handler whose peer may be down for days keeps its messages in the log).
	MaxDeliveries uint64
	AckWait       time.Duration // (1 min)
	MaxAckPending int           // (1000)
	CloseTimeout  time.Duration // bound of a stop (15 s)

	Log      *slog.Logger
	Registry prometheus.Registerer
}

func (c *RouterConfig) setDefaults() {
	if c.Retries == 0 {
		c.Retries = 3
	}
	if c.RetryInitial <= 0 {
		c.RetryInitial = 100 * time.Millisecond
	}
	if c.RetryMax <= 0 {
		c.RetryMax = 2 * time.Second
	}
	if c.NakInitial <= 0 {
		c.NakInitial = time.Second
	}
	if c.NakMax <= 0 {
		c.NakMax = 5 * time.Minute
	}
	if c.AckWait <= 0 {
		c.AckWait = time.Minute
	}
	if c.MaxAckPending <= 0 {
		c.MaxAckPending = 1000
	}
	if c.CloseTimeout <= 0 {
		c.CloseTimeout = 15 * time.Second
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Registry == nil {
		c.Registry = prometheus.NewRegistry()
	}
}

// Router is a Watermill router whose handlers each read a durable JetStream consumer, for
// services that handle one message at a time (the webhooker, the alerter). It is built for
// speed and for losing nothing: acknowledgements are asynchronous (AckAsync; a DoubleAck per
// message is 12× slower), consumers are durable with valid names, logs go to slog, and the
// middleware runs poison queue ⊃ retry ⊃ recoverer ⊃ handler, so a panic is an error that is
// retried, and what cannot be processed ends in the service's dead-letter stream with its
// reason instead of in silence.
type Router struct {
	*message.Router
	cfg     RouterConfig
	js      jetstream.JetStream
	conns   []*nats.Conn
	metrics *routerMetrics
}

// NewRouter returns a router; add handlers with Handle, then Run it.
func NewRouter(cfg RouterConfig) (*Router, error) {
	cfg.setDefaults()
	if cfg.Service == "" || cfg.Dial == nil {
		return nil, errors.New("bus: a router needs Service and Dial")
	}
	logger := slogAdapter{cfg.Log}
	wr, err := message.NewRouter(message.RouterConfig{CloseTimeout: cfg.CloseTimeout}, logger)
	if err != nil {
		return nil, err
	}
	nc, err := cfg.Dial()
	if err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	r := &Router{Router: wr, cfg: cfg, js: js, conns: []*nats.Conn{nc}}
	if r.metrics, err = newRouterMetrics(cfg.Registry); err != nil {
		nc.Close()
		return nil, err
	}
	poison, err := middleware.PoisonQueueWithFilter(deadLetterPublisher{js: js, service: cfg.Service}, "dead-letters",
		func(err error) bool { return errors.Is(err, ErrPermanent) })
	if err != nil {
		nc.Close()
		return nil, err
	}
	retry := middleware.Retry{
		MaxRetries: max(cfg.Retries, 0), InitialInterval: cfg.RetryInitial, MaxInterval: cfg.RetryMax,
		Multiplier: 2, RandomizationFactor: 0.5,
		ShouldRetry: func(p middleware.RetryParams) bool { return !errors.Is(p.Err, ErrPermanent) },
	}
	// The first added is the outermost.
	wr.AddMiddleware(r.metrics.middleware, poison, r.exhausted, retry.Middleware, middleware.Recoverer)
	return r, nil
}

// Handle adds a handler reading the durable consumer durable of stream, filtered by
// subjects. Replicas that add the same durable share its messages. The handler returns nil
// to acknowledge, an error wrapping ErrPermanent to dead-letter at once, any other error
// to retry (in process, then by redelivery).
func (r *Router) Handle(name, stream, durable string, subjects []string, h message.NoPublishHandlerFunc) error {
	nc, err := r.cfg.Dial()
	if err != nil {
		return fmt.Errorf("router handler %s: %w", name, err)
	}
	r.conns = append(r.conns, nc)
	ccfg := jetstream.ConsumerConfig{
		Durable: durable, Description: "mailpulse " + r.cfg.Service + ": " + name, FilterSubjects: subjects,
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: r.cfg.AckWait, MaxAckPending: r.cfg.MaxAckPending,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	sub := newSubscriber(func(ctx context.Context) (jetstream.Consumer, error) {
		return EnsureConsumer(ctx, js, stream, ccfg)
	}, r.cfg.AckWait, nakDelay{initial: r.cfg.NakInitial, max: r.cfg.NakMax}, min(r.cfg.MaxAckPending, 500), r.metrics.ackErrors.Inc)
	r.AddConsumerHandler(name, durable, sub, h)
	return nil
}

// Run runs the handlers until ctx ends, then stops them within CloseTimeout and closes the
// router's connections.
func (r *Router) Run(ctx context.Context) error {
	defer func() {
		for _, nc := range r.conns {
			nc.Close()
		}
	}()
	err := r.Router.Run(ctx)
	if cerr := r.Router.Close(); err == nil {
		err = cerr
	}
	return err
}

// exhausted turns a failure into a dead letter once the message has had MaxDeliveries.
func (r *Router) exhausted(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		out, err := h(msg)
		if err != nil && r.cfg.MaxDeliveries > 0 && !errors.Is(err, ErrPermanent) {
			if n, _ := strconv.ParseUint(msg.Metadata.Get(MetaDelivered), 10, 64); n >= r.cfg.MaxDeliveries {
				return out, Permanent(fmt.Errorf("failed %d deliveries, the last with: %w", n, err))
			}
		}
		return out, err
	}
}

// unmarshaler makes a Watermill message of a JetStream message: the payload as it is, the
// event id (Nats-Msg-Id) as UUID, and where it stands in the log as metadata.
type unmarshaler struct{}

func (unmarshaler) Unmarshal(m jetstream.Msg) (*message.Message, error) {
	id := m.Headers().Get(jetstream.MsgIDHeader)
	md := message.Metadata{MetaSubject: m.Subject()}
	if meta, err := m.Metadata(); err == nil {
		md[MetaSequence] = strconv.FormatUint(meta.Sequence.Stream, 10)
		md[MetaDelivered] = strconv.FormatUint(meta.NumDelivered, 10)
		md[MetaTime] = meta.Timestamp.UTC().Format(time.RFC3339Nano)
		if id == "" {
			id = md[MetaSequence]
		}
	}
	wm := message.NewMessage(id, m.Data())
	wm.Metadata = md
	return wm, nil
}

// nakDelay paces redeliveries: exponential with jitter in the number of deliveries.
type nakDelay struct{ initial, max time.Duration }

func (d nakDelay) WaitTime(delivered uint64) time.Duration {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval = d.initial, d.max
	var wait time.Duration
	for i := uint64(0); i < min(delivered, 32); i++ {
		wait = b.NextBackOff()
	}
	return wait
}

// deadLetterPublisher is the poison queue's publisher: the service's dead-letter stream,
// with the reason and the message's place in the log as headers.
type deadLetterPublisher struct {
	js      jetstream.JetStream
	service string
}

func (p deadLetterPublisher) Publish(_ string, msgs ...*message.Message) error {
	for _, m := range msgs {
		seq, _ := strconv.ParseUint(m.Metadata.Get(MetaSequence), 10, 64)
		consumer := m.Metadata.Get(middleware.PoisonedTopicKey) // the topic is the durable's name
		if consumer == "" {
			consumer = p.service
		}
		reason := errors.New(m.Metadata.Get(middleware.ReasonForPoisonedKey))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := DeadLetter(ctx, p.js, p.service, consumer, m.Metadata.Get(MetaSubject), seq, m.Payload, reason)
		cancel()
		if err != nil {
			return err
		}
	}
	return nil
}

func (deadLetterPublisher) Close() error { return nil }

// slogAdapter logs Watermill through slog. Watermill's Info is per message ("got msg"),
// so it goes to debug; its errors stay errors.
type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) attrs(fields watermill.LogFields) []any {
	out := make([]any, 0, 2*len(fields))
	for k, v := range fields {
		out = append(out, k, v)
	}
	return out
}

func (a slogAdapter) Error(msg string, err error, fields watermill.LogFields) {
	a.l.Error(msg, append(a.attrs(fields), "err", err)...)
}
func (a slogAdapter) Info(msg string, fields watermill.LogFields) {
	if a.l.Enabled(context.Background(), slog.LevelDebug) {
		a.l.Debug(msg, a.attrs(fields)...)
	}
}
func (a slogAdapter) Debug(msg string, fields watermill.LogFields) {
	if a.l.Enabled(context.Background(), slog.LevelDebug) {
		a.l.Debug(msg, a.attrs(fields)...)
	}
}
func (a slogAdapter) Trace(string, watermill.LogFields) {}
func (a slogAdapter) With(fields watermill.LogFields) watermill.LoggerAdapter {
	return slogAdapter{a.l.With(a.attrs(fields)...)}
}

// routerMetrics count what every handler did with its messages.
type routerMetrics struct {
	handled   *prometheus.CounterVec
	seconds   *prometheus.HistogramVec
	ackErrors prometheus.Counter
}

func newRouterMetrics(reg prometheus.Registerer) (*routerMetrics, error) {
	m := &routerMetrics{
		handled:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mailpulse_handler_messages_total", Help: "Messages a handler finished, by outcome: ok, retry (handed back to the log) or dead-letter."}, []string{"handler", "outcome"}),
		seconds:   prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "mailpulse_handler_seconds", Help: "Time a handler spent on a message, retries included.", Buckets: prometheus.ExponentialBuckets(0.0005, 3, 12)}, []string{"handler"}),
		ackErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "mailpulse_handler_ack_errors_total", Help: "Acknowledgements (ack or nak) that could not be sent; the message is delivered again after the ack wait."}),
	}
	for _, c := range []prometheus.Collector{m.handled, m.seconds, m.ackErrors} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("router metrics: %w", err)
		}
	}
	return m, nil
}

func (m *routerMetrics) middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		start := time.Now()
		out, err := h(msg)
		name := message.HandlerNameFromCtx(msg.Context())
		m.seconds.WithLabelValues(name).Observe(time.Since(start).Seconds())
		outcome := "ok"
		if err != nil {
			outcome = "retry"
		} else if msg.Metadata.Get(middleware.ReasonForPoisonedKey) != "" {
			outcome = "dead-letter"
		}
		m.handled.WithLabelValues(name, outcome).Inc()
		return out, err
	}
}
