package livegateway

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/poll"
)

func TestNativeStreamDeliversFilteredEventsWithSequenceIDs(t *testing.T) {
	h := start(t, Config{}, false)
	c, resp := h.open("/api/v1/live/events?types=smtp.*&remote-ip=203.0.113", withKey(h.viewer))
	if c == nil {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" || resp.Header.Get("X-Accel-Buffering") != "no" {
		t.Errorf("headers: %v", resp.Header)
	}
	h.publish("imap.fetch", 3, `{"remoteIp":"203.0.113.7"}`)
	h.publish("smtp.ehlo", 2, `{"remoteIp":"198.51.100.1"}`)
	want := h.publish("smtp.rcpt-to", 3, `{"remoteIp":"203.0.113.7","to":["bob@example.org"]}`)
	var prev uint64
	for _, id := range want {
		f := c.next(t, "event")
		if got := eventID(t, f); got != id {
			t.Fatalf("got event %s, want %s (the others do not match the filter)", got, id)
		}
		seq, err := strconv.ParseUint(f.id, 10, 64)
		if err != nil || seq <= prev {
			t.Fatalf("id %q is not an increasing stream sequence", f.id)
		}
		prev = seq
	}
}

func TestResumeLosesAndRepeatsNothing(t *testing.T) {
	h := start(t, Config{}, false)
	c, _ := h.open("/api/v1/live/events?types=smtp.*", withKey(h.viewer))
	sent := h.publish("smtp.rcpt-to", 20, `{"n":1}`)
	var got []string
	lastID := ""
	for range 10 {
		f := c.next(t, "event")
		got = append(got, eventID(t, f))
		lastID = f.id
	}
	c.close()
	// While the client is away, more events arrive, some of another type.
	sent = append(sent, h.publish("smtp.rcpt-to", 30, `{"n":2}`)...)
	h.publish("imap.fetch", 5, `{}`)
	c2, resp := h.open("/api/v1/live/events?types=smtp.*", map[string]string{"Authorization": "Bearer " + h.viewer, "Last-Event-ID": lastID})
	if c2 == nil {
		t.Fatalf("resume: %d", resp.StatusCode)
	}
	// And more while it replays and after.
	pubErr := make(chan error, 1)
	go func() { _, err := h.tryPublish("smtp.rcpt-to", 40, `{"n":3}`); pubErr <- err }()
	for len(got) < 90 {
		got = append(got, eventID(t, c2.next(t, "event")))
	}
	sent = append(sent, func() []string {
		var ids []string
		for i := 56; i <= 95; i++ { // the 40 published by the goroutine: e56..e95
			ids = append(ids, fmt.Sprintf("e%d", i))
		}
		return ids
	}()...)
	if err := <-pubErr; err != nil {
		t.Fatalf("publish during the replay: %v", err)
	}
	seen := map[string]int{}
	for _, id := range got {
		seen[id]++
	}
	for _, id := range sent {
		if seen[id] != 1 {
			t.Errorf("event %s delivered %d times, want exactly once", id, seen[id])
		}
	}
	// Nothing else comes before a marker published last.
	marker := h.publish("smtp.quit", 1, `{}`)[0]
	if f := c2.next(t, "event"); eventID(t, f) != marker {
		t.Errorf("unexpected extra event %s before the marker", f.data)
	}
}

func TestResumeByTimeAndGaps(t *testing.T) {
	h := start(t, Config{}, false)
	before := time.Now().Add(-time.Second)
	h.publish("auth.failed", 5, `{}`)
	c, _ := h.open("/api/v1/live/events?since="+before.UTC().Format(time.RFC3339Nano), withKey(h.viewer))
	for range 5 {
		c.next(t, "event")
	}
	c.close()
	c, _ = h.open("/api/v1/live/events", map[string]string{"Authorization": "Bearer " + h.viewer, "Last-Event-ID": "999999"})
	if g := c.next(t, "gap"); !strings.Contains(g.data, "past the end") {
		t.Errorf("gap = %s", g.data)
	}
	h.publish("auth.failed", 1, `{}`)
	c.next(t, "event") // it goes on live
	c.close()

	// Events the log no longer holds.
	st, _ := h.pub.JetStream().Stream(t.Context(), bus.StreamEvents)
	if err := st.Purge(t.Context()); err != nil {
		t.Fatal(err)
	}
	h.publish("auth.failed", 2, `{}`)
	c, _ = h.open("/api/v1/live/events", map[string]string{"Authorization": "Bearer " + h.viewer, "Last-Event-ID": "1"})
	if g := c.next(t, "gap"); !strings.Contains(g.data, "no longer holds") {
		t.Errorf("gap = %s", g.data)
	}
	c.next(t, "event")
	c.next(t, "event")
}

