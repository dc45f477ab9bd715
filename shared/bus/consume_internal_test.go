package bus

import (
	"context"
	"errors"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailpulse/mailpulse/shared/broker/brokertest"
)

// corruptMeta is a real delivered message whose metadata (its reply subject) cannot be
// read, as a damaged or foreign message would be.
type corruptMeta struct{ jetstream.Msg }

func (corruptMeta) Metadata() (*jetstream.MsgMetadata, error) {
	return nil, errors.New("reply subject is not a JetStream ack subject")
}

// A message whose metadata cannot be read is dead-lettered with the reason, not counted
// and acknowledged in silence.
func TestDecodeDeadLettersAMessageWithoutMetadata(t *testing.T) {
	s := brokertest.Start(t)
	js, _ := jetstream.New(s.Conn())
	ctx := t.Context()
	if err := Provision(ctx, js, Limits{}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "events.a.b", []byte(`{"n":1}`)); err != nil {
		t.Fatal(err)
	}
	cons, _ := js.CreateConsumer(ctx, StreamEvents, jetstream.ConsumerConfig{Durable: "t", AckPolicy: jetstream.AckExplicitPolicy})
	fetched, err := cons.Fetch(1)
	if err != nil {
		t.Fatal(err)
	}
	m := <-fetched.Messages()
	reg := prometheus.NewRegistry()
	c, err := NewBatchConsumer(js, BatchConsumerConfig{Stream: StreamEvents, Durable: "t", Service: "archiver", Registry: reg},
		BatchHandler[int]{Decode: func(Delivery) (int, bool, error) { return 1, true, nil }, Write: func(context.Context, []int) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.decode(ctx, []jetstream.Msg{corruptMeta{m}})
	if err != nil {
		t.Fatalf("decode = %v", err)
	}
	if b.dead != 1 || len(b.items) != 0 {
		t.Fatalf("batch dead=%d items=%d, want the message dead-lettered and nothing written", b.dead, len(b.items))
	}
	name, _ := DeadLetterStream("archiver")
	st, err := js.Stream(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	dl, err := st.GetMsg(ctx, 1)
	if err != nil {
		t.Fatalf("no dead letter: %v", err)
	}
	if dl.Header.Get(HeaderReason) == "" || string(dl.Data) != `{"n":1}` {
		t.Fatalf("dead letter %q %v: want the payload and the reason", dl.Data, dl.Header)
	}
}
