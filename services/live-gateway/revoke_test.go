package livegateway

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailpulse/mailpulse/shared/apikey"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/poll"
)

// replica starts a second gateway on the same NATS, with its own view of the keys (as
// another process would have), and returns a harness whose url and gateway are its.
func (h *harness) replica(cfg Config) *harness {
	t := h.t
	kv, err := h.pub.JetStream().KeyValue(t.Context(), bus.BucketKeys)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := apikey.Open(t.Context(), kv, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Addr, cfg.Heartbeat, cfg.StalwartBatch, cfg.Grace = "127.0.0.1:0", 200*time.Millisecond, 100*time.Millisecond, 5*time.Second
	r := *h
	r.keys = keys
	r.gw, err = New(t.Context(), cfg, Deps{Conn: h.nc, Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	r.url = "http://" + r.gw.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.gw.Run(ctx) }()
	var once sync.Once
	r.stop = func() { once.Do(func() { r.stopRun(cancel, done) }) }
	t.Cleanup(r.stop)
	poll.Until(t, "the replica's live consumer to start", func() bool { return r.gw.ready() == nil })
	return &r
}

// TestRevokedKeyEndsItsStreamsOnEveryReplica: DELETE /api/v1/keys/<id> answered 204 while the
// key's streams kept delivering. Now every stream of the key, on this replica and the others,
// of every kind (native and Stalwart events, metrics, opened with the key or with one of its
// tokens), ends at once with an error frame; the streams of other keys go on.
func TestRevokedKeyEndsItsStreamsOnEveryReplica(t *testing.T) {
	h := start(t, Config{}, false)
	other := h.replica(Config{})
	doomed, k, err := h.keys.Create(t.Context(), "doomed", apikey.Viewer)
	if err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "the replica to know the new key", func() bool { _, ok := other.keys.Get(k.ID); return ok })
	_, tok := get(t, other.url+"/api/token/tracing", withKey(doomed))
	var doomedStreams []*sseClient
	for _, on := range []*harness{h, other} {
		for _, path := range []string{"/api/v1/live/events", "/api/telemetry/traces/live", "/api/live/metrics?interval=3600"} {
			c, resp := on.open(path, withKey(doomed))
			if c == nil {
				t.Fatalf("%s: %d", path, resp.StatusCode)
			}
			doomedStreams = append(doomedStreams, c)
		}
	}
	c, resp := other.open("/api/live/tracing?token="+tok, nil)
	if c == nil {
		t.Fatalf("stream with the key's token: %d", resp.StatusCode)
	}
	doomedStreams = append(doomedStreams, c)
	survivor, _ := other.open("/api/v1/live/events", withKey(h.viewer))

	req, _ := http.NewRequest(http.MethodDelete, h.url+"/api/v1/keys/"+k.ID, nil)
	req.Header.Set("Authorization", "Bearer "+h.admin)
	resp, err = testClient.Do(req)
	if err != nil || resp.StatusCode != 204 {
		t.Fatalf("revoke: %v %v", resp, err)
	}
	resp.Body.Close()
	for i, c := range doomedStreams {
		if f := c.next(t, "error"); !strings.Contains(f.data, "revoked") {
			t.Errorf("stream %d: error frame %s", i, f.data)
		}
		if !poll.Wait(10*time.Second, func() bool {
			select {
			case _, ok := <-c.frames:
				return !ok
			default:
				return false
			}
		}) {
			t.Errorf("stream %d still open after its key was revoked", i)
		}
	}
	h.publish("smtp.ehlo", 1, `{}`)
	if f := survivor.next(t, "event"); !strings.Contains(f.data, "smtp.ehlo") {
		t.Errorf("another key's stream: %s", f.data)
	}
	if _, resp := other.open("/api/v1/live/events", withKey(doomed)); resp.StatusCode != 401 {
		t.Errorf("the revoked key on the other replica: %d, want 401", resp.StatusCode)
	}
}

// TestClosedClientFreesItsSlotAtOnce: a client that closes an idle stream used to hold its
// slot (of max_streams and of its key's) until the next heartbeat found the connection dead;
// with an hour between heartbeats, the slot is back at once.
func TestClosedClientFreesItsSlotAtOnce(t *testing.T) {
	h := start(t, Config{Heartbeat: time.Hour}, false)
	for _, path := range []string{"/api/v1/live/events", "/api/live/tracing", "/api/live/metrics?interval=3600"} {
		c, resp := h.open(path, withKey(h.viewer))
		if c == nil {
			t.Fatalf("%s: %d", path, resp.StatusCode)
		}
		poll.Until(t, path+" to hold a slot", func() bool { return h.gw.openStreams() == 1 })
		c.close()
		poll.Until(t, path+" to give its slot back after the client closed it", func() bool { return h.gw.openStreams() == 0 })
	}
}