func TestStreamCapsAndDisconnects(t *testing.T) {
	h := start(t, Config{MaxStreamsPerKey: 2, MaxStreams: 3}, false)
	a, _ := h.open("/api/v1/live/events", withKey(h.viewer))
	b, _ := h.open("/api/v1/live/events", withKey(h.viewer))
	if _, resp := h.open("/api/v1/live/events", withKey(h.viewer)); resp.StatusCode != 429 {
		t.Errorf("third stream of a key: %d, want 429", resp.StatusCode)
	}
	c, _ := h.open("/api/v1/live/events", withKey(h.admin))
	if _, resp := h.open("/api/v1/live/events", withKey(h.admin)); resp.StatusCode != 429 {
		t.Errorf("stream past the total: %d, want 429", resp.StatusCode)
	}
	// Clients that go away give their slots back (idle streams notice on a heartbeat).
	a.close()
	b.close()
	c.close()
	poll.Until(t, "the streams of the clients that left to close", func() bool {
		return h.gw.openStreams() == 0 && h.gw.hub.count() == 0
	})
}

func TestSlowClientGetsDroppedEventAndOthersAreNotSlowed(t *testing.T) {
	h := start(t, Config{QueueSize: 16}, false)
	// A client that sends its request and never reads: its socket, then its queue, fill up.
	conn, err := net.Dial("tcp", h.gw.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /api/v1/live/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", h.viewer)
	fast, _ := h.open("/api/v1/live/events", withKey(h.admin))
	poll.Until(t, "the silent client's stream to open", func() bool { return h.gw.hub.count() == 2 })
	big := `{"details":"` + strings.Repeat("x", 8000) + `"}`
	for range 40 { // the log is not slowed: every publish is acknowledged
		h.publish("smtp.ehlo", 100, big)
	}
	// The reading client catches up: a marker published after the burst reaches it, and
	// whatever it lost on the way was reported to it, never silently skipped.
	got, reported := 0, 0
	markers := map[string]bool{}
	var lastMarker time.Time
	poll.Until(t, "a marker published after the burst to reach the reading client", func() bool {
		for {
			select {
			case f, ok := <-fast.frames:
				if !ok {
					t.Fatal("the reading client's stream ended")
				}
				switch f.event {
				case "event":
					got++
					if markers[eventID(t, f)] {
						return true
					}
				case "dropped":
					var d struct{ Dropped int }
					json.Unmarshal([]byte(f.data), &d)
					reported += d.Dropped
				}
			default:
				if time.Since(lastMarker) > 200*time.Millisecond { // one marker every 200 ms
					markers[h.publish("smtp.quit", 1, `{}`)[0]] = true
					lastMarker = time.Now()
				}
				return false
			}
		}
	})
	if got-1+reported < 4000 {
		t.Errorf("reading client: %d events + %d reported dropped < 4000 published", got, reported)
	}
	// The stuck client goes away in the middle of a frame: its stream ends and its slot is
	// given back.
	conn.Close()
	fast.close()
	poll.Until(t, "the streams of clients that left mid-frame to close", func() bool { return h.gw.openStreams() == 0 })
	if h.gw.hub.drops.Load() == 0 {
		t.Fatal("the slow stream lost nothing; the test did not fill its queue")
	}

	// A client that reads slowly is told how much it lost.
	h2 := start(t, Config{QueueSize: 16}, false)
	c, _ := h2.open("/api/v1/live/events", withKey(h2.viewer))
	cl := onlyClient(t, h2)
	for range 20 {
		cl.dropped.Add(1)
	}
	h2.publish("smtp.ehlo", 1, `{}`)
	if d := c.next(t, "dropped"); !strings.Contains(d.data, `"dropped":20`) {
		t.Errorf("dropped frame = %s", d.data)
	}
}

func TestNATSRestartWhileStreaming(t *testing.T) {
	h := start(t, Config{}, true)
	c, _ := h.open("/api/v1/live/events", withKey(h.viewer))
	h.publish("smtp.ehlo", 3, `{}`)
	for range 3 {
		c.next(t, "event")
	}
	h.srv.Restart()
	// Publishing fails until the client reconnects; retry until it works.
	msg := bus.Msg{Subject: "events.smtp.quit", ID: "after-restart", Data: event.Event{ID: "after-restart", CreatedAt: time.Now(), Type: "smtp.quit", Level: event.Info}.AppendJSON(nil)}
	poll.Until(t, "a publish after the restart to succeed", func() bool { return h.pub.Publish(t.Context(), msg) == nil })
	for {
		f := c.next(t, "event")
		if eventID(t, f) == "after-restart" {
			break
		}
	}
}

func TestStalwartFormats(t *testing.T) {
	h := start(t, Config{}, false)
	_, tok := get(t, h.url+"/api/token/tracing", withKey(h.viewer))
	c16, _ := h.open("/api/live/tracing?token="+tok+"&remoteIp=203.0.113", nil)
	if p := c16.next(t, "ping"); !strings.Contains(p.data, `"interval"`) {
		t.Errorf("0.16 ping = %s", p.data)
	}
	c15, _ := h.open("/api/telemetry/traces/live?remote-ip=203.0.113", withKey(h.viewer))
	h.publish("smtp.connection-start", 1, `{"spanId":"9","remoteIp":"203.0.113.7","localPort":25}`)
	h.publish("smtp.rcpt-to", 1, `{"spanId":"9","to":["b@example.org"],"size":10,"nextRetry":"2026-11-21T10:00:00Z","tls":true,"causedBy":{"type":"x.y","data":{"a":1}}}`)
	var items16 []struct {
		Event     string `json:"event"`
		Timestamp string `json:"timestamp"`
		KeyValues []struct {
			Key   string          `json:"key"`
			Value json.RawMessage `json:"value"`
		} `json:"keyValues"`
	}
	for len(items16) < 2 {
		var batch []json.RawMessage
		f := c16.next(t, "trace")
		if err := json.Unmarshal([]byte(f.data), &batch); err != nil {
			t.Fatalf("0.16 trace frame is not a JSON array: %s", f.data)
		}
		for _, b := range batch {
			var one struct {
				Event     string `json:"event"`
				Timestamp string `json:"timestamp"`
				KeyValues []struct {
					Key   string          `json:"key"`
					Value json.RawMessage `json:"value"`
				} `json:"keyValues"`
			}
			json.Unmarshal(b, &one)
			items16 = append(items16, one)
		}
	}
	rcpt := items16[1]
	if rcpt.Event != "smtp.rcpt-to" || rcpt.Timestamp == "" {
		t.Fatalf("0.16 item = %+v", rcpt)
	}
	types := map[string]string{}
	for _, kv := range rcpt.KeyValues {
		var v struct {
			Type string `json:"@type"`
		}
		json.Unmarshal(kv.Value, &v)
		types[kv.Key] = v.Type
	}
	// The event's own keys, as Stalwart's build_trace_events sends them (no span keys).
	for k, want := range map[string]string{"spanId": "UnsignedInt", "to": "List", "size": "UnsignedInt", "nextRetry": "UTCDateTime", "tls": "Boolean", "causedBy": "Event", "remoteIp": "", "localPort": ""} {
		if types[k] != want {
			t.Errorf("0.16 key %s typed %q, want %q", k, types[k], want)
		}
	}
	var items15 []map[string]any
	for len(items15) < 2 {
		f := c15.next(t, "trace")
		var batch []map[string]any
		if err := json.Unmarshal([]byte(f.data), &batch); err != nil {
			t.Fatalf("0.15 frame: %s", f.data)
		}
		items15 = append(items15, batch...)
	}
	if items15[1]["type"] != "smtp.rcpt-to" || items15[1]["text"] != "Recipient accepted" || items15[1]["data"].(map[string]any)["remoteIp"] != "203.0.113.7" {
		t.Errorf("0.15 item = %v", items15[1])
	}
}

func TestShutdownEndsStreamsPromptly(t *testing.T) {
	h := start(t, Config{Heartbeat: time.Minute}, false)
	c, _ := h.open("/api/v1/live/events", withKey(h.viewer))
	done := make(chan struct{})
	go func() { h.stop(); close(done) }()
	c.next(t, "shutdown")
	poll.Within(t, 5*time.Second, "the gateway to stop without waiting for the stream", func() bool {
		select {
		case <-done:
			return true
		default:
			return false
		}
	})
}

func TestHopelesslySlowStreamIsClosed(t *testing.T) {
	h := start(t, Config{Hopeless: 300 * time.Millisecond}, false)
	c, _ := h.open("/api/v1/live/events", withKey(h.viewer))
	cl := onlyClient(t, h)
	// The stream keeps losing frames: its queue overflows every time the hub dispatches.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
				cl.dropped.Add(10)
				h.tryPublish("smtp.ehlo", 1, `{}`)
			}
		}
	}()
	if e := c.next(t, "error"); !strings.Contains(e.data, "cannot keep up") {
		t.Errorf("error frame = %s", e.data)
	}
	poll.Until(t, "the hopeless stream to close", func() bool { return h.gw.openStreams() == 0 })
}

