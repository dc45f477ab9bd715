package bus_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailpulse/mailpulse/shared/broker/brokertest"
	"github.com/mailpulse/mailpulse/shared/bus"
)

func TestProvisionIdempotentAndUpdates(t *testing.T) {
	s := brokertest.Start(t)
	js, err := jetstream.New(s.Conn())
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	for range 2 {
		if err := bus.Provision(ctx, js, bus.Limits{}, nil); err != nil {
			t.Fatalf("Provision = %v", err)
		}
	}
	for _, cfg := range bus.StreamConfigs(bus.Limits{}) {
		if _, err := js.Stream(ctx, cfg.Name); err != nil {
			t.Errorf("stream %s missing after Provision: %v", cfg.Name, err)
		}
	}
	for _, b := range bus.BucketConfigs(bus.Limits{}) {
		if _, err := js.KeyValue(ctx, b.Bucket); err != nil {
			t.Errorf("bucket %s missing: %v", b.Bucket, err)
		}
	}

	// A compatible change (a shorter max age) is applied in place.
	if err := bus.Provision(ctx, js, bus.Limits{EventsMaxAge: time.Hour, Duplicates: time.Minute}, nil); err != nil {
		t.Fatalf("Provision with new limits = %v", err)
	}
	st, _ := js.Stream(ctx, bus.StreamEvents)
	if got := st.CachedInfo().Config.MaxAge; got != time.Hour {
		t.Errorf("EVENTS MaxAge = %v after update, want 1h", got)
	}
}

func TestProvisionReportsIncompatibleStream(t *testing.T) {
	s := brokertest.Start(t)
	js, _ := jetstream.New(s.Conn())
	ctx := t.Context()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: bus.StreamEvents, Subjects: []string{bus.SubjectEvents}, Storage: jetstream.MemoryStorage}); err != nil {
		t.Fatal(err)
	}
	err := bus.Provision(ctx, js, bus.Limits{}, nil)
	if !errors.Is(err, bus.ErrIncompatible) {
		t.Fatalf("Provision over a memory stream = %v, want ErrIncompatible", err)
	}
	st, _ := js.Stream(ctx, bus.StreamEvents)
	if st.CachedInfo().Config.Storage != jetstream.MemoryStorage {
		t.Error("Provision changed an incompatible stream")
	}
}

func TestLimitsValidate(t *testing.T) {
	if err := (bus.Limits{EventsMaxAge: -1, Duplicates: -1, Replicas: 9}).Validate(); err == nil {
		t.Error("Validate accepted negative ages and 9 replicas")
	}
	if err := bus.DefaultLimits().Validate(); err != nil {
		t.Errorf("DefaultLimits invalid: %v", err)
	}
}

func TestMetricsSubject(t *testing.T) {
	for in, want := range map[string]string{"mx1.example.org": "metrics.mx1.example.org", "a b*>": "metrics.a_b__", "": "metrics._", ".x.": "metrics.x", "a..b": "metrics.a._.b"} {
		if got := bus.MetricsSubject(in); got != want {
			t.Errorf("MetricsSubject(%q) = %q, want %q", in, got, want)
		}
	}
}

func provisioned(t *testing.T, s *brokertest.Server, opts ...nats.Option) (*bus.Publisher, jetstream.JetStream) {
	t.Helper()
	nc := s.Conn(opts...)
	p, err := bus.NewPublisher(nc, bus.PublisherConfig{AckTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Provision(t.Context(), p.JetStream(), bus.Limits{}, nil); err != nil {
		t.Fatal(err)
	}
	return p, p.JetStream()
}

func msgs(n int, prefix string) []bus.Msg {
	out := make([]bus.Msg, n)
	for i := range out {
		id := fmt.Sprintf("%s-%d", prefix, i)
		out[i] = bus.Msg{Subject: bus.EventSubject("smtp.ehlo"), ID: id, Data: []byte(`{"id":"` + id + `"}`)}
	}
	return out
}

func streamMsgs(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	st, err := js.Stream(t.Context(), bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func TestPublishAllStoresOnceWithIDs(t *testing.T) {
	s := brokertest.Start(t)
	p, js := provisioned(t, s)
	batch := msgs(500, "a")
	errs := make([]error, len(batch))
	p.PublishAll(t.Context(), batch, errs)
	for i, err := range errs {
		if err != nil {
			t.Fatalf("msg %d: %v", i, err)
		}
	}
	// The same batch again, as a client retrying after a lost response would.
	p.PublishAll(t.Context(), batch, errs)
	if n := streamMsgs(t, js); n != 500 {
		t.Errorf("EVENTS holds %d messages after sending 500 twice, want 500", n)
	}
	if d := p.Stats().Duplicates.Load(); d != 500 {
		t.Errorf("Duplicates = %d, want 500", d)
	}
	if err := p.Flush(t.Context()); err != nil {
		t.Errorf("Flush = %v", err)
	}
}

func TestPublishDuringOutageFailsFastThenRecovers(t *testing.T) {
	s := brokertest.StartTCP(t)
	nc, err := nats.Connect(s.ClientURL(), append(bus.ConnectOptions("test", nil), nats.UserInfo(brokertest.User, brokertest.Password))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	p, err := bus.NewPublisher(nc, bus.PublisherConfig{AckTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Provision(t.Context(), p.JetStream(), bus.Limits{}, nil); err != nil {
		t.Fatal(err)
	}
	if err := p.Publish(t.Context(), msgs(1, "before")[0]); err != nil {
		t.Fatalf("Publish before the outage = %v", err)
	}

	s.Server.Shutdown()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	err = p.Publish(ctx, msgs(1, "during")[0])
	if !errors.Is(err, bus.ErrUnavailable) {
		t.Fatalf("Publish during the outage = %v, want ErrUnavailable", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Publish during the outage waited for the whole deadline")
	}

	s.Start()
	// The connection comes back by itself; poll until a publish succeeds.
	deadline := time.Now().Add(20 * time.Second)
	for {
		if err = p.Publish(t.Context(), msgs(1, "after")[0]); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Publish never recovered after the server came back: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	js, _ := jetstream.New(nc)
	if n := streamMsgs(t, js); n != 2 {
		t.Errorf("EVENTS holds %d messages, want 2 (the log survives a restart; the failed publish is not stored)", n)
	}
}

func TestPublishAllSaturatedWhenDeadlinePasses(t *testing.T) {
	s := brokertest.Start(t)
	nc := s.Conn()
	p, err := bus.NewPublisher(nc, bus.PublisherConfig{Window: 1, AckTimeout: time.Second, Attempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	// No stream: nothing answers, so the window of one stays full until the deadline.
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	batch := msgs(3, "x")
	errs := make([]error, 3)
	p.PublishAll(ctx, batch, errs)
	for i, err := range errs {
		if err == nil {
			t.Errorf("msg %d stored without a stream", i)
		}
	}
}

// A second provisioning with the same limits changes nothing and says nothing; every start
// used to log "stream updated" for each dead-letter stream.
func TestProvisionTwiceIsSilent(t *testing.T) {
	s := brokertest.Start(t)
	js, _ := jetstream.New(s.Conn())
	var first, second bytes.Buffer
	if err := bus.Provision(t.Context(), js, bus.Limits{}, slog.New(slog.NewTextHandler(&first, nil))); err != nil {
		t.Fatal(err)
	}
	if err := bus.Provision(t.Context(), js, bus.Limits{}, slog.New(slog.NewTextHandler(&second, nil))); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(first.String(), "stream created") || second.Len() != 0 {
		t.Fatalf("first provisioning logged %q; the second logged %q, want nothing", first.String(), second.String())
	}
}
