package livegateway

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/mailpulse/mailpulse/shared/apikey"
	"github.com/mailpulse/mailpulse/shared/broker/brokertest"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/event"
)

type harness struct {
	t      *testing.T
	srv    *brokertest.Server
	nc     *nats.Conn
	pub    *bus.Publisher
	gw     *Service
	url    string
	viewer string
	admin  string
	ingest string
	keys   *apikey.Store
	stop   func()
	n      int
}

func start(t *testing.T, cfg Config, tcp bool) *harness {
	t.Helper()
	h := &harness{t: t}
	var nc *nats.Conn
	if tcp {
		h.srv = brokertest.StartTCP(t)
		var err error
		nc, err = nats.Connect(h.srv.ClientURL(), append(bus.ConnectOptions("test", nil), nats.UserInfo(brokertest.User, brokertest.Password))...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
	} else {
		h.srv = brokertest.Start(t)
		nc = h.srv.Conn()
	}
	pub, err := bus.NewPublisher(nc, bus.PublisherConfig{AckTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	h.pub, h.nc = pub, nc
	if err := bus.Provision(t.Context(), pub.JetStream(), bus.Limits{}, nil); err != nil {
		t.Fatal(err)
	}
	kv, _ := pub.JetStream().KeyValue(t.Context(), bus.BucketKeys)
	h.keys, err = apikey.Open(t.Context(), kv, nil)
	if err != nil {
		t.Fatal(err)
	}
	h.viewer, _, _ = h.keys.Create(t.Context(), "v", apikey.Viewer)
	h.admin, _, _ = h.keys.Create(t.Context(), "a", apikey.Admin)
	h.ingest, _, _ = h.keys.Create(t.Context(), "i", apikey.Ingest)
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = 200 * time.Millisecond
	}
	if cfg.StalwartBatch == 0 {
		cfg.StalwartBatch = 100 * time.Millisecond
	}
	cfg.Grace = 5 * time.Second
	h.gw, err = New(t.Context(), cfg, Deps{Conn: nc, Keys: h.keys})
	if err != nil {
		t.Fatal(err)
	}
	h.url = "http://" + h.gw.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.gw.Run(ctx) }()
	stopped := false
	h.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run = %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("gateway did not stop within 15 s")
		}
	}
	t.Cleanup(h.stop)
	select {
	case <-h.gw.hub.ready:
	case <-time.After(10 * time.Second):
		t.Fatal("live consumer not ready")
	}
	return h
}

// publish stores events of the given type with data, and returns their ids.
func (h *harness) publish(typ string, n int, data string) []string {
	h.t.Helper()
	ids, err := h.tryPublish(typ, n, data)
	if err != nil {
		h.t.Fatalf("publish: %v", err)
	}
	return ids
}

// tryPublish is publish for goroutines other than the test's.
func (h *harness) tryPublish(typ string, n int, data string) ([]string, error) {
	var ids []string
	msgs := make([]bus.Msg, n)
	for i := range n {
		h.n++
		e := event.Event{ID: fmt.Sprintf("e%d", h.n), CreatedAt: time.Now(), Type: typ, Level: event.DefaultLevel(typ), Source: "mx1", Data: event.Data(data)}
		msgs[i] = bus.Msg{Subject: e.Subject(), ID: e.ID, Data: e.AppendJSON(nil)}
		ids = append(ids, e.ID)
	}
	errs := make([]error, n)
	h.pub.PublishAll(context.Background(), msgs, errs)
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return ids, nil
}

type sseFrame struct {
	id, event, data string
}

type sseClient struct {
	resp   *http.Response
	frames chan sseFrame
	cancel context.CancelFunc
}

func (h *harness) open(path string, hdr map[string]string) (*sseClient, *http.Response) {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.url+path, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		h.t.Fatalf("GET %s: %v", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		cancel()
		return nil, resp
	}
	c := &sseClient{resp: resp, frames: make(chan sseFrame, 100_000), cancel: cancel}
	go func() {
		defer close(c.frames)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 8<<20)
		var f sseFrame
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if f.event != "" || f.data != "" {
					c.frames <- f
				}
				f = sseFrame{}
			case strings.HasPrefix(line, "id: "):
				f.id = line[4:]
			case strings.HasPrefix(line, "event: "):
				f.event = line[7:]
			case strings.HasPrefix(line, "data: "):
				f.data = line[6:]
			}
		}
	}()
	h.t.Cleanup(c.close)
	return c, resp
}

func (c *sseClient) close() { c.cancel(); c.resp.Body.Close() }

