package producer_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mailpulse/mailpulse/services/producer"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/poll"
)

// stalwartBatch is a webhook body of n distinct events, as Stalwart builds it, dated now.
func stalwartBatch(n int) string {
	var b strings.Builder
	now := time.Now().UTC().Format(time.RFC3339)
	b.WriteString(`{"events":[`)
	for i := range n {
		if i > 0 {
			b.WriteString(",\n")
		}
		fmt.Fprintf(&b, `{"id":"17240000%07d12","createdAt":%q,"type":"smtp.rcpt-to","data":{"spanId":%d,"to":["u%d@example.org"],"remoteIp":"192.0.2.7"}}`, i, now, 1000+i/10, i)
	}
	b.WriteString("]}")
	return b.String()
}

// msgs is how many messages the EVENTS stream holds.
func (h *harness) msgs() uint64 {
	h.t.Helper()
	st, err := h.js.Stream(h.t.Context(), bus.StreamEvents)
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := st.Info(h.t.Context())
	if err != nil {
		h.t.Fatal(err)
	}
	return info.State.Msgs
}

// (issue 8 #3) Stalwart's batches have no cap, and after an outage a busy server's batch
// stays over any cap until accepted: 25,000 events in one batch are stored, each once,
// signed or with the key; the same batch again stores nothing new.
func TestStalwartBatchOverTenThousand(t *testing.T) {
	const n = 25_000
	body := stalwartBatch(n)
	for _, tc := range []struct {
		name string
		cfg  producer.Config
		hdr  func(h *harness) map[string]string
	}{
		{"signed", producer.Config{Stalwart: producer.Stalwart{Secret: "hook-secret", SpoolDir: t.TempDir()}},
			func(*harness) map[string]string { return map[string]string{"X-Signature": sign("hook-secret", body)} }},
		{"with the key", producer.Config{}, (*harness).bearer},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, tc.cfg, false)
			r := h.post("/ingest/stalwart", body, tc.hdr(h))
			if r.Status != 202 || r.Accepted != n || r.Duplicates != 0 || r.Rejected != 0 {
				t.Fatalf("a batch of %d: %d %+v, want 202 with all accepted", n, r.Status, r)
			}
			if got := h.msgs(); got != n {
				t.Fatalf("EVENTS holds %d messages, want %d", got, n)
			}
			r = h.post("/ingest/stalwart", body, tc.hdr(h))
			if r.Status != 202 || r.Accepted != 0 || r.Duplicates != n {
				t.Fatalf("the same batch again: %d %+v, want 202 with %d duplicates", r.Status, r, n)
			}
			if got := h.msgs(); got != n {
				t.Fatalf("EVENTS holds %d messages after the batch came again, want %d", got, n)
			}
			if dir := tc.cfg.Stalwart.SpoolDir; dir != "" {
				if left, _ := os.ReadDir(dir); len(left) != 0 {
					t.Errorf("spool files left behind: %v", left)
				}
			}
		})
	}
}

// A batch over stalwart.max_body_bytes or stalwart.max_batch gets 413 and stores nothing:
// by its declared length before it is read; counted before anything is stored when it is
// spooled (signed).
func TestStalwartBatchOverTheLimitsStoresNothing(t *testing.T) {
	spool := t.TempDir()
	limits := producer.Stalwart{MaxBatch: 100, MaxBodyBytes: 64 << 10}
	signed := limits
	signed.Secret, signed.SpoolDir = "hook-secret", spool
	large := stalwartBatch(1000) // ~200 KiB
	many := stalwartBatch(150)   // ~30 KiB
	for _, tc := range []struct {
		name, body string
		cfg        producer.Stalwart
		chunked    bool
		want       string
	}{
		{"too large, signed", large, signed, false, "larger than 65536 bytes"},
		{"too large, with the key", large, limits, false, "larger than 65536 bytes"},
		{"too large and chunked, with the key", large, limits, true, "larger than 65536 bytes"},
		{"too many events, signed", many, signed, false, "more than 100 events"},
		{"too many events, with the key", many, limits, false, "more than 100 events"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, producer.Config{Stalwart: tc.cfg}, false)
			hdr := h.bearer()
			if tc.cfg.Secret != "" {
				hdr = map[string]string{"X-Signature": sign(tc.cfg.Secret, tc.body)}
			}
			var r response
			if tc.chunked {
				r = h.postReader("/ingest/stalwart", io.MultiReader(strings.NewReader(tc.body)), hdr)
			} else {
				r = h.post("/ingest/stalwart", tc.body, hdr)
			}
			if r.Status != 413 || !strings.Contains(r.Error, tc.want) {
				t.Fatalf("status %d error %q, want 413 saying %q", r.Status, r.Error, tc.want)
			}
			if n := h.msgs(); n != 0 {
				t.Errorf("a refused batch stored %d events", n)
			}
		})
	}
	if left, _ := os.ReadDir(spool); len(left) != 0 {
		t.Errorf("spool files left behind: %v", left)
	}
}

