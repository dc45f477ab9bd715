package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
)

// Errors a consumer's handler returns to say what should become of a message or a batch.
// They are matched with errors.Is, so a handler wraps them with the reason.
var (
	// ErrRetry: the side effect failed for now (a store or peer is down); the messages are
	// delivered again after a back-off. An error that wraps neither sentinel counts as this.
	ErrRetry = errors.New("retry later")
	// ErrPermanent: the message can never be processed (undecodable, invalid); it goes to
	// the service's dead-letter stream with the reason, and is acknowledged.
	ErrPermanent = errors.New("cannot be processed")
)

// Permanent marks err as a permanent failure: errors.Is(err, ErrPermanent) holds, and the
// message says why.
func Permanent(err error) error {
	if err == nil || errors.Is(err, ErrPermanent) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrPermanent, err)
}

// Delivery is one message of a batch, as a BatchConsumer hands it to its decoder.
type Delivery struct {
	Seq       uint64 // stream sequence: a natural idempotency key
	Subject   string
	Data      []byte
	Time      time.Time // when the log stored it
	Delivered uint64    // how many times it was delivered, this one included
}

// BatchConsumerConfig configures a BatchConsumer. Zero fields take the defaults in
// parentheses.
type BatchConsumerConfig struct {
	Stream      string
	Durable     string // shared by the replicas of the service
	Description string
	Subjects    []string
	// Service names the dead-letter stream (DLQ_<SERVICE>).
	Service string

	BatchSize     int           // messages per batch (1000)
	MaxWait       time.Duration // longest a message waits for its batch to fill (250 ms)
	AckWait       time.Duration // redelivery of an unacknowledged message (1 min)
	MaxAckPending int           // messages in flight (4 × BatchSize)
	// WriteTimeout bounds one call of the writer (30 s). On stop the writer gets at most
	// Grace (15 s), after which its batch is abandoned and handed back.
	WriteTimeout time.Duration
	Grace        time.Duration
	// Backoff paces deliveries again after a failed write: exponential with jitter from
	// RetryInitial (500 ms) to RetryMax (30 s).
	RetryInitial, RetryMax time.Duration

	Log      *slog.Logger
	Registry prometheus.Registerer // the consumer's metrics, labelled consumer="<Durable>"
}

