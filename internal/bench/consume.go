package bench

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailpulse/mailpulse/shared/apikey"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/event"
)

// consume measures the two consuming runtimes of shared/bus against a raw durable pull
// consumer of the same log in the same run: each reads the same n events from the start
// with a handler that decodes the event, and acknowledges every message.
func consume(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("bench consume", flag.ContinueOnError)
	n := fs.Int("events", 200_000, "events in the log")
	rounds := fs.Int("rounds", 3, "rounds; the median is reported")
	if err := fs.Parse(args); err != nil {
		return err
	}
	env, err := newEnv(4000, apikey.Viewer)
	if err != nil {
		return err
	}
	defer env.close()
	ctx, js := context.Background(), env.js
	for i := 0; i < *n; i++ {
		m, _ := benchEvent(i, "bench.t"+strconv.Itoa(i%10))
		if err := publishAsync(js, m); err != nil {
			return err
		}
	}
	<-js.PublishAsyncComplete()
	fmt.Fprintf(out, "%d events of ~500 bytes in the log; each consumer reads them all from the start, decodes each, acknowledges each\n", *n)
	var raws, batches, routers []float64
	for r := 0; r < *rounds; r++ {
		raw, err := rawConsume(ctx, js, *n, fmt.Sprintf("raw-%d", r))
		if err != nil {
			return err
		}
		batch, err := batchConsume(ctx, js, *n, fmt.Sprintf("batch-%d", r))
		if err != nil {
			return err
		}
		router, err := routerConsume(ctx, env, *n, fmt.Sprintf("router-%d", r))
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "round %d: raw Consume+Ack %.0f/s   batch consumer %.0f/s (%.2f)   Watermill router %.0f/s (%.2f)\n",
			r+1, raw, batch, batch/raw, router, router/raw)
		raws, batches, routers = append(raws, raw), append(batches, batch), append(routers, router)
	}
	fmt.Fprintf(out, "median: raw %.0f/s; batch consumer %.0f/s = %.2f × raw; Watermill router %.0f/s = %.2f × raw\n",
		median(raws), median(batches), median(batches)/median(raws), median(routers), median(routers)/median(raws))
	return nil
}

// rawConsume is the baseline: a durable pull consumer, Consume with 500 pulled, decode, Ack.
func rawConsume(ctx context.Context, js jetstream.JetStream, n int, name string) (float64, error) {
	cons, err := js.CreateConsumer(ctx, bus.StreamEvents, jetstream.ConsumerConfig{Durable: name, AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 4000})
	if err != nil {
		return 0, err
	}
	defer js.DeleteConsumer(ctx, bus.StreamEvents, name)
	var got atomic.Int64
	done := make(chan struct{})
	start := time.Now()
	cc, err := cons.Consume(func(m jetstream.Msg) {
		if _, err := event.Decode(m.Data()); err == nil {
			_ = m.Ack()
		}
		if got.Add(1) == int64(n) {
			close(done)
		}
	}, jetstream.PullMaxMessages(500))
	if err != nil {
		return 0, err
	}
	defer cc.Stop()
	return wait(done, start, n)
}

func batchConsume(ctx context.Context, js jetstream.JetStream, n int, name string) (float64, error) {
	var got atomic.Int64
	done := make(chan struct{})
	c, err := bus.NewBatchConsumer(js, bus.BatchConsumerConfig{Stream: bus.StreamEvents, Durable: name, Service: "bench",
		Registry: prometheus.NewRegistry(), Log: slog.New(slog.DiscardHandler)},
		bus.BatchHandler[event.Event]{
			Decode: func(d bus.Delivery) (event.Event, bool, error) { e, err := event.Decode(d.Data); return e, true, err },
			Write: func(_ context.Context, evs []event.Event) error {
				if got.Add(int64(len(evs))) == int64(n) {
					close(done)
				}
				return nil
			},
		})
	if err != nil {
		return 0, err
	}
	defer js.DeleteConsumer(ctx, bus.StreamEvents, name)
	cctx, cancel := context.WithCancel(ctx)
	stopped := make(chan struct{})
	start := time.Now()
	go func() { defer close(stopped); _ = c.Run(cctx) }()
	defer func() { cancel(); <-stopped }()
	return wait(done, start, n)
}

func routerConsume(ctx context.Context, env *env, n int, name string) (float64, error) {
	var got atomic.Int64
	done := make(chan struct{})
	r, err := bus.NewRouter(bus.RouterConfig{Service: "bench", Dial: func() (*nats.Conn, error) { return env.srv.Connect() },
		Registry: prometheus.NewRegistry(), Log: slog.New(slog.DiscardHandler), MaxAckPending: 4000})
	if err != nil {
		return 0, err
	}
	if err := r.Handle("bench", bus.StreamEvents, name, nil, func(m *message.Message) error {
		if _, err := event.Decode(m.Payload); err != nil {
			return bus.Permanent(err)
		}
		if got.Add(1) == int64(n) {
			close(done)
		}
		return nil
	}); err != nil {
		return 0, err
	}
	js := env.js
	defer js.DeleteConsumer(ctx, bus.StreamEvents, name)
	rctx, cancel := context.WithCancel(ctx)
	stopped := make(chan struct{})
	start := time.Now()
	go func() { defer close(stopped); _ = r.Run(rctx) }()
	defer func() { cancel(); <-stopped }()
	return wait(done, start, n)
}

func wait(done <-chan struct{}, start time.Time, n int) (float64, error) {
	select {
	case <-done:
		return float64(n) / time.Since(start).Seconds(), nil
	case <-time.After(5 * time.Minute):
		return 0, fmt.Errorf("not all %d events consumed within 5 minutes", n)
	}
}
