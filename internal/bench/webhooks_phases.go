package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailpulse/mailpulse/services/webhooker"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/poll"
	"github.com/mailpulse/mailpulse/shared/ssrf"
)

// throughput: one endpoint with a fast receiver, batches of 100, draining n events already in
// the log, against the raw baseline: one pull consumer that fetches 100, POSTs the same
// events in one JSON body and acks, with no signing and no retry logic. Both run in this
// process over the same TCP connection to NATS, so that the ratio is the webhooker's own
// cost (a webhooker in a process of its own also paid for a second runtime on two cores).
func (b *hookBench) throughput(out io.Writer, n int) error {
	now := time.Now()
	if _, err := rawPublish(context.Background(), b.js, hookEvents("bench.drain", n, func(int) time.Time { return now })); err != nil {
		return err
	}
	raw, err := b.rawDrain(n)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg := webhooker.DefaultConfig()
	if cfg.AllowNetworks, err = ssrf.ParseNetworks("127.0.0.0/8"); err != nil {
		return err
	}
	eps, err := webhooker.OpenEndpoints(ctx, b.tcp, cfg, nil)
	if err != nil {
		return err
	}
	svc, err := webhooker.New(cfg, webhooker.Deps{Conn: b.tcpConn, Endpoints: eps})
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	defer func() { cancel(); <-done }()
	rcv := newHookReceiver()
	defer rcv.srv.Close()
	wait := webhooker.Duration(100 * time.Millisecond)
	start := time.Now()
	ep, err := eps.Create(ctx, webhooker.Endpoint{URL: rcv.srv.URL, Types: []string{"bench.drain"}, Format: webhooker.FormatStandard,
		Start: "beginning", Batch: webhooker.Batch{MaxEvents: 100, MaxWait: &wait}})
	if err != nil {
		return err
	}
	defer func() { _ = eps.Delete(context.Background(), ep.ID) }()
	if !poll.Wait(5*time.Minute, func() bool { return rcv.count() >= n }) {
		return fmt.Errorf("the endpoint got %d of %d events in 5 minutes", rcv.count(), n)
	}
	end := time.Now()
	// From the first request: creating the endpoint and its consumer is not delivery.
	rcv.mu.Lock()
	first := rcv.first
	rcv.mu.Unlock()
	wh := float64(n) / end.Sub(first).Seconds()
	fmt.Fprintf(out, "throughput, one endpoint, batches of 100, %d events: raw pull+POST+ack %8.0f events/s   webhooker %8.0f events/s   ratio %.2f (target ≥ 0.80; first delivery %.0f ms after the endpoint was created)\n",
		n, raw, wh, wh/raw, ms(first.Sub(start)))
	return nil
}

func (b *hookBench) rawDrain(n int) (float64, error) {
	rcv := newHookReceiver()
	defer rcv.srv.Close()
	ctx := context.Background()
	c, err := b.tcp.CreateOrUpdateConsumer(ctx, bus.StreamEvents, jetstream.ConsumerConfig{
		Durable: "bench-raw-drain", FilterSubject: bus.EventSubject("bench.drain"), AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 100})
	if err != nil {
		return 0, err
	}
	defer func() { _ = b.js.DeleteConsumer(ctx, bus.StreamEvents, "bench-raw-drain") }()
	client := &http.Client{Timeout: 30 * time.Second}
	start := time.Now()
	var body bytes.Buffer
	for got := 0; got < n; {
		batch, err := c.Fetch(100, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return 0, err
		}
		var msgs []jetstream.Msg
		body.Reset()
		body.WriteString(`{"events":[`)
		for m := range batch.Messages() {
			if len(msgs) > 0 {
				body.WriteByte(',')
			}
			body.Write(m.Data())
			msgs = append(msgs, m)
		}
		body.WriteString(`]}`)
		if len(msgs) == 0 {
			continue
		}
		resp, err := client.Post(rcv.srv.URL, "application/json", bytes.NewReader(body.Bytes()))
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		for _, m := range msgs {
			if err := m.Ack(); err != nil {
				return 0, err
			}
		}
		got += len(msgs)
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// fanout: endpoints subscribed to every event of a type at rate events/s, batch wait 100 ms:
// every endpoint must get every event; p99 from publish to receipt. Then again with one
// endpoint that never answers and one that answers 503: the healthy ones' p99 must move
// ≤ 10 %.
func (b *hookBench) fanout(out io.Writer, endpoints, rate int, d time.Duration) error {
	rcvs := make([]*hookReceiver, endpoints)
	for i := range rcvs {
		rcvs[i] = newHookReceiver()
		defer rcvs[i].srv.Close()
		if _, err := b.endpoint(map[string]any{"url": rcvs[i].srv.URL, "types": []string{"bench.fan"}, "format": "standard",
			"batch": map[string]any{"maxEvents": 100, "maxWait": "100ms"}}); err != nil {
			return err
		}
	}
	run := func(label string) (time.Duration, error) {
		for _, r := range rcvs {
			r.reset()
		}
		runtime.GC() // each run starts with the same heap
		sent, err := b.paced("bench.fan", rate, d, nil)
		if err != nil {
			return 0, err
		}
		if !poll.Wait(2*time.Minute, func() bool {
			for _, r := range rcvs {
				if r.count() < sent {
					return false
				}
			}
			return true
		}) {
			return 0, fmt.Errorf("%s: not every endpoint got the %d events within 2 minutes", label, sent)
		}
		var all []time.Duration
		for _, r := range rcvs {
			all = append(all, r.latencies()...)
		}
		p50, p99 := quantile(all, 0.50), quantile(all, 0.99)
		fmt.Fprintf(out, "fan-out, %d endpoints × %d events at %d/s%s: every endpoint got every event; latency p50 %6.1f ms  p99 %6.1f ms (target ≤ 300 ms)\n",
			len(rcvs), sent, rate, label, ms(p50), ms(p99))
		return p99, nil
	}
	healthy, err := run("")
	if err != nil {
		return err
	}
	never := newHookReceiver()
	defer never.srv.Close()
	never.setMode(func(w http.ResponseWriter, r *http.Request) bool { <-r.Context().Done(); return true })
	unavailable := newHookReceiver()
	defer unavailable.srv.Close()
	unavailable.setMode(func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusServiceUnavailable)
		return true
	})
	for _, r := range []*hookReceiver{never, unavailable} {
		if _, err := b.endpoint(map[string]any{"url": r.srv.URL, "types": []string{"bench.fan"}, "format": "standard", "timeout": "5s",
			"batch": map[string]any{"maxEvents": 100, "maxWait": "100ms"}}); err != nil {
			return err
		}
	}
	withBad, err := run(", with an endpoint that never answers and one that answers 503")
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "  healthy endpoints' p99 with the failing ones ÷ without: %.2f (target ≤ 1.10)\n", float64(withBad)/float64(healthy))
	return nil
}

