package livegateway

import (
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mailpulse/mailpulse/shared/event"
)

func TestReplayRange(t *testing.T) {
	h := start(t, Config{}, false)
	mk := func(id string, at time.Time, typ string) event.Event {
		return event.Event{ID: id, CreatedAt: at, Type: typ, Level: event.Info, Source: "mx"}
	}
	now := time.Now().UTC()
	from, to := now.Add(-time.Hour), now.Add(-10*time.Minute)
	h.publishEvents(
		mk("before", from.Add(-time.Minute), "smtp.ehlo"),
		mk("in-1", from.Add(time.Minute), "smtp.ehlo"),
		mk("in-other-type", from.Add(2*time.Minute), "imap.fetch"),
		mk("in-2", to.Add(-time.Minute), "smtp.quit"),
		mk("after", to.Add(time.Minute), "smtp.ehlo"),
	)
	q := "/api/v1/replay?types=smtp.*&start=" + from.Format(time.RFC3339Nano) + "&end=" + to.Format(time.RFC3339Nano)
	code, body := get(t, h.url+q, withKey(h.viewer))
	if code != 200 {
		t.Fatalf("replay: %d %s", code, body)
	}
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(body), "\n") {
		var e struct{ ID string }
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("NDJSON line %q: %v", line, err)
		}
		got = append(got, e.ID)
	}
	if strings.Join(got, ",") != "in-1,in-2" {
		t.Errorf("replayed %v, want in-1,in-2", got)
	}
	// Without to: up to the end of the log as it was; SSE framing with an end event.
	code, body = get(t, h.url+"/api/v1/replay?format=sse&start="+from.Format(time.RFC3339Nano), withKey(h.viewer))
	if code != 200 || strings.Count(body, "event: event") != 4 || !strings.Contains(body, `event: end`+"\n"+`data: {"events":4}`) {
		t.Errorf("SSE replay: %d\n%s", code, body)
	}
	for _, bad := range []string{"", "start=yesterday", "start=" + to.Format(time.RFC3339) + "&end=" + from.Format(time.RFC3339), "start=" + from.Format(time.RFC3339) + "&format=xml", "start=" + from.Format(time.RFC3339) + "&level=loud"} {
		if code, _ := get(t, h.url+"/api/v1/replay?"+bad, withKey(h.viewer)); code != 400 {
			t.Errorf("replay?%s = %d, want 400", bad, code)
		}
	}
}

// startReplayThatFails opens a replay of n events on a client that stops reading after the
// first, and stops NATS while the replay is held up by its writes.
func startReplayThatFails(t *testing.T, format string) (*slowReader, int) {
	t.Helper()
	h := start(t, Config{}, false)
	from := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339Nano)
	const n = 10_000
	h.publishBulk(n, 1000)
	r := h.openSlow("/api/v1/replay?format="+format+"&start="+from, withKey(h.viewer))
	if format == "sse" {
		if f, err := r.frame(); err != nil || f.event != "event" {
			t.Fatalf("first frame = %+v, %v", f, err)
		}
	} else if line, err := r.line(); err != nil || !strings.Contains(line, `"id":"e1"`) {
		t.Fatalf("first line = %.80q, %v", line, err)
	}
	h.srv.Shutdown()
	return r, n
}

// A replay whose read fails used to end as if complete (an end frame, a clean 200). In SSE
// it ends with an error frame saying how far it got.
func TestReplayThatFailsEndsWithAnErrorFrame(t *testing.T) {
	t.Parallel() // most of it is waiting for the read of a stopped log to give up
	r, n := startReplayThatFails(t, "sse")
	last := uint64(1)
	for {
		f, err := r.frame()
		if err != nil {
			t.Fatalf("stream ended (%v) after event %d with no error frame", err, last)
		}
		if f.event == "event" {
			last, _ = strconv.ParseUint(f.id, 10, 64)
			continue
		}
		var e errorData
		if f.event != "error" || json.Unmarshal([]byte(f.data), &e) != nil || e.LastSequence != last || e.Error == "" {
			t.Fatalf("%s frame %s after event %d; want an error frame with lastSequence %d", f.event, f.data, last, last)
		}
		break
	}
	if last >= uint64(n) {
		t.Fatal("the whole replay was sent before NATS stopped; the test proves nothing")
	}
	if f, err := r.frame(); err != io.EOF {
		t.Fatalf("after the error frame: %+v, %v; want the end", f, err)
	}
}

// In NDJSON, a failed replay ends with an error line and no end of the chunked body, so that
// a client reading to the end gets an error rather than a short result.
func TestReplayThatFailsEndsNDJSONUncleanly(t *testing.T) {
	t.Parallel() // most of it is waiting for the read of a stopped log to give up
	r, n := startReplayThatFails(t, "ndjson")
	events := 1
	for {
		line, err := r.line()
		if err != nil {
			t.Fatalf("body ended (%v) after %d events with no error line", err, events)
		}
		var e struct {
			ID           string  `json:"id"`
			Error        string  `json:"error"`
			LastSequence *uint64 `json:"lastSequence"`
		}
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("line %.80q: %v", line, err)
		}
		if e.ID != "" {
			events++
			continue
		}
		if e.Error == "" || e.LastSequence == nil || *e.LastSequence != uint64(events) {
			t.Fatalf("last line %s after %d events; want an error with lastSequence %d", line, events, events)
		}
		break
	}
	if events >= n {
		t.Fatal("the whole replay was sent before NATS stopped; the test proves nothing")
	}
	if rest, err := io.ReadAll(r.br); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("after the error line: %q, %v; want an unexpected EOF (no end of the chunked body)", rest, err)
	}
}