func (c *BatchConsumerConfig) setDefaults() {
	if c.BatchSize <= 0 {
		c.BatchSize = 1000
	}
	if c.MaxWait <= 0 {
		c.MaxWait = 250 * time.Millisecond
	}
	if c.AckWait <= 0 {
		c.AckWait = time.Minute
	}
	if c.MaxAckPending <= 0 {
		c.MaxAckPending = 4 * c.BatchSize
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 30 * time.Second
	}
	if c.Grace <= 0 {
		c.Grace = 15 * time.Second
	}
	if c.RetryInitial <= 0 {
		c.RetryInitial = 500 * time.Millisecond
	}
	if c.RetryMax <= 0 {
		c.RetryMax = 30 * time.Second
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Registry == nil {
		c.Registry = prometheus.NewRegistry()
	}
}

// BatchHandler is what a BatchConsumer does with messages.
//
// Decode runs once per message as batches arrive, while the previous batch is written: it
// returns the item to write, keep=false for a message to acknowledge without writing, or
// an error. Every decode error is permanent: the message goes to the dead letters.
//
// Write runs once per batch with the kept items in log order, and must be idempotent (a
// batch can be delivered again after a crash). nil acknowledges every message of the
// batch; an error wrapping ErrPermanent dead-letters them all; any other error hands the
// batch back to be delivered again after a back-off. ctx ends when the write takes too
// long or the consumer is stopped past its grace.
type BatchHandler[T any] struct {
	Decode func(Delivery) (item T, keep bool, err error)
	Write  func(ctx context.Context, items []T) error
}

// BatchConsumer is a durable pull consumer that reads in batches, decodes a batch while the
// one before it is written, and acknowledges a message only after its side effect. Replicas
// with the same Durable share the work.
type BatchConsumer[T any] struct {
	js  jetstream.JetStream
	cfg BatchConsumerConfig
	h   BatchHandler[T]
	m   *consumerMetrics
	bo  *backoff.ExponentialBackOff // paces redeliveries; used by the writer goroutine only
}

// NewBatchConsumer prepares a consumer; Run starts it.
func NewBatchConsumer[T any](js jetstream.JetStream, cfg BatchConsumerConfig, h BatchHandler[T]) (*BatchConsumer[T], error) {
	cfg.setDefaults()
	if cfg.Stream == "" || cfg.Durable == "" || cfg.Service == "" || h.Decode == nil || h.Write == nil {
		return nil, errors.New("bus: a batch consumer needs Stream, Durable, Service, Decode and Write")
	}
	m, err := newConsumerMetrics(cfg.Registry, cfg.Durable)
	if err != nil {
		return nil, err
	}
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval = cfg.RetryInitial, cfg.RetryMax
	return &BatchConsumer[T]{js: js, cfg: cfg, h: h, m: m, bo: bo}, nil
}

// Run consumes until ctx ends. A batch being written is finished (within Grace) and
// acknowledged; batches fetched but not written are handed back at once, so another
// replica or the next start takes them without waiting for the ack wait. Run returns nil
// after a stop; it retries NATS failures for as long as ctx lasts.
func (c *BatchConsumer[T]) Run(ctx context.Context) error {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval = 200*time.Millisecond, 10*time.Second
	for ctx.Err() == nil {
		cons, err := EnsureConsumer(ctx, c.js, c.cfg.Stream, jetstream.ConsumerConfig{
			Durable:        c.cfg.Durable,
			Description:    c.cfg.Description,
			FilterSubjects: c.cfg.Subjects,
			AckPolicy:      jetstream.AckExplicitPolicy,
			AckWait:        c.cfg.AckWait,
			MaxAckPending:  c.cfg.MaxAckPending,
			DeliverPolicy:  jetstream.DeliverAllPolicy,
		})
		if err == nil {
			bo.Reset()
			err = c.loop(ctx, cons)
		}
		if ctx.Err() != nil {
			break
		}
		c.m.restarts.Inc()
		wait := bo.NextBackOff()
		c.cfg.Log.Warn("consumer stopped; restarting", "consumer", c.cfg.Durable, "err", err, "retry_in", wait)
		sleep(ctx, wait)
	}
	return nil
}

// EnsureConsumer creates a durable consumer, or updates an existing one without moving its
// start: JetStream refuses to change a deliver policy, and the existing start point (set by
// a rebuild, say) is the one to keep.
func EnsureConsumer(ctx context.Context, js jetstream.JetStream, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if cons, err := js.Consumer(cctx, stream, cfg.Durable); err == nil {
		old := cons.CachedInfo().Config
		cfg.DeliverPolicy, cfg.OptStartSeq, cfg.OptStartTime = old.DeliverPolicy, old.OptStartSeq, old.OptStartTime
	} else if !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, fmt.Errorf("consumer %s: %w: %w", cfg.Durable, ErrUnavailable, err)
	}
	cons, err := js.CreateOrUpdateConsumer(cctx, stream, cfg)
	if err != nil {
		return nil, fmt.Errorf("consumer %s: %w", cfg.Durable, err)
	}
	return cons, nil
}

// batch is a fetched batch, decoded: the items to write, and every message it holds.
type batch[T any] struct {
	msgs  []jetstream.Msg
	items []T
	dead  int
}

// loop fetches and decodes the next batch while the current one is written: the two stages
// overlap on two cores.
func (c *BatchConsumer[T]) loop(ctx context.Context, cons jetstream.Consumer) error {
	ch := make(chan batch[T], 1)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer close(ch)
		for gctx.Err() == nil {
			fetched, err := cons.Fetch(c.cfg.BatchSize, jetstream.FetchMaxWait(c.cfg.MaxWait))
			if err != nil {
				return fmt.Errorf("fetch: %w", err)
			}
			var msgs []jetstream.Msg
			for m := range fetched.Messages() {
				msgs = append(msgs, m)
			}
			if err := fetched.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, jetstream.ErrNoMessages) {
				c.nakAll(msgs, 0)
				return fmt.Errorf("fetch: %w", err)
			}
			if len(msgs) == 0 {
				continue
			}
			b, err := c.decode(gctx, msgs)
			if err != nil {
				c.nakAll(msgs, c.cfg.RetryInitial)
				return err
			}
			select {
			case ch <- b:
			case <-gctx.Done():
				c.nakAll(msgs, 0) // stopping: hand the batch back now, not after the ack wait
				return nil
			}
		}
		return nil
	})
	g.Go(func() error {
		for b := range ch {
			if gctx.Err() != nil {
				c.nakAll(b.msgs, 0) // stopping, or the fetcher failed: hand it back now
				continue
			}
			c.write(ctx, b)
		}
		return nil
	})
	return g.Wait()
}