// catchUp: an endpoint down (503, Retry-After: 1) for outage while events come at 1,000/s;
// then up: how fast it catches up, from its first delivery after the outage until it has
// everything but the last second, as a multiple of the live rate (target ≥ 10×). Its breaker
// probes every second or two, so that the phase measures catching up, not the breaker's
// cool-down (30 s doubling to 10 min by default), which is reported apart.
func (b *hookBench) catchUp(out io.Writer, outage time.Duration) error {
	const live = 1000
	rcv := newHookReceiver()
	defer rcv.srv.Close()
	rcv.setMode(func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusServiceUnavailable)
		return true
	})
	if _, err := b.endpoint(map[string]any{"url": rcv.srv.URL, "types": []string{"bench.outage"}, "format": "standard",
		"batch": map[string]any{"maxEvents": 1000, "maxWait": "100ms"}, "retry": map[string]any{"initial": "1s", "max": "2s"},
		"breaker": map[string]any{"failures": 5, "cooldown": "1s", "maxCooldown": "2s"}}); err != nil {
		return err
	}
	type result struct {
		sent int
		err  error
	}
	var sent atomic.Int64
	done := make(chan result, 1)
	total := outage + 60*time.Second // the outage, then live traffic while it catches up
	go func() { n, err := b.paced("bench.outage", live, total, &sent); done <- result{n, err} }()
	time.Sleep(outage) // the outage: every attempt is refused until it ends
	rcv.mu.Lock()
	rcv.mode, rcv.first = nil, time.Time{}
	rcv.mu.Unlock()
	up := time.Now()
	if !poll.Wait(total, func() bool { return rcv.count() > 0 && int64(rcv.count()) >= sent.Load()-live }) {
		return fmt.Errorf("not caught up within %v: %d of %d events received", total, rcv.count(), sent.Load())
	}
	caught := time.Now()
	got := rcv.count()
	rcv.mu.Lock()
	first := rcv.first
	rcv.mu.Unlock()
	if r := <-done; r.err != nil {
		return r.err
	}
	took := caught.Sub(first)
	rate := float64(got) / took.Seconds()
	whole := float64(got) / caught.Sub(up).Seconds()
	fmt.Fprintf(out, "catch-up after %v down at %d/s: first delivery %.1f s after it came back, then %d events in %.1f s, %.0f events/s = %.1f× the live rate (target ≥ 10×); counted from its return, %.1f×\n",
		outage, live, first.Sub(up).Seconds(), got, took.Seconds(), rate, rate/live, whole/live)
	return nil
}

// memory: one endpoint n events behind (a receiver that takes 100 ms a request): the
// webhooker's resident memory must stay ≤ 150 MB, because the events wait in the log.
func (b *hookBench) memory(out io.Writer, n int) error {
	rcv := newHookReceiver()
	defer rcv.srv.Close()
	rcv.setMode(func(w http.ResponseWriter, r *http.Request) bool {
		select {
		case <-time.After(100 * time.Millisecond): // a slow peer
		case <-r.Context().Done():
		}
		return false
	})
	now := time.Now()
	if _, err := rawPublish(context.Background(), b.js, hookEvents("bench.backlog", n, func(int) time.Time { return now })); err != nil {
		return err
	}
	if _, err := b.endpoint(map[string]any{"url": rcv.srv.URL, "types": []string{"bench.backlog"}, "format": "standard", "start": "beginning",
		"batch": map[string]any{"maxEvents": 100, "maxWait": "100ms"}}); err != nil {
		return err
	}
	peak := b.wh.watchRSS()
	time.Sleep(15 * time.Second) // the sampling window, while it works through the backlog
	max := peak()
	fmt.Fprintf(out, "memory, one endpoint %d events behind: webhooker peak RSS %s over 15 s (%d delivered meanwhile; target ≤ 150 MB)\n", n, mib(max), rcv.count())
	return nil
}