// Read straight from the connection (the key), a batch is found over stalwart.max_batch
// only when the limit is passed: the chunks before are stored, the answer says how many,
// and sent again they are duplicates (what docs/architecture.md states).
func TestStalwartBatchOverTheCapMidwayWithTheKey(t *testing.T) {
	h := start(t, producer.Config{Stalwart: producer.Stalwart{MaxBatch: 6000}}, false)
	body := stalwartBatch(7000)
	var got struct {
		Stored, Duplicates int
		Error              string
	}
	for i, want := range []struct{ stored, dups int }{{5000, 0}, {0, 5000}} {
		code, b := h.raw("/ingest/stalwart", body, h.bearer())
		if err := jsonUnmarshal(b, &got); err != nil || code != 413 || got.Stored != want.stored || got.Duplicates != want.dups || !strings.Contains(got.Error, "more than 6000 events") {
			t.Fatalf("send %d: %d %s, want 413 with %d stored and %d duplicates", i+1, code, b, want.stored, want.dups)
		}
	}
	if n := h.msgs(); n != 5000 {
		t.Errorf("EVENTS holds %d, want the first chunk's 5000 once", n)
	}
}

// A signed batch whose signature does not hold stores nothing and leaves no file.
func TestStalwartWrongSignatureStoresNothing(t *testing.T) {
	spool := t.TempDir()
	h := start(t, producer.Config{Stalwart: producer.Stalwart{Secret: "hook-secret", SpoolDir: spool}}, false)
	body := stalwartBatch(3000)
	if r := h.post("/ingest/stalwart", body, map[string]string{"X-Signature": sign("other", body)}); r.Status != 401 {
		t.Fatalf("wrong signature: %d %+v, want 401", r.Status, r)
	}
	if n := h.msgs(); n != 0 {
		t.Errorf("a batch with a wrong signature stored %d events", n)
	}
	if left, _ := os.ReadDir(spool); len(left) != 0 {
		t.Errorf("spool files left behind: %v", left)
	}
}

// (issue 8 #4) Go's net/http client posting 64 MiB reads the 413 and its limit, instead of
// a reset connection.
func TestOversizedBodyIsAnsweredToGoClients(t *testing.T) {
	h := start(t, producer.Config{}, false)
	req, _ := http.NewRequest(http.MethodPost, h.url+"/api/v1/events", io.LimitReader(zeros{}, 64<<20))
	req.ContentLength = 64 << 20
	req.Header.Set("Authorization", "Bearer "+h.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST 64 MiB: %v (want a 413 the client can read)", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 413 || !strings.Contains(string(b), "larger than 16777216 bytes") || !strings.Contains(string(b), `"limit":16777216`) {
		t.Fatalf("POST 64 MiB = %d %s, want 413 with the limit", resp.StatusCode, b)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// (issue 9 #5) A request without a valid key is answered 401 from its headers: its body is
// neither waited for nor read, and the connection closes. fasthttp reads at most 8 KiB of
// a body ahead of the handler; the test sends those, then waits for the answer.
func TestUnauthenticatedBodiesAreNotRead(t *testing.T) {
	signed := start(t, producer.Config{Stalwart: producer.Stalwart{Secret: "hook-secret"}}, false)
	keyed := start(t, producer.Config{}, false)
	for _, tc := range []struct {
		name, path, auth string
		h                *harness
	}{
		{"events without a key", "/api/v1/events", "", keyed},
		{"events with a wrong key", "/api/v1/events", "Authorization: Bearer mpk_nope_x\r\n", keyed},
		{"Stalwart without a key", "/ingest/stalwart", "", keyed},
		{"Stalwart without a signature", "/ingest/stalwart", "", signed},
		{"Stalwart with a malformed signature", "/ingest/stalwart", "X-Signature: nope\r\n", signed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", strings.TrimPrefix(tc.h.url, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n%s", tc.path, tc.auth, 15<<20, strings.Repeat("x", 8<<10))
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatalf("no answer before the body: %v", err)
			}
			resp.Body.Close()
			if resp.StatusCode != 401 || !resp.Close {
				t.Fatalf("%s = %d (close %v), want 401 and Connection: close", tc.name, resp.StatusCode, resp.Close)
			}
		})
	}
	for _, h := range []*harness{signed, keyed} {
		if n := h.metric("mailpulse_http_body_read_bytes_total"); n != "0" {
			t.Errorf("bytes of unauthenticated bodies read: %s, want 0", n)
		}
	}
}

