// Package bustest runs a message handler through the real consuming runtime (a bus.Router
// on a fresh embedded NATS server) so that any service's handler can be tested the way it
// runs: acknowledged, retried, redelivered or dead-lettered.
package bustest

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailpulse/mailpulse/shared/broker/brokertest"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/poll"
)

// DeadLetter is a message the handler could not process, as the dead-letter stream keeps it.
type DeadLetter struct {
	Seq     uint64
	Subject string
	Reason  string
	Data    []byte
}

// Result says what became of the messages.
type Result struct {
	// Settled is true when every message was acknowledged or dead-lettered before the
	// deadline; false means some are still being retried.
	Settled     bool
	DeadLetters []DeadLetter
}

// RunHandler publishes msgs to the EVENTS log of a new embedded server, runs h on them
// through a bus.Router of service "test" (cfg's Service and Dial are set here; zero fields
// take the router's defaults), waits until every message is settled or within has passed,
// stops the router and reports.
func RunHandler(t testing.TB, h message.NoPublishHandlerFunc, msgs []bus.Msg, cfg bus.RouterConfig, within time.Duration) Result {
	t.Helper()
	srv := brokertest.Start(t)
	nc := srv.Conn()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := bus.Provision(ctx, js, bus.Limits{}, nil); err != nil {
		t.Fatal(err)
	}
	dlq, dlqSubjects := bus.DeadLetterStream("test")
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: dlq, Subjects: []string{dlqSubjects}}); err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		nm := &nats.Msg{Subject: m.Subject, Data: m.Data, Header: nats.Header{}}
		if m.ID != "" {
			nm.Header.Set(jetstream.MsgIDHeader, m.ID)
		}
		if _, err := js.PublishMsg(ctx, nm); err != nil {
			t.Fatal(err)
		}
	}
	cfg.Service = "test"
	cfg.Dial = func() (*nats.Conn, error) { return srv.Connect() }
	r, err := bus.NewRouter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Handle("handler", bus.StreamEvents, "test-handler", []string{bus.SubjectEvents}, h); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	settled := poll.Wait(within, func() bool {
		cons, err := js.Consumer(ctx, bus.StreamEvents, "test-handler")
		if err != nil {
			return false
		}
		info := cons.CachedInfo()
		return info.NumPending == 0 && info.NumAckPending == 0 && info.AckFloor.Stream >= uint64(len(msgs))
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("router Run = %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("router did not stop within 30 s")
	}
	res := Result{Settled: settled}
	name, _ := bus.DeadLetterStream("test")
	st, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	for seq := uint64(1); seq <= st.CachedInfo().State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		orig, _ := strconv.ParseUint(m.Header.Get(bus.HeaderSequence), 10, 64)
		res.DeadLetters = append(res.DeadLetters, DeadLetter{Seq: orig, Subject: m.Header.Get(bus.HeaderSubject), Reason: m.Header.Get(bus.HeaderReason), Data: m.Data})
	}
	return res
}
