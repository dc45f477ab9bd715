package producer_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailpulse/mailpulse/services/producer"
	"github.com/mailpulse/mailpulse/shared/apikey"
	"github.com/mailpulse/mailpulse/shared/broker/brokertest"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/metric"
	"github.com/mailpulse/mailpulse/shared/poll"
)

type harness struct {
	t      *testing.T
	srv    *brokertest.Server
	nc     *nats.Conn
	js     jetstream.JetStream
	url    string
	key    string // ingest key
	viewer string
	stop   context.CancelFunc
	done   chan error
}

func start(t *testing.T, cfg producer.Config, tcp bool) *harness {
	t.Helper()
	var srv *brokertest.Server
	var nc *nats.Conn
	if tcp {
		srv = brokertest.StartTCP(t)
		var err error
		nc, err = nats.Connect(srv.ClientURL(), append(bus.ConnectOptions("test", nil), nats.UserInfo(brokertest.User, brokertest.Password))...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
	} else {
		srv = brokertest.Start(t)
		nc = srv.Conn()
	}
	h := startOn(t, cfg, nc)
	h.srv = srv
	return h
}

// startOn runs a producer on a connection to a NATS server the test started.
func startOn(t *testing.T, cfg producer.Config, nc *nats.Conn) *harness {
	t.Helper()
	h := &harness{t: t, nc: nc}
	pub, err := bus.NewPublisher(h.nc, bus.PublisherConfig{AckTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	h.js = pub.JetStream()
	if err := bus.Provision(t.Context(), h.js, bus.Limits{}, nil); err != nil {
		t.Fatal(err)
	}
	kv, _ := h.js.KeyValue(t.Context(), bus.BucketKeys)
	keys, err := apikey.Open(t.Context(), kv, nil)
	if err != nil {
		t.Fatal(err)
	}
	h.key, _, _ = keys.Create(t.Context(), "test", apikey.Ingest)
	h.viewer, _, _ = keys.Create(t.Context(), "test", apikey.Viewer)
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.Ingest.Timeout == 0 {
		cfg.Ingest.Timeout = 3 * time.Second
	}
	p, err := producer.New(cfg, producer.Deps{Conn: h.nc, Publisher: pub, Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	h.url = "http://" + p.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	h.stop, h.done = cancel, make(chan error, 1)
	go func() { h.done <- p.Run(ctx) }()
	t.Cleanup(h.shutdown)
	return h
}

func (h *harness) shutdown() {
	h.stop()
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Errorf("Run = %v", err)
		}
		h.done <- nil
	case <-time.After(20 * time.Second):
		h.t.Error("producer did not stop within 20 s")
	}
}

type response struct {
	Status     int
	Accepted   int               `json:"accepted"`
	Duplicates int               `json:"duplicates"`
	Rejected   int               `json:"rejected"`
	Error      string            `json:"error"`
	Errors     []json.RawMessage `json:"errors"`
	Header     http.Header
}

func (h *harness) post(path, body string, hdr map[string]string) response {
	h.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, h.url+path, strings.NewReader(body))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var r response
	if err := json.Unmarshal(b, &r); err != nil && resp.StatusCode != http.StatusOK {
		h.t.Fatalf("POST %s: %d with a body that is not JSON: %s", path, resp.StatusCode, b)
	}
	r.Status, r.Header = resp.StatusCode, resp.Header
	return r
}

func (h *harness) bearer() map[string]string {
	return map[string]string{"Authorization": "Bearer " + h.key}
}

func (h *harness) stored() []event.Event {
	h.t.Helper()
	st, err := h.js.Stream(h.t.Context(), bus.StreamEvents)
	if err != nil {
		h.t.Fatal(err)
	}
	info, _ := st.Info(h.t.Context())
	var out []event.Event
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := st.GetMsg(h.t.Context(), seq)
		if err != nil {
			continue
		}
		e, err := event.Decode(m.Data)
		if err != nil {
			h.t.Fatalf("stored message %d does not decode: %v", seq, err)
		}
		if m.Subject != e.Subject() {
			h.t.Errorf("event %s stored on %s, want %s", e.ID, m.Subject, e.Subject())
		}
		out = append(out, e)
	}
	return out
}

func TestIngestArrayAndNDJSON(t *testing.T) {
	h := start(t, producer.Config{Source: "default-src"}, false)
	r := h.post("/api/v1/events", `[{"type":"smtp.ehlo","data":{"domain":"mx.example.com"}},{"id":"c-1","type":"auth.failed","level":"warn","source":"mx2","data":{"remote-ip":"192.0.2.9"}}]`, h.bearer())
	if r.Status != http.StatusAccepted || r.Accepted != 2 {
		t.Fatalf("array: %d %+v", r.Status, r)
	}
	r = h.post("/api/v1/events", "{\"type\":\"imap.fetch\"}\n{\"type\":\"imap.logout\"}\n", h.bearer())
	if r.Status != http.StatusAccepted || r.Accepted != 2 {
		t.Fatalf("ndjson: %d %+v", r.Status, r)
	}
	evs := h.stored()
	if len(evs) != 4 {
		t.Fatalf("stored %d events, want 4", len(evs))
	}
	byType := map[string]event.Event{}
	for _, e := range evs {
		byType[e.Type] = e
	}
	if e := byType["smtp.ehlo"]; e.Source != "default-src" || e.Level != event.Info || e.ID == "" {
		t.Errorf("defaults not applied: %+v", e)
	}
	if e := byType["auth.failed"]; e.ID != "c-1" || e.Level != event.Warn || e.Source != "mx2" || e.Data.Get("remoteIp").Str != "192.0.2.9" {
		t.Errorf("client values not kept: %+v %s", e, e.Data)
	}
}

func TestIngestRejectsBadInputAndChangesNothing(t *testing.T) {
	h := start(t, producer.Config{Ingest: producer.Ingest{MaxBatch: 3, MaxBodyBytes: 4096}}, false)
	cases := []struct {
		name   string
		body   string
		hdr    map[string]string
		status int
		want   string
	}{
		{"no key", `[{"type":"a.b"}]`, nil, 401, "API key"},
		{"wrong key", `[{"type":"a.b"}]`, map[string]string{"Authorization": "Bearer mpk_nope_x"}, 401, "API key"},
		{"viewer key", `[{"type":"a.b"}]`, map[string]string{"Authorization": "Bearer " + h.viewer}, 403, "role"},
		{"malformed JSON", `[{"type":`, h.bearer(), 400, "not valid JSON"},
		{"empty", ``, h.bearer(), 400, "no events"},
		{"all invalid", `[{"type":"BAD"},{"type":"a.b","level":"loud"},{"type":5}]`, h.bearer(), 400, "no valid event"},
		{"too many events", `[{"type":"a.b"},{"type":"a.b"},{"type":"a.b"},{"type":"a.b"}]`, h.bearer(), 413, "more than 3"},
		{"oversized body", `[{"type":"a.b","data":{"x":"` + strings.Repeat("x", 5000) + `"}}]`, h.bearer(), 413, "larger than 4096"},
		{"hostile nesting", `[{"type":"a.b","data":{"x":` + strings.Repeat("[", 500) + strings.Repeat("]", 500) + `}}]`, h.bearer(), 400, "nested deeper"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := h.post("/api/v1/events", tc.body, tc.hdr)
			if r.Status != tc.status || !strings.Contains(r.Error, tc.want) {
				t.Errorf("status %d error %q, want %d mentioning %q", r.Status, r.Error, tc.status, tc.want)
			}
		})
	}
	if n := len(h.stored()); n != 0 {
		t.Errorf("bad requests stored %d events", n)
	}
	// A partly valid batch stores the valid events and lists the others.
	r := h.post("/api/v1/events", `[{"type":"a.b"},{"type":"nope"},{"type":"c.d","createdAt":"never"}]`, h.bearer())
	if r.Status != 202 || r.Accepted != 1 || r.Rejected != 2 || len(r.Errors) != 2 {
		t.Errorf("mixed batch: %+v", r)
	}
	if !strings.Contains(string(r.Errors[0]), `"index":1`) || !strings.Contains(string(r.Errors[1]), "RFC 3339") {
		t.Errorf("errors do not say which event failed and why: %s", r.Errors)
	}
	if n := len(h.stored()); n != 1 {
		t.Errorf("stored %d events, want 1", n)
	}
}