// onlyClient returns the hub's one stream, once it is registered.
func onlyClient(t *testing.T, h *harness) *client { return newClient(t, h, nil) }

// newClient returns a stream that the hub registers and that is not among known.
func newClient(t *testing.T, h *harness, known map[*client]bool) *client {
	t.Helper()
	var cl *client
	poll.Until(t, "the stream to register with the hub", func() bool {
		for c := range h.clients() {
			if !known[c] {
				cl = c
			}
		}
		return cl != nil
	})
	return cl
}

// clients returns the streams registered with the hub.
func (h *harness) clients() map[*client]bool {
	h.gw.hub.mu.RLock()
	defer h.gw.hub.mu.RUnlock()
	out := map[*client]bool{}
	for c := range h.gw.hub.clients {
		out[c] = true
	}
	return out
}

// The log goes away in the middle of a resume: the stream must not go on live as if the
// resume were complete (it used to, skipping the rest of it in silence). It ends with an
// error frame naming what was missed, after which the client resumes from its last id.
func TestResumeThatFailsEndsWithAnErrorFrame(t *testing.T) {
	t.Parallel() // most of it is waiting for the read of a stopped log to give up
	h := start(t, Config{Heartbeat: time.Minute}, false)
	const n = 10_000
	h.publishBulk(n, 1000)
	r := h.openSlow("/api/v1/live/events", map[string]string{"Authorization": "Bearer " + h.viewer, "Last-Event-ID": "0"})
	if f, err := r.frame(); err != nil || f.event != "event" {
		t.Fatalf("first frame = %+v, %v", f, err)
	}
	// The client does not read while NATS stops: the resume is held up by its writes,
	// thousands of events from the end of its range.
	h.srv.Shutdown()
	last := uint64(1)
	for {
		f, err := r.frame()
		if err != nil {
			t.Fatalf("stream ended (%v) after event %d with no error frame", err, last)
		}
		if f.event == "event" {
			seq, _ := strconv.ParseUint(f.id, 10, 64)
			if seq != last+1 {
				t.Fatalf("event %d follows %d", seq, last)
			}
			last = seq
			continue
		}
		if f.event != "error" {
			t.Fatalf("%s frame during the resume: %s", f.event, f.data)
		}
		var e errorData
		if err := json.Unmarshal([]byte(f.data), &e); err != nil {
			t.Fatalf("error frame %s: %v", f.data, err)
		}
		if e.LastSequence != last || e.From != last+1 || e.To != n || e.Error == "" {
			t.Fatalf("error frame %s after event %d; want lastSequence %d, from %d, to %d", f.data, last, last, last+1, n)
		}
		break
	}
	if last >= n {
		t.Fatalf("the whole resume was delivered before NATS stopped; the test proves nothing")
	}
	if f, err := r.frame(); err != io.EOF {
		t.Fatalf("after the error frame: %+v, %v; want the end of the stream", f, err)
	}
}

