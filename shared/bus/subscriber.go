package bus

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go/jetstream"
)

// subscriber is a Watermill subscriber on one durable JetStream consumer. It takes the
// place of watermill-nats' jetstream subscriber, which closes its output channel while a
// consume callback may still send on it (a panic on every stop under load, found by the
// tests here) and drains the connection it was given.
//
// Contract: a message is acknowledged (asynchronously: Ack, not DoubleAck) when the handler
// acks it, handed back with a delay that grows with its deliveries when the handler nacks
// it, and handed back at once when the subscriber stops before the handler settled it. The
// output channel is closed only after the consumer has stopped and no callback runs.
type subscriber struct {
	consumer func(ctx context.Context) (jetstream.Consumer, error)
	ackWait  time.Duration
	nak      nakDelay
	pull     int
	ackError func() // an ack or nak that could not be sent (the message comes back after the ack wait)

	closing  chan struct{}
	closeOne sync.Once
	wg       sync.WaitGroup
}

var _ message.Subscriber = (*subscriber)(nil)

func newSubscriber(consumer func(context.Context) (jetstream.Consumer, error), ackWait time.Duration, nak nakDelay, pull int, ackError func()) *subscriber {
	return &subscriber{consumer: consumer, ackWait: ackWait, nak: nak, pull: pull, ackError: ackError, closing: make(chan struct{})}
}

// settled counts an acknowledgement that could not be sent.
func (s *subscriber) settled(err error) {
	if err != nil {
		s.ackError()
	}
}

// Subscribe starts consuming; the topic only names the subscription.
func (s *subscriber) Subscribe(ctx context.Context, _ string) (<-chan *message.Message, error) {
	select {
	case <-s.closing:
		return nil, errors.New("bus: subscriber closed")
	default:
	}
	cons, err := s.consumer(ctx)
	if err != nil {
		return nil, err
	}
	out := make(chan *message.Message)
	cc, err := cons.Consume(func(m jetstream.Msg) { s.handle(ctx, m, out) }, jetstream.PullMaxMessages(s.pull))
	if err != nil {
		return nil, err
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		select {
		case <-ctx.Done():
		case <-s.closing:
		}
		cc.Stop()
		<-cc.Closed() // no callback runs any more: the channel can close
		close(out)
	}()
	return out, nil
}

func (s *subscriber) handle(ctx context.Context, jm jetstream.Msg, out chan<- *message.Message) {
	m, _ := unmarshaler{}.Unmarshal(jm)
	mctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m.SetContext(mctx)
	select {
	case out <- m:
	case <-s.closing:
		s.settled(jm.Nak())
		return
	case <-ctx.Done():
		s.settled(jm.Nak())
		return
	}
	timeout := time.NewTimer(s.ackWait)
	defer timeout.Stop()
	select {
	case <-m.Acked():
		s.settled(jm.Ack())
	case <-m.Nacked():
		var delivered uint64 = 1
		if meta, err := jm.Metadata(); err == nil {
			delivered = meta.NumDelivered
		}
		s.settled(jm.NakWithDelay(s.nak.WaitTime(delivered)))
	case <-timeout.C:
		// The handler outlived the ack wait: JetStream delivers it again by itself.
	case <-s.closing:
		s.settled(jm.Nak())
	case <-ctx.Done():
		s.settled(jm.Nak())
	}
}

// Close stops every subscription and waits until their channels are closed.
func (s *subscriber) Close() error {
	s.closeOne.Do(func() { close(s.closing) })
	s.wg.Wait()
	return nil
}