func TestDuplicateIDsStoredOnce(t *testing.T) {
	h := start(t, producer.Config{}, false)
	body := `[{"id":"dup-1","type":"a.b"},{"id":"dup-2","type":"a.b"}]`
	for range 3 {
		if r := h.post("/api/v1/events", body, h.bearer()); r.Status != 202 {
			t.Fatalf("status %d", r.Status)
		}
	}
	if n := len(h.stored()); n != 2 {
		t.Errorf("stored %d events after sending 2 ids three times, want 2", n)
	}
}

func sign(secret, body string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(body))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

func TestStalwartWebhookSigned(t *testing.T) {
	h := start(t, producer.Config{Stalwart: producer.Stalwart{Secret: "hook-secret", Source: "mail.example.org"}}, false)
	body, err := os.ReadFile(filepath.Join("..", "..", "shared", "event", "testdata", "stalwart-0.16.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		hdr  map[string]string
	}{
		{"missing signature", nil},
		{"wrong signature", map[string]string{"X-Signature": sign("other", string(body))}},
		{"garbage signature", map[string]string{"X-Signature": "!!"}},
		{"key instead of signature", h.bearer()},
	} {
		if r := h.post("/ingest/stalwart", string(body), tc.hdr); r.Status != 401 {
			t.Errorf("%s: status %d, want 401", tc.name, r.Status)
		}
	}
	good := map[string]string{"X-Signature": sign("hook-secret", string(body)), "Content-Type": "application/json"}
	if r := h.post("/ingest/stalwart", string(body), good); r.Status != 202 || r.Accepted != 3 || r.Duplicates != 0 {
		t.Fatalf("signed batch: %+v", r)
	}
	// Stalwart retries the whole batch when it sees no 2xx: stored once, and said so.
	if r := h.post("/ingest/stalwart", string(body), good); r.Status != 202 || r.Accepted != 0 || r.Duplicates != 3 {
		t.Fatalf("the same batch again: %+v, want 0 accepted and 3 duplicates", r)
	}
	evs := h.stored()
	if len(evs) != 3 {
		t.Fatalf("stored %d, want 3 (a retried batch is stored once)", len(evs))
	}
	if evs[0].ID != "1724000000123437" || evs[0].Source != "mail.example.org" || evs[0].Level != event.Info {
		t.Errorf("first event = %+v", evs[0])
	}
	if evs[2].Level != event.Error {
		t.Errorf("store.postgresql-error level = %v, want the catalogue's error", evs[2].Level)
	}
	for _, src := range []string{"bad%20source", "a..b", "a%3E"} {
		if r := h.post("/ingest/stalwart?source="+src, string(body), good); r.Status != 400 {
			t.Errorf("source parameter %q: status %d, want 400 (not a subject token: each publish would time out)", src, r.Status)
		}
	}
}

func TestStalwartWebhookWithKeyAndOldFormat(t *testing.T) {
	h := start(t, producer.Config{}, false)
	body, _ := os.ReadFile(filepath.Join("..", "..", "shared", "event", "testdata", "stalwart-0.15.json"))
	basic := map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte("stalwart:"+h.key))}
	if r := h.post("/ingest/stalwart?source=mx0.example.org", string(body), basic); r.Status != 202 || r.Accepted != 3 {
		t.Fatalf("0.15 batch with Basic auth: %+v", r)
	}
	if r := h.post("/ingest/stalwart", string(body), nil); r.Status != 401 {
		t.Errorf("no key: status %d, want 401", r.Status)
	}
	evs := h.stored()
	if len(evs) != 3 || evs[0].Type != "queue.message-queued" || evs[0].Source != "mx0.example.org" || !evs[0].Data.Get("queueId").Exists() {
		t.Errorf("0.15 events not converted: %+v", evs)
	}
	if r := h.post("/ingest/stalwart", `{"events":[{"type":"auth.success"}]}`, h.bearer()); r.Status != 400 {
		t.Errorf("event without id: status %d, want 400", r.Status)
	}
}