// decode decodes a batch. Permanent failures are dead-lettered here (an error means the
// dead-letter stream itself failed, and the batch is handed back).
func (c *BatchConsumer[T]) decode(ctx context.Context, msgs []jetstream.Msg) (batch[T], error) {
	b := batch[T]{msgs: msgs, items: make([]T, 0, len(msgs))}
	for _, m := range msgs {
		meta, err := m.Metadata()
		if err != nil {
			// Without metadata there is no sequence to key the write on: it cannot be
			// stored idempotently. It is kept, with the reason, among the dead letters.
			if err := c.deadLetter(ctx, m, 0, fmt.Errorf("message metadata: %w", err)); err != nil {
				return batch[T]{}, err
			}
			b.dead++
			continue
		}
		c.m.pending.Set(float64(meta.NumPending))
		item, keep, err := c.h.Decode(Delivery{Seq: meta.Sequence.Stream, Subject: m.Subject(), Data: m.Data(), Time: meta.Timestamp, Delivered: meta.NumDelivered})
		if err != nil {
			if err := c.deadLetter(ctx, m, meta.Sequence.Stream, err); err != nil {
				return batch[T]{}, err
			}
			b.dead++
			continue
		}
		if keep {
			b.items = append(b.items, item)
		} else {
			c.m.skipped.Inc()
		}
	}
	return b, nil
}

// write runs the writer and settles every message of the batch: ack after success, dead
// letters after a permanent failure, and otherwise a delayed redelivery.
func (c *BatchConsumer[T]) write(ctx context.Context, b batch[T]) {
	start := time.Now()
	var err error
	if len(b.items) > 0 {
		// The write is not cut short by the stop itself, only bounded: by WriteTimeout,
		// and once ctx ends by Grace, so a stop finishes within its grace period.
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.WriteTimeout)
		stop := context.AfterFunc(ctx, func() {
			t := time.AfterFunc(c.cfg.Grace, cancel)
			<-wctx.Done()
			t.Stop()
		})
		err = c.h.Write(wctx, b.items)
		stop()
		cancel()
	}
	switch {
	case err == nil:
		c.bo.Reset()
		c.m.batchSeconds.Observe(time.Since(start).Seconds())
		c.m.processed.Add(float64(len(b.items)))
		c.m.dead.Add(float64(b.dead))
		c.ackAll(b.msgs)
	case errors.Is(err, ErrPermanent):
		for _, m := range b.msgs {
			meta, merr := m.Metadata()
			var seq uint64
			if merr == nil {
				seq = meta.Sequence.Stream
			}
			if derr := c.deadLetter(ctx, m, seq, err); derr != nil {
				c.nak(m, c.cfg.RetryInitial)
				continue
			}
			c.m.dead.Inc()
			c.ack(m)
		}
	default:
		wait := c.bo.NextBackOff()
		c.m.writeErrors.Inc()
		c.cfg.Log.Warn("batch not written; it will be delivered again", "consumer", c.cfg.Durable, "messages", len(b.msgs), "err", err, "retry_in", wait)
		c.nakAll(b.msgs, wait)
		sleep(ctx, wait/2) // do not fetch again at once from a store that just failed
	}
}

func (c *BatchConsumer[T]) deadLetter(ctx context.Context, m jetstream.Msg, seq uint64, reason error) error {
	if err := DeadLetter(ctx, c.js, c.cfg.Service, c.cfg.Durable, m.Subject(), seq, m.Data(), reason); err != nil {
		return fmt.Errorf("dead-letter: %w", err)
	}
	c.cfg.Log.Warn("message sent to the dead letters", "consumer", c.cfg.Durable, "seq", seq, "subject", m.Subject(), "reason", reason)
	return nil
}

func (c *BatchConsumer[T]) ack(m jetstream.Msg) {
	if err := m.Ack(); err != nil {
		c.m.ackErrors.Inc()
	}
}

func (c *BatchConsumer[T]) ackAll(msgs []jetstream.Msg) {
	for _, m := range msgs {
		c.ack(m)
	}
}