// (issue 9 #1) More connections than ingest.max_conns: those over the cap are closed at
// once, the producer (and its errgroup) keeps running, and /healthz answers once they go.
func TestConnectionsOverTheCapDoNotStopTheProducer(t *testing.T) {
	h := start(t, producer.Config{Ingest: producer.Ingest{MaxConns: 8}}, false)
	addr := strings.TrimPrefix(h.url, "http://")
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	get := func(c net.Conn) (*http.Response, error) {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			return nil, err
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err == nil {
			resp.Body.Close()
		}
		return resp, err
	}
	// Eight connections answered and kept open (keep-alive) fill the cap.
	for range 8 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		if resp, err := get(c); err != nil || resp.StatusCode != 200 {
			t.Fatalf("connection %d under the cap: %v %v", len(conns), resp, err)
		}
	}
	for range 4 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := get(c)
		c.Close()
		if err == nil && resp.StatusCode != 503 {
			t.Fatalf("a connection over the cap: %d, want 503 or a closed connection", resp.StatusCode)
		}
	}
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	poll.Until(t, "/healthz to answer", func() bool {
		resp, err := http.Get(h.url + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	// At least the four: a /healthz poll may have come before the closed connections were
	// released, and been refused too.
	if n, _ := strconv.Atoi(h.metric(`mailpulse_http_connections_refused_total{cap="limit",listener="producer"}`)); n < 4 {
		t.Errorf("connections refused = %d, want at least 4", n)
	}
	select {
	case err := <-h.done:
		h.done <- err
		t.Fatalf("the producer stopped: %v", err)
	default:
	}
	if r := h.post("/api/v1/events", `[{"type":"a.b"}]`, h.bearer()); r.Status != 202 {
		t.Errorf("ingest after the flood = %d", r.Status)
	}
}

// metric is the value of one series of the producer's /metrics (the line's name and
// labels as written there), or "" when absent.
func (h *harness) metric(series string) string {
	h.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, h.url+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+h.viewer)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if ok && (name == series || strings.HasPrefix(name, series+"{")) {
			return value
		}
	}
	return ""
}

// postReader posts body chunked (its length untold).
func (h *harness) postReader(path string, body io.Reader, hdr map[string]string) response {
	h.t.Helper()
	code, b := h.do(path, body, -1, hdr)
	var r response
	if err := jsonUnmarshal(b, &r); err != nil {
		h.t.Fatalf("POST %s: %d with a body that is not JSON: %s", path, code, b)
	}
	r.Status = code
	return r
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }

// raw posts body and returns the status and the answer as it came.
func (h *harness) raw(path, body string, hdr map[string]string) (int, string) {
	h.t.Helper()
	return h.do(path, strings.NewReader(body), int64(len(body)), hdr)
}

func (h *harness) do(path string, body io.Reader, length int64, hdr map[string]string) (int, string) {
	h.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, h.url+path, body)
	req.ContentLength = length
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// At most stalwart.max_concurrent Stalwart batches are read at once (each may spool up to
// stalwart.max_body_bytes): one more waits ingest.body_wait, then gets 503 and Retry-After.
func TestStalwartBatchesReadAtOnceAreBounded(t *testing.T) {
	h := start(t, producer.Config{Stalwart: producer.Stalwart{MaxConcurrent: 1}, Ingest: producer.Ingest{BodyWait: 50 * time.Millisecond}}, false)
	pr, pw := io.Pipe()
	first := make(chan response, 1)
	go func() {
		// Not h.do: a goroutine other than the test's may not fail it.
		req, _ := http.NewRequest(http.MethodPost, h.url+"/ingest/stalwart", pr)
		req.Header.Set("Authorization", "Bearer "+h.key)
		var r response
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			_ = json.Unmarshal(b, &r)
			r.Status = resp.StatusCode
		}
		first <- r
	}()
	body := stalwartBatch(10)
	half := len(body) / 2
	if _, err := io.WriteString(pw, body[:half]); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "the first batch to be read", func() bool { return h.metric("mailpulse_http_body_read_bytes_total") != "0" })
	r := h.post("/ingest/stalwart", stalwartBatch(1), h.bearer())
	if r.Status != 503 || r.Header.Get("Retry-After") == "" {
		t.Fatalf("a second batch while one is read: %d %+v, want 503 with Retry-After", r.Status, r)
	}
	io.WriteString(pw, body[half:])
	pw.Close()
	if r := <-first; r.Status != 202 || r.Accepted != 10 {
		t.Fatalf("the first batch: %+v", r)
	}
	if r := h.post("/ingest/stalwart", stalwartBatch(1), h.bearer()); r.Status != 202 {
		t.Errorf("a batch once the first is done: %d %+v", r.Status, r)
	}
}
