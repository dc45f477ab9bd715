package webhooker_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailpulse/mailpulse/services/webhooker"
	"github.com/mailpulse/mailpulse/shared/broker/brokertest"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/poll"
	"github.com/mailpulse/mailpulse/shared/ssrf"
)

// Faults: what the network, the receiver, the broker and the webhooker's own replicas can
// do wrong. Each test ends with every event delivered at least once.

// TestConnectionResetIsRetried: a receiver that resets the connection (the request read,
// the socket closed with RST, no answer) gets the batch again.
func TestConnectionResetIsRetried(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	rc := &receiver{got: map[string]int{}}
	var n atomic.Int32
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) > 2 {
			rc.serve(w, r)
			return
		}
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // close with RST
		}
		conn.Close()
	}))
	t.Cleanup(rc.srv.Close)
	h.run(webhooker.Deps{})
	ep := h.endpoint(rc.srv.URL, nil)
	h.waitConsumer(ep.ID)
	ids := h.publish(15, "auth.failed", "ev")
	poll.Until(t, "every event delivered after the resets", func() bool { return rc.hasAll(ids) })
	poll.Until(t, "an error record per reset", func() bool { return len(h.records(ep.ID, "telemetry.webhook-error")) == 2 })
	if len(h.deadLetters(ep.ID)) != 0 {
		t.Error("a reset connection sent events to the dead letters")
	}
}