func TestNATSOutageGives503ThenRecovers(t *testing.T) {
	h := start(t, producer.Config{Ingest: producer.Ingest{Timeout: 2 * time.Second}}, true)
	if r := h.post("/api/v1/events", `[{"id":"before","type":"a.b"}]`, h.bearer()); r.Status != 202 {
		t.Fatalf("before the outage: %d", r.Status)
	}
	h.srv.Server.Shutdown()
	r := h.post("/api/v1/events", `[{"id":"during","type":"a.b"}]`, h.bearer())
	if r.Status != 503 || r.Header.Get("Retry-After") == "" {
		t.Fatalf("during the outage: status %d Retry-After %q, want 503 with Retry-After", r.Status, r.Header.Get("Retry-After"))
	}
	resp, err := http.Get(h.url + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 {
		t.Errorf("/readyz during the outage = %v, want 503", resp.StatusCode)
	}
	h.srv.Start()
	poll.Until(t, "ingest to recover after the outage", func() bool {
		r = h.post("/api/v1/events", `[{"id":"during","type":"a.b"}]`, h.bearer())
		return r.Status == 202
	})
	ids := map[string]bool{}
	for _, e := range h.stored() {
		ids[e.ID] = true
	}
	if !ids["before"] || !ids["during"] || len(ids) != 2 {
		t.Errorf("stored ids = %v, want before and during (the log survived the restart)", ids)
	}
}

// TestShutdownDuringBusyIngestLosesNothingAcknowledged stops the producer while clients
// are sending; every event answered with 202 must be in the log.
func TestShutdownDuringBusyIngestLosesNothingAcknowledged(t *testing.T) {
	h := start(t, producer.Config{}, false)
	var mu sync.Mutex
	acked := map[string]bool{}
	var wg sync.WaitGroup
	stopSending := make(chan struct{})
	for c := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 10 * time.Second}
			for b := 0; ; b++ {
				select {
				case <-stopSending:
					return
				default:
				}
				var body bytes.Buffer
				var ids []string
				body.WriteByte('[')
				for i := range 100 {
					id := fmt.Sprintf("c%d-b%d-%d", c, b, i)
					ids = append(ids, id)
					if i > 0 {
						body.WriteByte(',')
					}
					fmt.Fprintf(&body, `{"id":%q,"type":"smtp.rcpt-to","data":{"to":"x@example.org"}}`, id)
				}
				body.WriteByte(']')
				req, _ := http.NewRequest(http.MethodPost, h.url+"/api/v1/events", &body)
				req.Header.Set("Authorization", "Bearer "+h.key)
				resp, err := client.Do(req)
				if err != nil {
					return // the server went away
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 202 {
					mu.Lock()
					for _, id := range ids {
						acked[id] = true
					}
					mu.Unlock()
				}
			}
		}()
	}
	// Stop once some batches are through.
	poll.Until(t, "2000 events acknowledged", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) >= 2000
	})
	h.shutdown()
	close(stopSending)
	wg.Wait()
	stored := map[string]bool{}
	for _, e := range h.stored() {
		stored[e.ID] = true
	}
	missing := 0
	for id := range acked {
		if !stored[id] {
			missing++
		}
	}
	if len(acked) == 0 || missing > 0 {
		t.Errorf("%d events acknowledged, %d of them missing from the log", len(acked), missing)
	}
}