// A purge in the middle of a resume: the events it removed before they were read are named
// in a gap frame, and the stream goes on, with nothing repeated.
func TestResumeReportsAPurgeMidwayAndGoesOn(t *testing.T) {
	h := start(t, Config{Heartbeat: time.Minute}, false)
	const n, purgeTo = 10_000, 9_900 // the purge keeps sequences from purgeTo on
	h.publishBulk(n, 1000)
	r := h.openSlow("/api/v1/live/events", map[string]string{"Authorization": "Bearer " + h.viewer, "Last-Event-ID": "0"})
	if f, err := r.frame(); err != nil || f.id != "1" {
		t.Fatalf("first frame = %+v, %v", f, err)
	}
	seen := map[uint64]int{1: 1}
	// The client does not read while the log drops events the resume has not reached.
	st, _ := h.pub.JetStream().Stream(t.Context(), bus.StreamEvents)
	if err := st.Purge(t.Context(), jetstream.WithPurgeSequence(purgeTo)); err != nil {
		t.Fatal(err)
	}
	var gaps []gapData
	var marker string
	for seen[n+1] == 0 {
		f, err := r.frame()
		if err != nil {
			t.Fatalf("stream ended: %v", err)
		}
		switch f.event {
		case "gap":
			var g gapData
			if err := json.Unmarshal([]byte(f.data), &g); err != nil || g.From == 0 || g.To < g.From {
				t.Fatalf("gap frame %s", f.data)
			}
			gaps = append(gaps, g)
			for s := g.From; s <= g.To; s++ {
				seen[s]++
			}
		case "event":
			seq, _ := strconv.ParseUint(f.id, 10, 64)
			seen[seq]++
			if seq == n {
				// The resume is over: the stream goes on live.
				marker = h.publish("smtp.quit", 1, `{}`)[0]
			}
			if seq == n+1 && eventID(t, f) != marker {
				t.Fatalf("event %d is %s, want the marker", seq, f.data)
			}
		default:
			t.Fatalf("%s frame: %s", f.event, f.data)
		}
	}
	if len(gaps) == 0 || gaps[len(gaps)-1].To != purgeTo-1 {
		t.Fatalf("gaps %+v; want one ending at %d, the last purged sequence", gaps, purgeTo-1)
	}
	for s := uint64(1); s <= n+1; s++ {
		if seen[s] != 1 {
			t.Fatalf("sequence %d sent or reported %d times, want once", s, seen[s])
		}
	}
}