// tcpHarness is a harness whose server listens on TCP and whose connections reconnect, so
// that the server can be restarted under them (an in-process connection cannot reach the
// server started again).
func tcpHarness(t *testing.T) *harness {
	t.Helper()
	s := brokertest.StartTCP(t)
	connect := func() *nats.Conn {
		nc, err := nats.Connect(s.ClientURL(), append(bus.ConnectOptions("test", nil), nats.UserInfo(brokertest.User, brokertest.Password),
			nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	nc := connect()
	pub, err := bus.NewPublisher(nc, bus.PublisherConfig{AckTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Provision(t.Context(), pub.JetStream(), bus.Limits{}, nil); err != nil {
		t.Fatal(err)
	}
	cfg := webhooker.DefaultConfig()
	cfg.AllowNetworks = ssrf.Networks{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	cfg.Grace = 2 * time.Second
	h := &harness{t: t, srv: s, nc: nc, js: pub.JetStream(), pub: pub, cfg: cfg, reg: prometheus.NewRegistry()}
	h.eps = h.openEndpoints(nc)
	// The webhooker, on its own reconnecting connection.
	svc, err := webhooker.New(h.cfg, webhooker.Deps{Conn: connect(), Endpoints: h.eps, Registry: h.reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})
	return h
}

// publishUntilStored publishes events, again and again until every one is stored: during
// and just after a broker restart, publishing fails.
func (h *harness) publishUntilStored(n int, typ, prefix string) []string {
	h.t.Helper()
	ids := make([]string, n)
	msgs := make([]bus.Msg, n)
	for i := range n {
		e := event.Event{ID: prefix + "-" + string(rune('a'+i/26)) + string(rune('a'+i%26)), CreatedAt: time.Now().UTC(), Type: typ, Level: event.Warn,
			Source: "mx1.example.org", Data: event.Data(`{"accountName":"user"}`)}
		ids[i], msgs[i] = e.ID, bus.Msg{Subject: e.Subject(), ID: e.ID, Data: e.AppendJSON(nil)}
	}
	poll.Until(h.t, "the events stored", func() bool {
		errs := make([]error, n)
		h.pub.PublishAll(h.t.Context(), msgs, errs)
		for _, err := range errs {
			if err != nil {
				return false // the ids make a second publish of the same event a no-op
			}
		}
		return true
	})
	return ids
}

// TestNATSRestartMidStream: the broker restarts while a batch is in flight and the log
// holds more; the webhooker reconnects and delivers everything, what was published before
// the restart and after it.
func TestNATSRestartMidStream(t *testing.T) {
	t.Parallel()
	h := tcpHarness(t)
	held, release := make(chan struct{}), make(chan struct{})
	var n atomic.Int32
	rc := newReceiver(t, func(int, http.ResponseWriter, *http.Request) int {
		if n.Add(1) == 2 {
			close(held)
			<-release // the second request waits out the restart, and fails
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	ep := h.endpoint(rc.srv.URL, func(e *webhooker.Endpoint) { e.Timeout = webhooker.Duration(time.Second) })
	h.waitConsumer(ep.ID)
	before := h.publishUntilStored(40, "auth.failed", "before")
	<-held
	h.srv.Restart()
	close(release)
	after := h.publishUntilStored(30, "auth.failed", "after")
	poll.Until(t, "every event delivered across the restart", func() bool { return rc.hasAll(before) && rc.hasAll(after) })
	if len(h.deadLetters(ep.ID)) != 0 {
		t.Error("dead letters after a broker restart")
	}
}

// TestReplicaKilledMidBatch: of two replicas, the one holding a batch in flight dies (its
// connection closed, its context stopped); the other delivers that batch (after the ack
// wait) and everything published before and after.
func TestReplicaKilledMidBatch(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	held := make(chan struct{})
	var once sync.Once
	rc := newReceiver(t, func(n int, _ http.ResponseWriter, r *http.Request) int {
		if n == 0 {
			once.Do(func() { close(held) })
			<-r.Context().Done() // hold it until its sender is gone
		}
		return http.StatusOK
	})
	_, kill := h.run(webhooker.Deps{})
	ep := h.endpoint(rc.srv.URL, func(e *webhooker.Endpoint) { e.Timeout = webhooker.Duration(time.Second) })
	h.waitConsumer(ep.ID)
	before := h.publish(30, "auth.failed", "before")
	<-held // the only replica so far sent it
	h.run(webhooker.Deps{})
	kill()
	after := h.publish(20, "auth.failed", "after")
	poll.Until(t, "every event delivered by the surviving replica", func() bool { return rc.hasAll(before) && rc.hasAll(after) })
}

// TestStopDuringALongBatchWaitIsPrompt: a stop while a batch is being gathered (maxWait up
// to a minute) ends within a pull (2 s), not at the end of the batch wait, and hands the
// events gathered back at once.
func TestStopDuringALongBatchWaitIsPrompt(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	rc := newReceiver(t, ok)
	stop, _ := h.run(webhooker.Deps{})
	ep := h.endpoint(rc.srv.URL, func(e *webhooker.Endpoint) {
		wait := webhooker.Duration(time.Minute)
		e.Batch = webhooker.Batch{MaxEvents: 100, MaxWait: &wait}
	})
	h.waitConsumer(ep.ID)
	h.publish(3, "auth.failed", "ev")
	poll.Until(t, "the batch being gathered", func() bool {
		info := consumerInfo(t, h, ep.ID)
		return info != nil && info.NumAckPending == 3
	})
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	poll.Within(t, 15*time.Second, "the stop (the batch wait is a minute)", func() bool {
		select {
		case <-stopped:
			return true
		default:
			return false
		}
	})
	if len(rc.requests()) != 0 {
		t.Errorf("%d requests: the batch was sent before its wait", len(rc.requests()))
	}
	// Handed back: the next reader gets them at once, not after their ack wait (66 s).
	cons, err := h.js.Consumer(t.Context(), bus.StreamEvents, webhooker.ConsumerName(ep.ID))
	if err != nil {
		t.Fatal(err)
	}
	mb, err := cons.Fetch(3, jetstream.FetchMaxWait(5*time.Second), jetstream.FetchPriorityGroup(webhooker.PriorityGroup))
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	for range mb.Messages() {
		got++
	}
	if got != 3 {
		t.Errorf("the next reader got %d of the 3 events gathered when the webhooker stopped", got)
	}
}

// TestDeadLetterStreamRefusingLosesNothing: a batch that fails for good while the dead
// letter stream is missing is handed back, tried again, and dead-lettered once the stream
// is there again.
func TestDeadLetterStreamRefusingLosesNothing(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	name, _ := bus.DeadLetterStream("webhooker")
	if err := h.js.DeleteStream(t.Context(), name); err != nil {
		t.Fatal(err)
	}
	rc := newReceiver(t, func(int, http.ResponseWriter, *http.Request) int { return http.StatusUnprocessableEntity })
	h.run(webhooker.Deps{})
	ep := h.endpoint(rc.srv.URL, func(e *webhooker.Endpoint) { e.Breaker.Failures = 100 })
	h.waitConsumer(ep.ID)
	h.publish(4, "auth.failed", "ev")
	poll.Until(t, "the refused batch sent again", func() bool { return len(rc.requests()) >= 2 })
	if err := bus.Provision(t.Context(), h.js, bus.Limits{}, nil); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "every event in the dead letters", func() bool { return len(h.deadLetters(ep.ID)) == 4 })
	poll.Until(t, "nothing left for the endpoint", func() bool { return pendingZero(t, h, ep.ID) })
}
