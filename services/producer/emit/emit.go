// Package emit lets a Go mail server put its events straight into mailpulse's log:
//
//	em, err := emit.New(nc, emit.Config{Source: "mx1.example.org"})
//	go em.Run(ctx)
//	em.Emit(ctx, "smtp.connection-start", event.Debug, "remoteIp", ip, "localPort", 25)
//
// Emit never waits for the network: events go into a bounded buffer and Run publishes them
// in batches asynchronously. When the buffer is full, Emit either drops the event (counted
// in Stats and reported by Run's logger) or waits for room, as Config.Block says.
package emit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/event"
)

// Config configures an Emitter. Zero fields take the defaults in parentheses.
type Config struct {
	Source        string        // the mail server's name, on every event
	Buffer        int           // events waiting to be published (10000)
	BatchSize     int           // most events in one publish batch (500)
	FlushInterval time.Duration // longest an event waits for its batch to fill (100 ms)
	// Block makes Emit wait for room (until its context ends) instead of dropping the event
	// when the buffer is full.
	Block   bool
	Timeout time.Duration // longest a batch waits for the log (10 s)
	Log     *slog.Logger
}

// ErrDropped is returned by Emit when the buffer was full and the event was dropped.
var ErrDropped = errors.New("emit: buffer full, event dropped")

// Stats counts an Emitter's work.
type Stats struct {
	Emitted   atomic.Uint64 // accepted into the buffer
	Published atomic.Uint64 // stored in the log
	Dropped   atomic.Uint64 // dropped because the buffer was full
	Failed    atomic.Uint64 // not stored after every retry of the publisher
}

// Emitter buffers and publishes events. It is safe for concurrent use.
type Emitter struct {
	cfg   Config
	pub   *bus.Publisher
	ids   *event.IDs
	ch    chan event.Event
	stats Stats
	done  chan struct{}
}

// New returns an Emitter publishing on nc. Call Run to start publishing.
func New(nc *nats.Conn, cfg Config) (*Emitter, error) {
	if err := event.ValidateSource(cfg.Source); err != nil {
		return nil, err
	}
	if cfg.Buffer <= 0 {
		cfg.Buffer = 10_000
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 500
	}
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = 100 * time.Millisecond
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	pub, err := bus.NewPublisher(nc, bus.PublisherConfig{Window: 4 * cfg.BatchSize})
	if err != nil {
		return nil, err
	}
	return &Emitter{cfg: cfg, pub: pub, ids: event.NewIDs(), ch: make(chan event.Event, cfg.Buffer), done: make(chan struct{})}, nil
}

// Stats returns the emitter's counters.
func (e *Emitter) Stats() *Stats { return &e.stats }

// Emit records an event of type typ (group.name) at level with alternating keys and values,
// as slog takes them. It returns at once unless Config.Block is set and the buffer is full.
// It fails for an invalid type or key, ErrDropped for a full buffer, and ctx's error when
// blocking was cut short.
func (e *Emitter) Emit(ctx context.Context, typ string, level event.Level, kv ...any) error {
	if err := event.ValidateType(typ); err != nil {
		return err
	}
	data, err := event.Pairs(kv...)
	if err != nil {
		return fmt.Errorf("emit %s: %w", typ, err)
	}
	now := time.Now().UTC()
	ev := event.Event{ID: e.ids.New(now), CreatedAt: now, Type: typ, Level: level, Source: e.cfg.Source, Data: data}
	if err := ev.Validate(); err != nil {
		return fmt.Errorf("emit %s: %w", typ, err)
	}
	select {
	case e.ch <- ev:
		e.stats.Emitted.Add(1)
		return nil
	default:
	}
	if !e.cfg.Block {
		e.stats.Dropped.Add(1)
		return ErrDropped
	}
	select {
	case e.ch <- ev:
		e.stats.Emitted.Add(1)
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-e.done:
		return errors.New("emit: emitter stopped")
	}
}

// Run publishes buffered events until ctx ends, then publishes what is still buffered
// (bounded by Config.Timeout) and returns. Call it once.
func (e *Emitter) Run(ctx context.Context) error {
	t := time.NewTicker(e.cfg.FlushInterval)
	defer t.Stop()
	batch := make([]event.Event, 0, e.cfg.BatchSize)
	lastDropped := uint64(0)
	flush := func(ctx context.Context) {
		if len(batch) == 0 {
			return
		}
		e.publish(ctx, batch)
		batch = batch[:0]
		if d := e.stats.Dropped.Load(); d != lastDropped {
			e.cfg.Log.Warn("events dropped: buffer full", "dropped_total", d, "buffer", e.cfg.Buffer)
			lastDropped = d
		}
	}
	add := func(ctx context.Context, ev event.Event) {
		batch = append(batch, ev)
		if len(batch) == cap(batch) {
			flush(ctx)
		}
	}
	for {
		select {
		case ev := <-e.ch:
			add(ctx, ev)
		case <-t.C:
			flush(ctx)
		case <-ctx.Done():
			close(e.done)
			// Drain what was accepted before the stop, within the timeout.
			fctx, cancel := context.WithTimeout(context.Background(), e.cfg.Timeout)
			defer cancel()
			for drained := false; !drained; {
				select {
				case ev := <-e.ch:
					add(fctx, ev)
				default:
					drained = true
				}
			}
			flush(fctx)
			return nil
		}
	}
}

func (e *Emitter) publish(ctx context.Context, evs []event.Event) {
	msgs := make([]bus.Msg, len(evs))
	for i := range evs {
		msgs[i] = bus.Msg{Subject: evs[i].Subject(), ID: evs[i].ID, Data: evs[i].AppendJSON(nil)}
	}
	errs := make([]error, len(msgs))
	// A batch taken from the buffer was accepted by Emit: it is bounded by the timeout,
	// not cut short by the stop of Run.
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.cfg.Timeout)
	defer cancel()
	e.pub.PublishAll(pctx, msgs, errs)
	for _, err := range errs {
		if err == nil {
			e.stats.Published.Add(1)
		} else {
			e.stats.Failed.Add(1)
		}
	}
	if f := e.stats.Failed.Load(); f > 0 && errs[0] != nil {
		e.cfg.Log.Warn("events not stored", "err", errs[0], "failed_total", f)
	}
}
