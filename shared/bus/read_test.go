package bus_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailpulse/mailpulse/shared/broker/brokertest"
	"github.com/mailpulse/mailpulse/shared/bus"
)

// logWith starts a server with the streams provisioned and n events on two subjects
// (events.a.x at odd sequences, events.b.y at even ones).
func logWith(t *testing.T, n int) (*brokertest.Server, jetstream.JetStream) {
	t.Helper()
	s := brokertest.Start(t)
	js, err := jetstream.New(s.Conn())
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Provision(t.Context(), js, bus.Limits{}, nil); err != nil {
		t.Fatal(err)
	}
	publish(t, js, n)
	return s, js
}

func publish(t *testing.T, js jetstream.JetStream, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		subj := "events.a.x"
		if i%2 == 1 {
			subj = "events.b.y"
		}
		if _, err := js.PublishAsync(subj, []byte(fmt.Sprintf(`{"n":%d}`, i))); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		t.Fatal("publishes not acknowledged")
	}
}

func TestReadRangeToTheEndAsOfTheCall(t *testing.T) {
	_, js := logWith(t, 3000)
	var got []uint64
	res, err := bus.ReadRange(t.Context(), js, bus.Range{Stream: bus.StreamEvents, AfterSeq: 1000}, func(m bus.Message) error {
		if len(got) == 0 {
			publish(t, js, 100) // arrives after the end the read fixed
		}
		got = append(got, m.Seq)
		return nil
	})
	if err != nil {
		t.Fatalf("ReadRange = %v", err)
	}
	if len(got) != 2000 || got[0] != 1001 || got[len(got)-1] != 3000 || res.End != 3000 || res.Last != 3000 {
		t.Fatalf("read %d messages %v…%v, result %+v; want 1001…3000", len(got), got[:1], got[len(got)-1:], res)
	}
	for i := 1; i < len(got); i++ {
		if got[i] != got[i-1]+1 {
			t.Fatalf("sequence %d follows %d", got[i], got[i-1])
		}
	}
}

func TestReadRangeFilteredWithSeqAndTimeBounds(t *testing.T) {
	_, js := logWith(t, 100)
	var got []uint64
	_, err := bus.ReadRange(t.Context(), js, bus.Range{Stream: bus.StreamEvents, Subjects: []string{"events.b.>"}, AfterSeq: 10, ToSeq: 20}, func(m bus.Message) error {
		got = append(got, m.Seq)
		return nil
	})
	if err != nil {
		t.Fatalf("ReadRange = %v", err)
	}
	want := []uint64{12, 14, 16, 18, 20}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("filtered range = %v, want %v", got, want)
	}

	// A time range: everything stored up to now, nothing after.
	cut := time.Now()
	publish(t, js, 10)
	n := 0
	if _, err := bus.ReadRange(t.Context(), js, bus.Range{Stream: bus.StreamEvents, FromTime: cut.Add(-time.Hour), ToTime: cut}, func(bus.Message) error { n++; return nil }); err != nil {
		t.Fatalf("ReadRange by time = %v", err)
	}
	if n != 100 {
		t.Fatalf("time range read %d messages, want the 100 stored before the cut", n)
	}
}

func TestReadRangeReportsTheStartTheLogNoLongerHolds(t *testing.T) {
	_, js := logWith(t, 100)
	st, _ := js.Stream(t.Context(), bus.StreamEvents)
	if err := st.Purge(t.Context(), jetstream.WithPurgeSequence(51)); err != nil {
		t.Fatal(err)
	}
	var gaps []bus.Gap
	n := 0
	_, err := bus.ReadRange(t.Context(), js, bus.Range{Stream: bus.StreamEvents, AfterSeq: 20,
		OnGap: func(g bus.Gap) error { gaps = append(gaps, g); return nil }}, func(bus.Message) error { n++; return nil })
	if err != nil {
		t.Fatalf("ReadRange = %v", err)
	}
	if len(gaps) != 1 || gaps[0] != (bus.Gap{From: 21, To: 50}) || n != 50 {
		t.Fatalf("gaps %v and %d messages, want one gap 21–50 and 50 messages", gaps, n)
	}
	// Without OnGap the read refuses to pretend.
	_, err = bus.ReadRange(t.Context(), js, bus.Range{Stream: bus.StreamEvents, AfterSeq: 20}, func(bus.Message) error { return nil })
	if !errors.Is(err, bus.ErrGap) {
		t.Fatalf("ReadRange without OnGap = %v, want ErrGap", err)
	}
	// Past the end.
	_, err = bus.ReadRange(t.Context(), js, bus.Range{Stream: bus.StreamEvents, AfterSeq: 500}, func(bus.Message) error { return nil })
	if !errors.Is(err, bus.ErrBeyondEnd) {
		t.Fatalf("ReadRange past the end = %v, want ErrBeyondEnd", err)
	}
}

// A purge while the read runs: every sequence of the range is either read or reported in a
// gap, never silently skipped.
func TestReadRangePurgeMidRead(t *testing.T) {
	for _, subjects := range [][]string{nil, {"events.>"}} {
		t.Run(fmt.Sprint(subjects), func(t *testing.T) {
			_, js := logWith(t, 6000)
			st, _ := js.Stream(t.Context(), bus.StreamEvents)
			covered := map[uint64]int{}
			gaps := 0
			_, err := bus.ReadRange(t.Context(), js, bus.Range{Stream: bus.StreamEvents, Subjects: subjects, AfterSeq: 0,
				OnGap: func(g bus.Gap) error {
					gaps++
					for s := g.From; s <= g.To; s++ {
						covered[s]++
					}
					return nil
				}}, func(m bus.Message) error {
				covered[m.Seq]++
				if m.Seq == 10 {
					if err := st.Purge(context.Background(), jetstream.WithPurgeSequence(4000)); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				t.Fatalf("ReadRange = %v", err)
			}
			if gaps == 0 {
				t.Fatal("a purge of unread messages was not reported")
			}
			for s := uint64(1); s <= 6000; s++ {
				if covered[s] != 1 {
					t.Fatalf("sequence %d read or reported %d times, want once", s, covered[s])
				}
			}
		})
	}
}

func TestReadRangeFailsWhenTheLogGoesAway(t *testing.T) {
	s, js := logWith(t, 5000)
	n := 0
	_, err := bus.ReadRange(t.Context(), js, bus.Range{Stream: bus.StreamEvents, Stall: time.Second}, func(bus.Message) error {
		if n++; n == 10 {
			s.Shutdown()
		}
		return nil
	})
	if err == nil || n >= 5000 {
		t.Fatalf("ReadRange with NATS stopped after %d messages = %v, want an error", n, err)
	}
	if !errors.Is(err, bus.ErrUnavailable) && !errors.Is(err, bus.ErrStalled) {
		t.Fatalf("ReadRange = %v, want ErrUnavailable or ErrStalled", err)
	}
}

func TestReadRangeHandlerErrorEndsTheRead(t *testing.T) {
	_, js := logWith(t, 100)
	stop := errors.New("enough")
	res, err := bus.ReadRange(t.Context(), js, bus.Range{Stream: bus.StreamEvents}, func(m bus.Message) error {
		if m.Seq == 5 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || res.Last != 4 {
		t.Fatalf("ReadRange = %v, last %d; want the handler's error after 4", err, res.Last)
	}
}