func TestSnapshotsProjectedFromEvents(t *testing.T) {
	h := start(t, producer.Config{Metrics: producer.Metrics{Interval: time.Second}}, false)
	body := `[
{"type":"smtp.connection-start","source":"mx","data":{"spanId":"1","remoteIp":"192.0.2.1"}},
{"type":"smtp.connection-start","source":"mx","data":{"spanId":"2","remoteIp":"192.0.2.2"}},
{"type":"queue.message-queued","source":"mx","data":{"spanId":"1","size":2048}},
{"type":"smtp.connection-end","source":"mx","data":{"spanId":"1","elapsed":700}},
{"type":"smtp.connection-end","source":"mx","data":{"spanId":"99","elapsed":10}}]`
	if r := h.post("/api/v1/events", body, h.bearer()); r.Status != 202 {
		t.Fatalf("status %d", r.Status)
	}
	cons, err := h.js.OrderedConsumer(t.Context(), bus.StreamMetrics, jetstream.OrderedConsumerConfig{FilterSubjects: []string{bus.MetricsSubject("mx")}})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
	if err != nil {
		t.Fatalf("no snapshot published: %v", err)
	}
	snap, err := metric.Unmarshal(msg.Data())
	if err != nil {
		t.Fatal(err)
	}
	if snap.Counters["smtp.connection-start"] != 2 || snap.Counters["queue.message-queued"] != 1 {
		t.Errorf("counters = %v", snap.Counters)
	}
	if _, ok := snap.Counters["smtp.connection-end"]; ok {
		t.Error("span ends are counted; Stalwart does not count them")
	}
	if g := snap.Gauges["smtp.active-connections"]; g != 1 {
		t.Errorf("smtp.active-connections = %v, want 1 (two opened, one closed, an unknown close ignored)", g)
	}
	if g := snap.Gauges["queue.count"]; g != 1 {
		t.Errorf("queue.count = %v, want 1", g)
	}
	hs := snap.Histograms["message.size"]
	if hs.Count != 1 || hs.Sum != 2048 || hs.Counts[1] != 0 || hs.Counts[2] != 1 {
		t.Errorf("message.size = %+v, want 2048 in the ≤10000 bucket", hs)
	}
	// Like Stalwart, every connection end feeds the histogram, seen start or not.
	if rt := snap.Histograms["smtp.request-time"]; rt.Count != 2 || rt.Counts[0] != 1 || rt.Counts[1] != 1 || rt.Counts[2] != 2 {
		t.Errorf("smtp.request-time = %+v, want 10 ms in ≤250 and 700 ms in ≤1000", rt)
	}
}

