package emit_test

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailpulse/mailpulse/services/producer/emit"
	"github.com/mailpulse/mailpulse/shared/broker/brokertest"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/event"
)

func TestEmitPublishesBatches(t *testing.T) {
	s := brokertest.Start(t)
	nc := s.Conn()
	js, _ := jetstream.New(nc)
	if err := bus.Provision(t.Context(), js, bus.Limits{}, nil); err != nil {
		t.Fatal(err)
	}
	em, err := emit.New(nc, emit.Config{Source: "mx1.example.org", BatchSize: 50})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- em.Run(ctx) }()
	for i := range 1000 {
		if err := em.Emit(ctx, "smtp.connection-start", event.Debug, "remoteIp", netip.MustParseAddr("192.0.2.1"), "localPort", 25, "n", i); err != nil {
			t.Fatalf("Emit %d = %v", i, err)
		}
	}
	if err := em.Emit(ctx, "Bad Type", event.Info); err == nil {
		t.Error("Emit accepted an invalid type")
	}
	if err := em.Emit(ctx, "smtp.ehlo", event.Info, "odd"); err == nil {
		t.Error("Emit accepted an odd key/value list")
	}
	cancel() // Run drains what was accepted before returning
	<-done
	if got := em.Stats().Published.Load(); got != 1000 {
		t.Errorf("Published = %d, want 1000", got)
	}
	st, _ := js.Stream(t.Context(), bus.StreamEvents)
	info, _ := st.Info(t.Context())
	if info.State.Msgs != 1000 {
		t.Errorf("EVENTS holds %d, want 1000", info.State.Msgs)
	}
	msg, err := st.GetMsg(t.Context(), 1)
	if err != nil {
		t.Fatal(err)
	}
	e, err := event.Decode(msg.Data)
	if err != nil || e.Source != "mx1.example.org" || e.Data.Get("remoteIp").Str != "192.0.2.1" {
		t.Errorf("stored event = %+v, %v", e, err)
	}
}

func TestEmitDropsOrBlocksWhenFull(t *testing.T) {
	s := brokertest.Start(t)
	nc := s.Conn()
	// Run is not started, so nothing drains the buffer of 3.
	drop, _ := emit.New(nc, emit.Config{Source: "a", Buffer: 3})
	for range 3 {
		if err := drop.Emit(t.Context(), "a.b", event.Info); err != nil {
			t.Fatal(err)
		}
	}
	if err := drop.Emit(t.Context(), "a.b", event.Info); !errors.Is(err, emit.ErrDropped) {
		t.Errorf("Emit on a full buffer = %v, want ErrDropped", err)
	}
	if d := drop.Stats().Dropped.Load(); d != 1 {
		t.Errorf("Dropped = %d, want 1", d)
	}
	block, _ := emit.New(nc, emit.Config{Source: "a", Buffer: 1, Block: true})
	block.Emit(t.Context(), "a.b", event.Info)
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := block.Emit(ctx, "a.b", event.Info); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("blocking Emit on a full buffer = %v, want the context's deadline", err)
	}
}
