package bus

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Errors a publish ends with when JetStream did not store the message. Both are temporary:
// the same message may be sent again (its id makes that safe).
var (
	// ErrUnavailable: NATS is not connected, or JetStream did not answer in time.
	ErrUnavailable = errors.New("event log unavailable")
	// ErrSaturated: the window of unacknowledged publishes stayed full until the deadline.
	ErrSaturated = errors.New("event log saturated")
)

// Msg is one message to publish. ID becomes the Nats-Msg-Id header, so JetStream stores a
// message sent twice within the duplicate window once.
type Msg struct {
	Subject string
	ID      string
	Data    []byte // not modified, and must not be modified until the publish returns
}

// PublisherConfig tunes a Publisher. Zero fields take the defaults.
type PublisherConfig struct {
	// Window bounds the asynchronous publishes awaiting their acknowledgement (default
	// 4000): the back-pressure point of the whole producer.
	Window int
	// AckTimeout bounds the wait for one acknowledgement (default 5 s).
	AckTimeout time.Duration
	// Attempts is how many times a message is sent when JetStream does not acknowledge it
	// (default 3).
	Attempts int
}

// Publisher publishes to JetStream asynchronously within a bounded window, retries what was
// not acknowledged, and reports per message whether it was stored. It is safe for
// concurrent use.
type Publisher struct {
	nc       *nats.Conn
	js       jetstream.JetStream
	attempts int

	stats PublishStats
}

// PublishStats counts a Publisher's work; read it with Stats.
type PublishStats struct {
	Stored     atomic.Uint64 // acknowledged by JetStream
	Duplicates atomic.Uint64 // acknowledged as duplicates of a stored message
	Retries    atomic.Uint64 // sends after the first
	Failed     atomic.Uint64 // gave up
}

// NewPublisher returns a Publisher on nc.
func NewPublisher(nc *nats.Conn, cfg PublisherConfig) (*Publisher, error) {
	if cfg.Window <= 0 {
		cfg.Window = 4000
	}
	if cfg.AckTimeout <= 0 {
		cfg.AckTimeout = 5 * time.Second
	}
	if cfg.Attempts <= 0 {
		cfg.Attempts = 3
	}
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(cfg.Window),
		jetstream.WithPublishAsyncTimeout(cfg.AckTimeout),
	)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	return &Publisher{nc: nc, js: js, attempts: cfg.Attempts}, nil
}

// JetStream returns the publisher's JetStream context.
func (p *Publisher) JetStream() jetstream.JetStream { return p.js }

// Stats returns the publisher's counters.
func (p *Publisher) Stats() *PublishStats { return &p.stats }

// PublishAll publishes msgs and waits until JetStream has stored each of them, or gave up,
// or ctx ended. errs[i] is nil when msgs[i] is stored, ErrUnavailable or ErrSaturated (or a
// wrapped permanent error) otherwise; errs must be as long as msgs. A message whose fate is
// unknown (ctx ended before its acknowledgement) is reported as not stored: sending it again
// is safe, as its id makes JetStream store it once.
func (p *Publisher) PublishAll(ctx context.Context, msgs []Msg, errs []error) {
	p.PublishAllDuplicates(ctx, msgs, errs, nil)
}

// PublishAllDuplicates is PublishAll that also tells, in dups (as long as msgs), which of
// the stored messages JetStream already had: an id seen within the duplicate window, stored
// once and not twice.
func (p *Publisher) PublishAllDuplicates(ctx context.Context, msgs []Msg, errs []error, dups []bool) {
	if len(errs) != len(msgs) || (dups != nil && len(dups) != len(msgs)) {
		panic("bus: PublishAll: errs, dups and msgs differ in length")
	}
	pending := make([]int, len(msgs))
	for i := range pending {
		pending[i] = i
	}
	futures := make([]jetstream.PubAckFuture, len(msgs))
	for attempt := 0; attempt < p.attempts && len(pending) > 0; attempt++ {
		if attempt > 0 {
			p.stats.Retries.Add(uint64(len(pending)))
			if !sleep(ctx, time.Duration(50<<attempt)*time.Millisecond) {
				break
			}
		}
		// Send every pending message; PublishMsgAsync blocks while the window is full.
		for _, i := range pending {
			futures[i] = nil
			if p.nc.Status() != nats.CONNECTED {
				errs[i] = ErrUnavailable
				continue
			}
			f, err := p.send(ctx, &msgs[i])
			if err != nil {
				errs[i] = err
				continue
			}
			futures[i] = f
		}
		// Collect the acknowledgements.
		next := pending[:0]
		for _, i := range pending {
			f := futures[i]
			if f == nil {
				if retryable(errs[i]) && ctx.Err() == nil {
					next = append(next, i)
				}
				continue
			}
			select {
			case ack := <-f.Ok():
				errs[i] = nil
				if dups != nil {
					dups[i] = ack.Duplicate
				}
				if ack.Duplicate {
					p.stats.Duplicates.Add(1)
				} else {
					p.stats.Stored.Add(1)
				}
			case err := <-f.Err():
				errs[i] = classify(err)
				if retryable(errs[i]) {
					next = append(next, i)
				}
			case <-ctx.Done():
				errs[i] = ErrUnavailable
			}
		}
		pending = next
	}
	for _, err := range errs {
		if err != nil {
			p.stats.Failed.Add(1)
		}
	}
}

// Publish publishes one message and waits for its acknowledgement: PublishAll of one.
func (p *Publisher) Publish(ctx context.Context, m Msg) error {
	var errs [1]error
	p.PublishAll(ctx, []Msg{m}, errs[:])
	return errs[0]
}

func (p *Publisher) send(ctx context.Context, m *Msg) (jetstream.PubAckFuture, error) {
	msg := &nats.Msg{Subject: m.Subject, Data: m.Data, Header: nats.Header{}}
	if m.ID != "" {
		msg.Header.Set(jetstream.MsgIDHeader, m.ID)
	}
	for {
		f, err := p.js.PublishMsgAsync(msg, jetstream.WithStallWait(100*time.Millisecond))
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
			return nil, classify(err)
		}
		// The window is full: wait for room as long as the caller lets us.
		if ctx.Err() != nil {
			return nil, ErrSaturated
		}
	}
}

func classify(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, jetstream.ErrAsyncPublishTimeout), errors.Is(err, nats.ErrNoResponders),
		errors.Is(err, nats.ErrTimeout), errors.Is(err, nats.ErrReconnectBufExceeded),
		errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrConnectionReconnecting),
		errors.Is(err, nats.ErrDisconnected), errors.Is(err, jetstream.ErrNoStreamResponse):
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	case errors.Is(err, ErrUnavailable), errors.Is(err, ErrSaturated):
		return err
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.Code >= 500 {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return fmt.Errorf("publish: %w", err)
}

func retryable(err error) bool {
	return errors.Is(err, ErrUnavailable)
}

// Flush waits until every asynchronous publish of the publisher has been acknowledged or
// has failed, or ctx ends.
func (p *Publisher) Flush(ctx context.Context) error {
	select {
	case <-p.js.PublishAsyncComplete():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("flush: %d publishes unacknowledged: %w", p.js.PublishAsyncPending(), ctx.Err())
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