// next returns the next frame of the named kind, skipping others.
func (c *sseClient) next(t *testing.T, kind string) sseFrame {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case f, ok := <-c.frames:
			if !ok {
				t.Fatalf("stream ended while waiting for a %s frame", kind)
			}
			if f.event == kind {
				return f
			}
		case <-timeout:
			t.Fatalf("no %s frame within 10 s", kind)
		}
	}
}

func withKey(key string) map[string]string {
	return map[string]string{"Authorization": "Bearer " + key}
}

func eventID(t *testing.T, f sseFrame) string {
	t.Helper()
	var e struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(f.data), &e); err != nil {
		t.Fatalf("frame data is not an event: %q", f.data)
	}
	return e.ID
}

func get(t *testing.T, url string, hdr map[string]string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

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

func TestAuthTokensAndBadInput(t *testing.T) {
	h := start(t, Config{}, false)
	for _, tc := range []struct {
		name string
		path string
		hdr  map[string]string
		code int
	}{
		{"no key", "/api/v1/live/events", nil, 401},
		{"wrong key", "/api/v1/live/events", withKey("mpk_x_y"), 401},
		{"ingest key", "/api/v1/live/events", withKey(h.ingest), 403},
		{"bad level", "/api/v1/live/events?level=loud", withKey(h.viewer), 400},
		{"bad wildcard", "/api/v1/live/events?types=sm*tp.x", withKey(h.viewer), 400},
		{"filter too long", "/api/v1/live/events?filter=" + strings.Repeat("x", 300), withKey(h.viewer), 400},
		{"garbage Last-Event-ID", "/api/v1/live/events", map[string]string{"Authorization": "Bearer " + h.viewer, "Last-Event-ID": "yesterday"}, 400},
		{"garbage since", "/api/v1/live/events?since=soon", withKey(h.viewer), 400},
		{"garbage token", "/api/live/tracing?token=abc.def", nil, 401},
		{"keys need admin", "/api/v1/keys", withKey(h.viewer), 403},
	} {
		c, resp := h.open(tc.path, tc.hdr)
		if c != nil {
			c.close()
			t.Errorf("%s: status 200, want %d", tc.name, tc.code)
			continue
		}
		if resp.StatusCode != tc.code {
			t.Errorf("%s: status %d, want %d", tc.name, resp.StatusCode, tc.code)
		}
		resp.Body.Close()
	}
	if code, _ := get(t, h.url+"/healthz", nil); code != 200 {
		t.Errorf("/healthz = %d", code)
	}

	// 0.15 token route (JSON) and 0.16 (plain text); a token opens only its purpose.
	code, body := get(t, h.url+"/api/telemetry/live/tracing-token", withKey(h.viewer))
	var tj struct{ Data string }
	if code != 200 || json.Unmarshal([]byte(body), &tj) != nil || tj.Data == "" {
		t.Fatalf("0.15 token route = %d %s", code, body)
	}
	c, resp := h.open("/api/telemetry/traces/live?token="+tj.Data, nil)
	if c == nil {
		t.Fatalf("stream with a tracing token: %d", resp.StatusCode)
	}
	c.close()
	_, metricsTok := get(t, h.url+"/api/token/metrics", withKey(h.viewer))
	if _, resp := h.open("/api/live/tracing?token="+metricsTok, nil); resp.StatusCode != 401 {
		t.Errorf("metrics token on a tracing stream: %d, want 401", resp.StatusCode)
	}
	// An expired token.
	old := h.gw.tokens.now
	h.gw.tokens.now = func() time.Time { return time.Now().Add(-2 * time.Minute) }
	_, expired := get(t, h.url+"/api/token/tracing", withKey(h.viewer))
	h.gw.tokens.now = old
	if _, resp := h.open("/api/live/tracing?token="+expired, nil); resp.StatusCode != 401 {
		t.Errorf("expired token: %d, want 401", resp.StatusCode)
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
	select {
	case f := <-c2.frames:
		if f.event == "event" {
			t.Errorf("unexpected extra event %s", f.data)
		}
	case <-time.After(300 * time.Millisecond):
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
	deadline := time.Now().Add(10 * time.Second)
	for h.gw.openStreams() != 0 || h.gw.hub.count() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d streams still open after their clients left", h.gw.openStreams())
		}
		time.Sleep(20 * time.Millisecond)
	}
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
	deadline0 := time.Now().Add(5 * time.Second)
	for h.gw.hub.count() < 2 {
		if time.Now().After(deadline0) {
			t.Fatal("the silent client's stream did not open")
		}
		time.Sleep(10 * time.Millisecond)
	}
	big := `{"details":"` + strings.Repeat("x", 8000) + `"}`
	for range 40 { // the log is not slowed: every publish is acknowledged
		h.publish("smtp.ehlo", 100, big)
	}
	// The reading client catches up: a marker published after the burst reaches it, and
	// whatever it lost on the way was reported to it, never silently skipped.
	got, reported := 0, 0
	markers := map[string]bool{}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(20 * time.Second)
	for done := false; !done; {
		select {
		case f, ok := <-fast.frames:
			if !ok {
				t.Fatal("the reading client's stream ended")
			}
			switch f.event {
			case "event":
				got++
				done = markers[eventID(t, f)]
			case "dropped":
				var d struct{ Dropped int }
				json.Unmarshal([]byte(f.data), &d)
				reported += d.Dropped
			}
		case <-tick.C:
			markers[h.publish("smtp.quit", 1, `{}`)[0]] = true
		case <-timeout:
			t.Fatalf("the reading client got %d events and none of the markers published after the burst", got)
		}
	}
	if got-1+reported < 4000 {
		t.Errorf("reading client: %d events + %d reported dropped < 4000 published", got, reported)
	}
	// The stuck client goes away in the middle of a frame: its stream ends and its slot is
	// given back.
	conn.Close()
	fast.close()
	closeBy := time.Now().Add(15 * time.Second)
	for h.gw.openStreams() != 0 {
		if time.Now().After(closeBy) {
			t.Fatalf("%d streams still open after their clients left mid-frame", h.gw.openStreams())
		}
		time.Sleep(20 * time.Millisecond)
	}
	deadline := time.Now().Add(10 * time.Second)
	for h.gw.hub.drops.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the slow stream lost nothing; the test did not fill its queue")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// A client that reads slowly is told how much it lost.
	h2 := start(t, Config{QueueSize: 16}, false)
	c, _ := h2.open("/api/v1/live/events", withKey(h2.viewer))
	h2.gw.hub.mu.Lock() // hold dispatch while the queue fills, as a stuck writer would
	var cl *client
	for x := range h2.gw.hub.clients {
		cl = x
	}
	h2.gw.hub.mu.Unlock()
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
	deadline := time.Now().Add(30 * time.Second)
	for {
		msg := bus.Msg{Subject: "events.smtp.quit", ID: "after-restart", Data: event.Event{ID: "after-restart", CreatedAt: time.Now(), Type: "smtp.quit", Level: event.Info}.AppendJSON(nil)}
		if err := h.pub.Publish(t.Context(), msg); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("could not publish after the restart")
		}
		time.Sleep(100 * time.Millisecond)
	}
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
	h.publish("smtp.rcpt-to", 1, `{"spanId":"9","to":["b@example.org"],"size":10,"when":"2026-11-21T10:00:00Z","tls":true,"causedBy":{"type":"x.y","data":{"a":1}}}`)
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
	for k, want := range map[string]string{"to": "List", "size": "UnsignedInt", "when": "UTCDateTime", "tls": "Boolean", "causedBy": "Event", "remoteIp": "String", "localPort": "UnsignedInt"} {
		if types[k] != want {
			t.Errorf("0.16 key %s typed %q, want %q (span keys merged)", k, types[k], want)
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

func TestKeysAPI(t *testing.T) {
	h := start(t, Config{}, false)
	req, _ := http.NewRequest(http.MethodPost, h.url+"/api/v1/keys", strings.NewReader(`{"name":"grafana","role":"viewer"}`))
	req.Header.Set("Authorization", "Bearer "+h.admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 201 {
		t.Fatalf("create key: %v %v", resp.StatusCode, err)
	}
	var created struct{ ID, Key string }
	json.NewDecoder(resp.Body).Decode(&created)
	resp.Body.Close()
	if c, _ := h.open("/api/v1/live/events", withKey(created.Key)); c == nil {
		t.Fatal("the new key cannot open a stream")
	}
	code, body := get(t, h.url+"/api/v1/keys", withKey(h.admin))
	if code != 200 || !strings.Contains(body, "grafana") || strings.Contains(body, created.Key) || strings.Contains(body, "hash") {
		t.Errorf("list keys = %d %s", code, body)
	}
	for _, bad := range []string{`{"name":"x","role":"root"}`, `not json`} {
		req, _ := http.NewRequest(http.MethodPost, h.url+"/api/v1/keys", strings.NewReader(bad))
		req.Header.Set("Authorization", "Bearer "+h.admin)
		resp, _ := http.DefaultClient.Do(req)
		if resp.StatusCode != 400 {
			t.Errorf("create %s = %d, want 400", bad, resp.StatusCode)
		}
		resp.Body.Close()
	}
	req, _ = http.NewRequest(http.MethodDelete, h.url+"/api/v1/keys/"+created.ID, nil)
	req.Header.Set("Authorization", "Bearer "+h.admin)
	resp, _ = http.DefaultClient.Do(req)
	if resp.StatusCode != 204 {
		t.Errorf("revoke = %d", resp.StatusCode)
	}
	if _, resp := h.open("/api/v1/live/events", withKey(created.Key)); resp.StatusCode != 401 {
		t.Errorf("revoked key still opens streams: %d", resp.StatusCode)
	}
}

func TestShutdownEndsStreamsPromptly(t *testing.T) {
	h := start(t, Config{Heartbeat: time.Minute}, false)
	c, _ := h.open("/api/v1/live/events", withKey(h.viewer))
	done := make(chan struct{})
	go func() { h.stop(); close(done) }()
	c.next(t, "shutdown")
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("shutdown waited for the stream")
	}
}

func TestHopelesslySlowStreamIsClosed(t *testing.T) {
	h := start(t, Config{Hopeless: 300 * time.Millisecond}, false)
	c, _ := h.open("/api/v1/live/events", withKey(h.viewer))
	var cl *client
	for cl == nil {
		h.gw.hub.mu.RLock()
		for x := range h.gw.hub.clients {
			cl = x
		}
		h.gw.hub.mu.RUnlock()
		time.Sleep(10 * time.Millisecond)
	}
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
	deadline := time.Now().Add(5 * time.Second)
	for h.gw.openStreams() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the hopeless stream was not closed")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestHistoryWithoutArchiver(t *testing.T) {
	h := start(t, Config{}, false)
	if code, body := get(t, h.url+"/api/v1/events", withKey(h.viewer)); code != 503 || !strings.Contains(body, "no archiver") {
		t.Errorf("no archiver: %d %s", code, body)
	}
	if code, body := get(t, h.url+"/api/v1/events?limit=100000&level=loud", withKey(h.viewer)); code != 400 || !strings.Contains(body, "limit") || !strings.Contains(body, "level") {
		t.Errorf("bad query: %d %s", code, body)
	}
	if code, _ := get(t, h.url+"/api/v1/events", nil); code != 401 {
		t.Errorf("no key: %d", code)
	}
}

func TestReplayRange(t *testing.T) {
	h := start(t, Config{}, false)
	mk := func(id string, at time.Time, typ string) bus.Msg {
		e := event.Event{ID: id, CreatedAt: at, Type: typ, Level: event.Info, Source: "mx"}
		return bus.Msg{Subject: e.Subject(), ID: id, Data: e.AppendJSON(nil)}
	}
	now := time.Now().UTC()
	from, to := now.Add(-time.Hour), now.Add(-10*time.Minute)
	msgs := []bus.Msg{
		mk("before", from.Add(-time.Minute), "smtp.ehlo"),
		mk("in-1", from.Add(time.Minute), "smtp.ehlo"),
		mk("in-other-type", from.Add(2*time.Minute), "imap.fetch"),
		mk("in-2", to.Add(-time.Minute), "smtp.quit"),
		mk("after", to.Add(time.Minute), "smtp.ehlo"),
	}
	errs := make([]error, len(msgs))
	h.pub.PublishAll(t.Context(), msgs, errs)
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	q := "/api/v1/replay?types=smtp.*&from=" + from.Format(time.RFC3339Nano) + "&to=" + to.Format(time.RFC3339Nano)
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
	code, body = get(t, h.url+"/api/v1/replay?format=sse&from="+from.Format(time.RFC3339Nano), withKey(h.viewer))
	if code != 200 || strings.Count(body, "event: event") != 4 || !strings.Contains(body, `event: end`+"\n"+`data: {"events":4}`) {
		t.Errorf("SSE replay: %d\n%s", code, body)
	}
	for _, bad := range []string{"", "from=yesterday", "from=" + to.Format(time.RFC3339) + "&to=" + from.Format(time.RFC3339), "from=" + from.Format(time.RFC3339) + "&format=xml", "from=" + from.Format(time.RFC3339) + "&level=loud"} {
		if code, _ := get(t, h.url+"/api/v1/replay?"+bad, withKey(h.viewer)); code != 400 {
			t.Errorf("replay?%s = %d, want 400", bad, code)
		}
	}
}