func TestHealthAndOwnMetrics(t *testing.T) {
	h := start(t, producer.Config{}, false)
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/metrics": 401} {
		resp, err := http.Get(h.url + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s = %v, want %d", path, resp.StatusCode, want)
		}
	}
	h.post("/api/v1/events", `[{"type":"a.b"}]`, h.bearer())
	req, _ := http.NewRequest(http.MethodGet, h.url+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+h.viewer)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /metrics with a viewer key = %v %v", resp.StatusCode, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), `mailpulse_producer_events_stored_total{endpoint="events"} 1`) {
		t.Errorf("/metrics lacks the stored counter:\n%s", b)
	}
}

func TestScrapedStalwartPageReachesTheLog(t *testing.T) {
	page := "# TYPE smtp_connection_start counter\nsmtp_connection_start 42\n# TYPE message_size histogram\n" +
		"message_size_bucket{le=\"500\"} 1\nmessage_size_bucket{le=\"1000\"} 1\nmessage_size_bucket{le=\"+Inf\"} 3\nmessage_size_sum 2100\nmessage_size_count 3\n"
	stalwart := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics/prometheus" {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, page)
	}))
	defer stalwart.Close()
	h := start(t, producer.Config{Stalwart: producer.Stalwart{MetricsURL: stalwart.URL + "/metrics/prometheus", MetricsInterval: time.Second, Source: "mail.example.org"}}, false)
	cons, err := h.js.OrderedConsumer(t.Context(), bus.StreamMetrics, jetstream.OrderedConsumerConfig{FilterSubjects: []string{bus.MetricsSubject("mail.example.org")}})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
	if err != nil {
		t.Fatalf("no scraped snapshot in METRICS: %v", err)
	}
	snap, err := metric.Unmarshal(msg.Data())
	if err != nil {
		t.Fatal(err)
	}
	if snap.Origin != metric.OriginPrometheus || snap.Counters["smtp.connection-start"] != 42 {
		t.Errorf("snapshot = %+v", snap)
	}
	if hs := snap.Histograms["message.size"]; hs.Count != 3 || hs.Counts[0] != 1 || hs.Counts[1] != 2 || hs.Counts[2] != 3 {
		t.Errorf("message.size = %+v, want per-bucket 1,1 made cumulative 1,2,3", hs)
	}
}

