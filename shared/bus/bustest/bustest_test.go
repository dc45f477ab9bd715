package bustest_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.uber.org/goleak"

	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/bus/bustest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func events(n int) []bus.Msg {
	out := make([]bus.Msg, n)
	for i := range out {
		out[i] = bus.Msg{Subject: "events.smtp.ehlo", ID: fmt.Sprintf("ev-%d", i), Data: []byte(fmt.Sprintf(`{"n":%d}`, i))}
	}
	return out
}

// seen records what a handler was given, by event id.
type seen struct {
	mu sync.Mutex
	n  map[string]int
}

func (s *seen) add(m *message.Message) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n[m.UUID]++
	return s.n[m.UUID]
}

func TestEveryMessageReachesTheHandlerWithItsPlaceInTheLog(t *testing.T) {
	s := &seen{n: map[string]int{}}
	var bad []string
	res := bustest.RunHandler(t, func(m *message.Message) error {
		s.add(m)
		if m.Metadata.Get(bus.MetaSubject) != "events.smtp.ehlo" || m.Metadata.Get(bus.MetaSequence) == "" || m.Metadata.Get(bus.MetaDelivered) != "1" {
			bad = append(bad, fmt.Sprint(m.Metadata))
		}
		return nil
	}, events(200), bus.RouterConfig{}, 20*time.Second)
	if !res.Settled || len(s.n) != 200 || len(res.DeadLetters) != 0 || len(bad) > 0 {
		t.Fatalf("settled %v, %d distinct messages, %d dead letters, bad metadata %v; want all 200 handled once", res.Settled, len(s.n), len(res.DeadLetters), bad)
	}
}

func TestTransientFailuresAreRetriedThenSucceed(t *testing.T) {
	s := &seen{n: map[string]int{}}
	res := bustest.RunHandler(t, func(m *message.Message) error {
		if s.add(m) <= 2 {
			return errors.New("peer unavailable")
		}
		return nil
	}, events(20), bus.RouterConfig{RetryInitial: time.Millisecond, RetryMax: 5 * time.Millisecond}, 20*time.Second)
	if !res.Settled || len(res.DeadLetters) != 0 {
		t.Fatalf("settled %v with %d dead letters; want every message processed after its retries", res.Settled, len(res.DeadLetters))
	}
	for id, n := range s.n {
		if n != 3 {
			t.Errorf("%s handled %d times, want 3 (2 failures, then success)", id, n)
		}
	}
}

func TestFailuresBeyondTheRetriesAreRedelivered(t *testing.T) {
	s := &seen{n: map[string]int{}}
	res := bustest.RunHandler(t, func(m *message.Message) error {
		if m.Metadata.Get(bus.MetaDelivered) == "1" {
			s.add(m)
			return errors.New("still down")
		}
		return nil
	}, events(5), bus.RouterConfig{Retries: -1, NakInitial: 10 * time.Millisecond, NakMax: 50 * time.Millisecond}, 20*time.Second)
	if !res.Settled || len(s.n) != 5 || len(res.DeadLetters) != 0 {
		t.Fatalf("settled %v, %d failed first deliveries, %d dead letters; want all redelivered and processed", res.Settled, len(s.n), len(res.DeadLetters))
	}
}

func TestPermanentFailuresAndPanicsAreDeadLettered(t *testing.T) {
	res := bustest.RunHandler(t, func(m *message.Message) error {
		switch string(m.Payload) {
		case `{"n":1}`:
			return bus.Permanent(errors.New("undecodable"))
		case `{"n":2}`:
			panic("handler bug")
		}
		return nil
	}, events(4), bus.RouterConfig{Retries: 1, RetryInitial: time.Millisecond, MaxDeliveries: 2, NakInitial: 10 * time.Millisecond}, 30*time.Second)
	if !res.Settled || len(res.DeadLetters) != 2 {
		t.Fatalf("settled %v, dead letters %+v; want the permanent failure and the panic dead-lettered", res.Settled, res.DeadLetters)
	}
	reasons := map[uint64]string{}
	for _, d := range res.DeadLetters {
		reasons[d.Seq] = d.Reason
		if d.Subject != "events.smtp.ehlo" {
			t.Errorf("dead letter %d has subject %q", d.Seq, d.Subject)
		}
	}
	if !strings.Contains(reasons[2], "undecodable") || !strings.Contains(reasons[3], "panic") {
		t.Fatalf("reasons %v: want the handler's error for sequence 2 and the panic for 3", reasons)
	}
}
