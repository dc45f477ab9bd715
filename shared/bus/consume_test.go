package bus_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/poll"
)

// sink is an idempotent store keyed by sequence, as the archiver's is.
type sink struct {
	mu     sync.Mutex
	seen   map[uint64]int
	writes atomic.Int64
}

func (s *sink) write(_ context.Context, seqs []uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes.Add(1)
	for _, q := range seqs {
		s.seen[q]++
	}
	return nil
}

func (s *sink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.seen)
}

func decodeSeq(d bus.Delivery) (uint64, bool, error) {
	if string(d.Data) == "poison" {
		return 0, false, fmt.Errorf("undecodable payload %q", d.Data)
	}
	return d.Seq, true, nil
}

// runConsumer runs c until ctx ends; the channel closes when Run has returned, and the
// test checks that it does.
func runConsumer(t *testing.T, ctx context.Context, c interface{ Run(context.Context) error }) <-chan struct{} {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := c.Run(ctx); err != nil {
			t.Errorf("Run = %v", err)
		}
	}()
	t.Cleanup(func() {
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("consumer did not stop")
		}
	})
	return done
}

func TestBatchConsumerDeliversEverythingOnceStoreRecovers(t *testing.T) {
	_, js := logWith(t, 3000)
	s := &sink{seen: map[uint64]int{}}
	var fails atomic.Int32
	reg := prometheus.NewRegistry()
	c, err := bus.NewBatchConsumer(js, bus.BatchConsumerConfig{
		Stream: bus.StreamEvents, Durable: "t", Service: "archiver", Subjects: []string{bus.SubjectEvents},
		BatchSize: 500, RetryInitial: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond, Registry: reg,
	}, bus.BatchHandler[uint64]{
		Decode: decodeSeq,
		Write: func(ctx context.Context, seqs []uint64) error {
			// The store is down for the first three batches.
			if fails.Add(1) <= 3 {
				return fmt.Errorf("store: %w", bus.ErrRetry)
			}
			return s.write(ctx, seqs)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	runConsumer(t, ctx, c)
	poll.Until(t, "3000 messages written", func() bool { return s.count() == 3000 })
	poll.Until(t, "every message acknowledged", func() bool {
		info, err := js.Consumer(t.Context(), bus.StreamEvents, "t")
		return err == nil && info.CachedInfo().NumAckPending == 0 && info.CachedInfo().NumPending == 0
	})
	if got := counter(t, reg, "mailpulse_consumer_write_errors_total"); got != 3 {
		t.Errorf("write errors = %v, want 3", got)
	}
	if got := counter(t, reg, "mailpulse_consumer_processed_total"); got != 3000 {
		t.Errorf("processed = %v, want 3000", got)
	}
}

func TestBatchConsumerDeadLettersWhatCannotBeDecoded(t *testing.T) {
	_, js := logWith(t, 10)
	if _, err := js.Publish(t.Context(), "events.c.z", []byte("poison")); err != nil {
		t.Fatal(err)
	}
	s := &sink{seen: map[uint64]int{}}
	c, err := bus.NewBatchConsumer(js, bus.BatchConsumerConfig{Stream: bus.StreamEvents, Durable: "t", Service: "archiver"},
		bus.BatchHandler[uint64]{Decode: decodeSeq, Write: s.write})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	runConsumer(t, ctx, c)
	poll.Until(t, "the 10 good messages", func() bool { return s.count() == 10 })
	name, _ := bus.DeadLetterStream("archiver")
	var dl *jetstream.RawStreamMsg
	poll.Until(t, "a dead letter", func() bool {
		st, err := js.Stream(t.Context(), name)
		if err != nil {
			return false
		}
		dl, err = st.GetMsg(t.Context(), 1)
		return err == nil
	})
	if string(dl.Data) != "poison" || dl.Header.Get(bus.HeaderSequence) != "11" || dl.Header.Get(bus.HeaderSubject) != "events.c.z" ||
		dl.Header.Get(bus.HeaderReason) == "" {
		t.Fatalf("dead letter %q with headers %v; want the payload, sequence 11, its subject and a reason", dl.Data, dl.Header)
	}
}

func TestBatchConsumerPermanentWriteErrorDeadLettersTheBatch(t *testing.T) {
	_, js := logWith(t, 5)
	c, err := bus.NewBatchConsumer(js, bus.BatchConsumerConfig{Stream: bus.StreamEvents, Durable: "t", Service: "archiver"},
		bus.BatchHandler[uint64]{Decode: decodeSeq, Write: func(context.Context, []uint64) error {
			return bus.Permanent(errors.New("the store refuses these records"))
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	runConsumer(t, ctx, c)
	name, _ := bus.DeadLetterStream("archiver")
	poll.Until(t, "5 dead letters", func() bool {
		st, err := js.Stream(t.Context(), name)
		return err == nil && st.CachedInfo().State.Msgs == 5
	})
}

// Stopping hands back what was fetched but not written, so another replica gets it at
// once instead of after the minute-long ack wait; and the stop is bounded by the grace
// period even when a write hangs.
func TestBatchConsumerStopIsBoundedAndHandsBackItsBatches(t *testing.T) {
	_, js := logWith(t, 200)
	started := make(chan struct{}, 1)
	hung, err := bus.NewBatchConsumer(js, bus.BatchConsumerConfig{Stream: bus.StreamEvents, Durable: "t", Service: "archiver",
		BatchSize: 20, AckWait: time.Minute, Grace: 200 * time.Millisecond},
		bus.BatchHandler[uint64]{Decode: decodeSeq, Write: func(ctx context.Context, _ []uint64) error {
			select {
			case started <- struct{}{}:
			default:
			}
			<-ctx.Done() // a store that never answers
			return ctx.Err()
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := runConsumer(t, ctx, hung)
	<-started
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within its grace period")
	}

	s := &sink{seen: map[uint64]int{}}
	next, err := bus.NewBatchConsumer(js, bus.BatchConsumerConfig{Stream: bus.StreamEvents, Durable: "t", Service: "archiver", AckWait: time.Minute},
		bus.BatchHandler[uint64]{Decode: decodeSeq, Write: s.write})
	if err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithCancel(t.Context())
	defer cancel2()
	runConsumer(t, ctx2, next)
	// Well inside the ack wait: nothing was left unacknowledged and unreturned.
	poll.Within(t, 30*time.Second, "all 200 messages at the next consumer", func() bool { return s.count() == 200 })
}

// A consumer that exists with another start point (a rebuild moved it) keeps it.
func TestEnsureConsumerKeepsTheStartPoint(t *testing.T) {
	_, js := logWith(t, 10)
	ctx := t.Context()
	if _, err := js.CreateConsumer(ctx, bus.StreamEvents, jetstream.ConsumerConfig{Durable: "t", AckPolicy: jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: 8}); err != nil {
		t.Fatal(err)
	}
	cons, err := bus.EnsureConsumer(ctx, js, bus.StreamEvents, jetstream.ConsumerConfig{Durable: "t", AckPolicy: jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy, Description: "updated"})
	if err != nil {
		t.Fatalf("EnsureConsumer over a moved consumer = %v", err)
	}
	if cfg := cons.CachedInfo().Config; cfg.OptStartSeq != 8 || cfg.Description != "updated" {
		t.Fatalf("consumer config %+v: want the start at 8 kept and the description updated", cfg)
	}
}

// counter reads a counter of the registry (the consumer's metrics carry one label value).
func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}