// Stalwart's ids do not identify an event: two servers, one server across restarts, and
// Stalwart ≤ 0.16.10 within a second send the same id for different events. Each is stored;
// the same batch sent again is still stored once.
func TestStalwartIDsDoNotCollapseDifferentEvents(t *testing.T) {
	h := start(t, producer.Config{}, false)
	key := map[string]string{"Authorization": "Bearer " + h.key}
	batch := func(remote string) string {
		return `{"events":[{"id":1724000000123437,"createdAt":"2026-11-21T10:00:00Z","type":"auth.failed","data":{"remoteIp":"` + remote + `"}}]}`
	}
	for _, tc := range []struct {
		query, remote string
		accepted, dup int
	}{
		{"?source=mx1.example.org", "192.0.2.1", 1, 0},
		{"?source=mx2.example.org", "192.0.2.1", 1, 0}, // another server, same id and content
		{"?source=mx1.example.org", "192.0.2.2", 1, 0}, // the same server reusing the id
		{"?source=mx1.example.org", "192.0.2.1", 0, 1}, // a retry
	} {
		if r := h.post("/ingest/stalwart"+tc.query, batch(tc.remote), key); r.Status != 202 || r.Accepted != tc.accepted || r.Duplicates != tc.dup {
			t.Fatalf("%s %s: %+v, want %d accepted, %d duplicates", tc.query, tc.remote, r, tc.accepted, tc.dup)
		}
	}
	if n := len(h.stored()); n != 3 {
		t.Fatalf("stored %d events, want the 3 different ones", n)
	}
}

// Requests with different ?source= interleaved: every source keeps its own name in the
// events and in the metrics (Fiber's zero-copy strings used to be rewritten by a later
// request: smtp_ehlo_total{source="ZZZvictim-bbb…"}).
func TestSourceParameterOutlivesItsRequest(t *testing.T) {
	h := start(t, producer.Config{Metrics: producer.Metrics{Interval: time.Second}}, false)
	key := map[string]string{"Authorization": "Bearer " + h.key}
	var wg sync.WaitGroup
	for c := 0; c < 4; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				src := fmt.Sprintf("src%d-%s", c, strings.Repeat(string(rune('a'+c)), 20))
				body := fmt.Sprintf(`{"events":[{"id":%d,"createdAt":"2026-11-21T10:00:00Z","type":"smtp.ehlo","data":{"n":%d}}]}`, c*1000+i, i)
				if r := h.post("/ingest/stalwart?source="+src, body, key); r.Status != 202 {
					t.Errorf("post: %+v", r)
				}
			}
		}()
	}
	wg.Wait()
	counts := map[string]int{}
	for _, e := range h.stored() {
		counts[e.Source]++
	}
	if len(counts) != 4 {
		t.Fatalf("sources stored: %v, want 4 sources of 25 events", counts)
	}
	for src, n := range counts {
		if n != 25 || !strings.HasPrefix(src, "src") {
			t.Fatalf("sources stored: %v, want 4 sources of 25 events", counts)
		}
	}
	// The projection keeps the sources beyond the requests: its snapshots name them.
	h.shutdown() // publishes a last snapshot of every source
	st, err := h.js.Stream(context.Background(), bus.StreamMetrics)
	if err != nil {
		t.Fatal(err)
	}
	snaps := map[string]uint64{}
	for seq := uint64(1); seq <= st.CachedInfo().State.LastSeq; seq++ {
		m, err := st.GetMsg(context.Background(), seq)
		if err != nil {
			continue
		}
		if snap, err := metric.Unmarshal(m.Data); err == nil && snap.Origin == metric.OriginEvents {
			snaps[snap.Source] = max(snaps[snap.Source], snap.Counters["smtp.ehlo"])
		}
	}
	for src := range counts {
		if snaps[src] != 25 {
			t.Errorf("snapshots of %s count %d smtp.ehlo, want 25; all: %v", src, snaps[src], snaps)
		}
	}
	if len(snaps) != 4 {
		t.Errorf("snapshot sources %v, want exactly the 4 sent", snaps)
	}
}
