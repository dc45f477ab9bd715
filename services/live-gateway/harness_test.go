package livegateway

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailpulse/mailpulse/shared/apikey"
	"github.com/mailpulse/mailpulse/shared/broker/brokertest"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/poll"
)

// A gateway on a real embedded NATS server, with keys of every role, served on a loopback
// port and stopped at the end of the test.
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
		// Tests that stop the server would have the default handler print every
		// asynchronous error of the subscriptions left behind.
		nc = h.srv.Conn(nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
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
	h.gw.readStall = time.Second // a read of a log that is gone fails in seconds
	h.url = "http://" + h.gw.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.gw.Run(ctx) }()
	var once sync.Once
	h.stop = func() { once.Do(func() { h.stopRun(cancel, done) }) }
	t.Cleanup(h.stop)
	poll.Until(t, "the live consumer to start", func() bool { return h.gw.ready() == nil })
	return h
}

// stopRun stops the gateway and checks that Run returns, in time and without an error.
func (h *harness) stopRun(cancel context.CancelFunc, done <-chan error) {
	t := h.t
	{
		cancel()
		var err error
		if !poll.Wait(15*time.Second, func() bool {
			select {
			case err = <-done:
				return true
			default:
				return false
			}
		}) {
			t.Error("gateway did not stop within 15 s")
		} else if err != nil {
			t.Errorf("Run = %v", err)
		}
	}
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
	evs := make([]event.Event, n)
	for i := range evs {
		h.n++
		evs[i] = event.Event{ID: fmt.Sprintf("e%d", h.n), CreatedAt: time.Now(), Type: typ, Level: event.DefaultLevel(typ), Source: "mx1", Data: event.Data(data)}
	}
	return h.tryPublishEvents(evs...)
}

// publishEvents stores the events as they are.
func (h *harness) publishEvents(evs ...event.Event) {
	h.t.Helper()
	if _, err := h.tryPublishEvents(evs...); err != nil {
		h.t.Fatalf("publish: %v", err)
	}
}

// tryPublishEvents stores the events with the jetstream API itself (the test's publisher, not
// the one under test elsewhere), a window at a time.
func (h *harness) tryPublishEvents(evs ...event.Event) ([]string, error) {
	var ids []string
	js := h.pub.JetStream()
	const window = 1000
	for len(evs) > 0 {
		part := evs[:min(window, len(evs))]
		evs = evs[len(part):]
		acks := make([]jetstream.PubAckFuture, len(part))
		for i, e := range part {
			msg := &nats.Msg{Subject: e.Subject(), Data: e.AppendJSON(nil), Header: nats.Header{jetstream.MsgIDHeader: []string{e.ID}}}
			var err error
			if acks[i], err = js.PublishMsgAsync(msg); err != nil {
				return nil, err
			}
			ids = append(ids, e.ID)
		}
		for _, a := range acks {
			select {
			case <-a.Ok():
			case err := <-a.Err():
				return nil, err
			case <-time.After(30 * time.Second):
				return nil, errors.New("publish: no acknowledgement within 30 s")
			}
		}
	}
	return ids, nil
}

// publishBulk stores n events of about size bytes each, and waits until the hub has
// dispatched them (so that a stream opened next resumes them from the log).
func (h *harness) publishBulk(n, size int) {
	h.t.Helper()
	data := `{"details":"` + strings.Repeat("x", size) + `"}`
	h.publish("smtp.ehlo", n, data)
	last := h.lastSeq()
	poll.Until(h.t, "the hub to dispatch the events", func() bool { return h.gw.hub.lastSeq.Load() >= last })
}

// lastSeq is the log's last sequence.
func (h *harness) lastSeq() uint64 {
	h.t.Helper()
	_, last, err := bus.Bounds(h.t.Context(), h.pub.JetStream(), bus.StreamEvents)
	if err != nil {
		h.t.Fatal(err)
	}
	return last
}

// testClient makes one connection per request, so that no idle connection outlives a test.
var testClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// sseFrame is one block of an SSE stream: a frame (event, data) or a comment or retry line.
type sseFrame struct {
	id, event, data string
	raw             string // the block as sent, with its blank line
}

// readFrame reads the next block of a stream.
func readFrame(br *bufio.Reader) (sseFrame, error) {
	var f sseFrame
	var raw strings.Builder
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return f, err
		}
		raw.WriteString(line)
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "":
			if raw.Len() == 1 { // a lone blank line
				raw.Reset()
				continue
			}
			f.raw = raw.String()
			return f, nil
		case strings.HasPrefix(line, "id: "):
			f.id = line[4:]
		case strings.HasPrefix(line, "event: "):
			f.event = line[7:]
		case strings.HasPrefix(line, "data: "):
			f.data = line[6:]
		}
	}
}

// sseClient reads a stream in the background; next picks frames of a kind.
type sseClient struct {
	resp   *http.Response
	frames chan sseFrame
	cancel context.CancelFunc
}

func (h *harness) open(path string, hdr map[string]string) (*sseClient, *http.Response) {
	h.t.Helper()
	resp, cancel := h.request(path, hdr, testClient)
	if resp.StatusCode != http.StatusOK {
		cancel()
		resp.Body.Close()
		return nil, resp
	}
	c := &sseClient{resp: resp, frames: make(chan sseFrame, 100_000), cancel: cancel}
	go func() {
		defer close(c.frames)
		br := bufio.NewReader(resp.Body)
		for {
			f, err := readFrame(br)
			if err != nil {
				return
			}
			if f.event != "" || f.data != "" {
				c.frames <- f
			}
		}
	}()
	h.t.Cleanup(c.close)
	return c, resp
}

func (h *harness) request(path string, hdr map[string]string, client *http.Client) (*http.Response, context.CancelFunc) {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.url+path, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		cancel()
		h.t.Fatalf("GET %s: %v", path, err)
	}
	return resp, cancel
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

// slowReader reads a response only when asked: while the test does not read, the gateway's
// writes back up once the socket buffers are full (a few MB: the receive buffer does not grow
// while nothing is read).
type slowReader struct {
	resp   *http.Response
	br     *bufio.Reader
	cancel context.CancelFunc
}

func (h *harness) openSlow(path string, hdr map[string]string) *slowReader {
	h.t.Helper()
	resp, cancel := h.request(path, hdr, testClient)
	// A stream that stops sending fails the test's read instead of hanging it.
	deadline := time.AfterFunc(time.Minute, cancel)
	h.t.Cleanup(func() { deadline.Stop(); cancel(); resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		h.t.Fatalf("GET %s: %d", path, resp.StatusCode)
	}
	return &slowReader{resp: resp, br: bufio.NewReader(resp.Body), cancel: cancel}
}

func (r *slowReader) close() { r.cancel(); r.resp.Body.Close() }

func (r *slowReader) frame() (sseFrame, error) {
	for {
		f, err := readFrame(r.br)
		if err != nil || f.event != "" {
			return f, err
		}
	}
}

// line returns the next line without its newline, or the error that ended the body.
func (r *slowReader) line() (string, error) {
	s, err := r.br.ReadString('\n')
	if err != nil {
		return s, err
	}
	return strings.TrimSuffix(s, "\n"), nil
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
	code, _, body := getWithHeader(t, url, hdr)
	return code, body
}

func getWithHeader(t *testing.T, url string, hdr map[string]string) (int, http.Header, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: body: %v", url, err)
	}
	return resp.StatusCode, resp.Header, string(b)
}