func (c *BatchConsumer[T]) nak(m jetstream.Msg, delay time.Duration) {
	var err error
	if delay > 0 {
		err = m.NakWithDelay(delay)
	} else {
		err = m.Nak()
	}
	if err != nil {
		c.m.ackErrors.Inc()
	}
}

func (c *BatchConsumer[T]) nakAll(msgs []jetstream.Msg, delay time.Duration) {
	if len(msgs) > 0 {
		c.m.retried.Add(float64(len(msgs)))
	}
	for _, m := range msgs {
		c.nak(m, delay)
	}
}

// Headers of a dead letter.
const (
	HeaderReason   = "Mailpulse-Reason"
	HeaderSubject  = "Mailpulse-Subject"
	HeaderSequence = "Mailpulse-Sequence"
	HeaderConsumer = "Mailpulse-Consumer"
)

// DeadLetter keeps a message a service could not process in its dead-letter stream, with
// the reason, its subject and sequence. With a sequence it is stored once however often it
// is sent.
func DeadLetter(ctx context.Context, js jetstream.JetStream, service, consumer, subject string, seq uint64, data []byte, reason error) error {
	_, subj := DeadLetterStream(service)
	dl := &nats.Msg{Subject: subj[:len(subj)-1] + consumer, Data: data, Header: nats.Header{}}
	dl.Header.Set(HeaderReason, reason.Error())
	dl.Header.Set(HeaderSubject, subject)
	dl.Header.Set(HeaderConsumer, consumer)
	if seq > 0 {
		dl.Header.Set(HeaderSequence, strconv.FormatUint(seq, 10))
		dl.Header.Set(jetstream.MsgIDHeader, consumer+"-"+strconv.FormatUint(seq, 10))
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := js.PublishMsg(pctx, dl)
	return err
}

// consumerMetrics are the same for every consumer, told apart by the consumer label.
type consumerMetrics struct {
	processed, skipped, dead, retried, ackErrors, writeErrors, restarts prometheus.Counter
	pending                                                             prometheus.Gauge
	batchSeconds                                                        prometheus.Histogram
}

func newConsumerMetrics(reg prometheus.Registerer, consumer string) (*consumerMetrics, error) {
	r := prometheus.WrapRegistererWith(prometheus.Labels{"consumer": consumer}, reg)
	m := &consumerMetrics{
		processed:    prometheus.NewCounter(prometheus.CounterOpts{Name: "mailpulse_consumer_processed_total", Help: "Messages whose side effect is done and acknowledged."}),
		skipped:      prometheus.NewCounter(prometheus.CounterOpts{Name: "mailpulse_consumer_skipped_total", Help: "Messages acknowledged without a side effect (filtered out)."}),
		dead:         prometheus.NewCounter(prometheus.CounterOpts{Name: "mailpulse_consumer_dead_letters_total", Help: "Messages sent to the dead-letter stream."}),
		retried:      prometheus.NewCounter(prometheus.CounterOpts{Name: "mailpulse_consumer_redeliveries_total", Help: "Messages handed back to be delivered again."}),
		ackErrors:    prometheus.NewCounter(prometheus.CounterOpts{Name: "mailpulse_consumer_ack_errors_total", Help: "Acknowledgements (ack or nak) that could not be sent; the message is delivered again after the ack wait."}),
		writeErrors:  prometheus.NewCounter(prometheus.CounterOpts{Name: "mailpulse_consumer_write_errors_total", Help: "Batches whose side effect failed (delivered again)."}),
		restarts:     prometheus.NewCounter(prometheus.CounterOpts{Name: "mailpulse_consumer_restarts_total", Help: "Restarts of the consumer after NATS failures."}),
		pending:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "mailpulse_consumer_pending", Help: "Messages in the log not yet delivered to the consumer (its lag), as of the last delivery."}),
		batchSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "mailpulse_consumer_batch_seconds", Help: "Duration of one batch's side effect.", Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12)}),
	}
	for _, c := range []prometheus.Collector{m.processed, m.skipped, m.dead, m.retried, m.ackErrors, m.writeErrors, m.restarts, m.pending, m.batchSeconds} {
		if err := r.Register(c); err != nil {
			return nil, fmt.Errorf("consumer %s metrics: %w", consumer, err)
		}
	}
	return m, nil
}
