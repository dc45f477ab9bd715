package event

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
)

// readAll reads every event of body through a StalwartReader fed by r.
func readAll(r io.Reader, maxEvent int) (evs []string, tooLarge []int, err error) {
	s := NewStalwartReader(r, maxEvent)
	for i := 0; ; i++ {
		ev, err := s.Next()
		switch {
		case err == io.EOF:
			return evs, tooLarge, nil
		case errors.Is(err, ErrEventTooLarge):
			tooLarge = append(tooLarge, i)
		case err != nil:
			return evs, tooLarge, err
		default:
			evs = append(evs, string(ev))
		}
	}
}

func split(t *testing.T, body []byte) []string {
	t.Helper()
	raw, err := SplitStalwart(body, 1<<30)
	if err != nil {
		t.Fatalf("SplitStalwart: %v", err)
	}
	out := make([]string, len(raw))
	for i, r := range raw {
		out[i] = string(r)
	}
	return out
}

func TestStalwartReaderMatchesSplit(t *testing.T) {
	bodies := map[string][]byte{
		"other members first and last": []byte(` { "x" : {"events":[1]}, "events" : [ {"id":"1","data":{"a":"]}\"["}} ,{"id":"2"},[],"s",12.5e3,true,null ] , "y":[[],{}], "events":[{"dup":1}] } `),
	}
	for _, name := range []string{"stalwart-0.15.json", "stalwart-0.16.json"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		bodies[name] = b
	}
	for name, body := range bodies {
		want := split(t, body)
		readers := map[string]func() io.Reader{
			"whole":         func() io.Reader { return bytes.NewReader(body) },
			"one byte each": func() io.Reader { return iotest.OneByteReader(bytes.NewReader(body)) },
			"half":          func() io.Reader { return iotest.HalfReader(bytes.NewReader(body)) },
		}
		for how, r := range readers {
			got, tooLarge, err := readAll(r(), 1<<20)
			if err != nil || len(tooLarge) > 0 {
				t.Fatalf("%s, %s: err %v, too large %v", name, how, err, tooLarge)
			}
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("%s, %s: events\n%q\nwant (SplitStalwart)\n%q", name, how, got, want)
			}
		}
	}
}

func TestStalwartReaderRefusesBrokenBodies(t *testing.T) {
	deep := `{"events":[{"data":` + strings.Repeat("[", 18) + strings.Repeat("]", 18) + `}]}`
	for _, tc := range []struct {
		name, body string
		want       error
		says       string
	}{
		{"empty", "", ErrMalformed, "want Stalwart's"},
		{"an array", `[{"id":"1"}]`, ErrMalformed, "want Stalwart's"},
		{"no events", `{"x":[1]}`, ErrMalformed, "want Stalwart's"},
		{"events not an array", `{"events":{"id":"1"}}`, ErrMalformed, "want Stalwart's"},
		{"no events at all", `{"events":[]}`, ErrEmptyBatch, "no events"},
		{"brackets that do not match", `{"events":[{"a":[}]}`, ErrMalformed, "do not match"},
		{"missing comma", `{"events":[{} {}]}`, ErrMalformed, "want ',' or ']'"},
		{"cut in an event", `{"events":[{"id":"1"`, ErrMalformed, "ends"},
		{"cut in a string", `{"events":[{"id":"1`, ErrMalformed, "ends"},
		{"cut after the array", `{"events":[{}]`, ErrMalformed, "ends early"},
		{"data after the object", `{"events":[{}]} {}`, ErrMalformed, "after the object"},
		{"nested too deep", deep, ErrMalformed, "nested deeper than 19"},
		{"trailing comma", `{"events":[{},]}`, ErrMalformed, "want a value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := readAll(strings.NewReader(tc.body), 1<<20)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("reading %q: %v, want %v saying %q", tc.body, err, tc.want, tc.says)
			}
			if _, serr := SplitStalwart([]byte(tc.body), 1<<30); serr == nil {
				t.Errorf("SplitStalwart accepts %q, which the reader refuses", tc.body)
			}
		})
	}
}

// An event over the bound is skipped alone; the events around it are read, and the
// reader never holds more than the bound.
func TestStalwartReaderSkipsAnEventTooLarge(t *testing.T) {
	huge := `{"id":"2","data":{"x":"` + strings.Repeat("y", 3<<20) + `"}}`
	body := `{"events":[{"id":"1"},` + huge + `,{"id":"3"}]}`
	s := NewStalwartReader(iotest.HalfReader(strings.NewReader(body)), 1<<20)
	got, tooLarge, err := readAll(iotest.HalfReader(strings.NewReader(body)), 1<<20)
	if err != nil || len(got) != 2 || got[0] != `{"id":"1"}` || got[1] != `{"id":"3"}` || len(tooLarge) != 1 || tooLarge[0] != 1 {
		t.Fatalf("events %q, too large %v, err %v; want ids 1 and 3, event 1 too large", got, tooLarge, err)
	}
	for {
		if _, err := s.Next(); err == io.EOF {
			break
		}
	}
	if c := cap(s.elem); c > 2<<20 {
		t.Errorf("the reader grew a %d-byte buffer for an event it skipped", c)
	}
	if s.Events() != 3 {
		t.Errorf("Events() = %d, want 3", s.Events())
	}
}

func TestStalwartReaderPassesReadErrors(t *testing.T) {
	broken := errors.New("connection reset")
	r := io.MultiReader(strings.NewReader(`{"events":[{"id":"1"},{"id"`), iotest.ErrReader(broken))
	s := NewStalwartReader(r, 1<<20)
	if ev, err := s.Next(); err != nil || string(ev) != `{"id":"1"}` {
		t.Fatalf("first event: %q %v", ev, err)
	}
	if _, err := s.Next(); !errors.Is(err, broken) {
		t.Fatalf("Next after a read error = %v, want it wrapped", err)
	}
	if _, err := s.Next(); !errors.Is(err, broken) {
		t.Fatalf("Next again = %v, want the same error", err)
	}
}

// FuzzStalwartReader holds the streaming reader to SplitStalwart: where SplitStalwart
// accepts a body, the reader returns the same events, however the body is cut into reads.
func FuzzStalwartReader(f *testing.F) {
	for _, name := range []string{"stalwart-0.15.json", "stalwart-0.16.json"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"events":[{"a":"\"]"},[1,{"b":[]}],"x"],"more":{"events":3}}`))
	f.Add([]byte(`{"\u0065vents":[1],"events":[2]}`))
	f.Add([]byte(`{"events":[1 2]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		got, tooLarge, err := readAll(iotest.OneByteReader(bytes.NewReader(body)), 1<<20)
		raw, serr := SplitStalwart(body, 1<<30)
		if serr != nil {
			return // the reader may accept more (it leaves each event's JSON to the parser)
		}
		if err != nil || len(tooLarge) > 0 {
			t.Fatalf("SplitStalwart accepts %q; the reader: %v (too large: %v)", body, err, tooLarge)
		}
		if len(got) != len(raw) {
			t.Fatalf("%q: %d events, SplitStalwart %d", body, len(got), len(raw))
		}
		for i := range raw {
			if got[i] != string(raw[i]) {
				t.Fatalf("%q: event %d = %q, SplitStalwart %q", body, i, got[i], raw[i])
			}
		}
	})
}
