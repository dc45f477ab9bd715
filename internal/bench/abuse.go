package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mailpulse/mailpulse/shared/poll"
)

// abuse runs "mailpulse bench abuse": the hostile clients and operator mistakes of the
// hardening issue, against a real mailpulse process started for the purpose (this very
// binary, in a temporary data dir, optionally under a small file limit), and reports each
// case's outcome and the process's resident memory. Every case is bounded and stops by
// itself; the process is stopped at the end.
func abuse(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("bench abuse", flag.ContinueOnError)
	nofile := fs.Int("ulimit", 0, "run the process under this file limit (ulimit -n); 0 leaves it as it is")
	slow := fs.Int("slow-conns", 3000, "slow connections opened at once")
	uploads := fs.Int("uploads", 150, "concurrent unauthenticated uploads")
	uploadMiB := fs.Int("upload-mib", 15, "size of each unauthenticated upload, MiB")
	only := fs.String("only", "", "comma-separated cases to run (default: all)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	p, err := startTarget(*nofile)
	if err != nil {
		return err
	}
	defer p.stop()
	fmt.Fprintf(out, "target: pid %d, gateway %s, ingest %s, file limit %s; RSS at start %s\n",
		p.pid(), p.http, p.ingest, limitText(*nofile), mib(p.rss()))
	cases := []struct {
		name string
		run  func(*target) (string, bool)
	}{
		{"slow-connections", func(p *target) (string, bool) { return slowConnections(p, *slow) }},
		{"unauthenticated-uploads", func(p *target) (string, bool) { return unauthenticatedUploads(p, *uploads, *uploadMiB<<20) }},
		{"oversized-body", oversizedBody},
		{"far-dates", farDates},
		{"cardinality", cardinality},
		{"bad-sources", badSources},
		{"invalid-utf8", invalidUTF8},
		{"header-bomb", headerBomb},
		{"query-injection", queryInjection},
		{"revoked-key", revokedKey},
		{"many-streams", manyStreams},
	}
	want := map[string]bool{}
	for _, c := range strings.Split(*only, ",") {
		if c = strings.TrimSpace(c); c != "" {
			want[c] = true
		}
	}
	failed := 0
	for _, c := range cases {
		if len(want) > 0 && !want[c.name] {
			continue
		}
		start := time.Now()
		peak := p.watchRSS()
		outcome, ok := c.run(p)
		maxRSS := peak()
		alive := p.healthy()
		verdict := "ok"
		if !ok || !alive {
			verdict, failed = "FAIL", failed+1
		}
		if !alive {
			outcome += "; the process no longer answers /healthz"
		}
		fmt.Fprintf(out, "%-24s %-4s %6.1fs  peak RSS %s  %s\n", c.name, verdict, time.Since(start).Seconds(), mib(maxRSS), outcome)
		if !alive {
			break
		}
	}
	fmt.Fprintf(out, "RSS at the end %s\n", mib(p.rss()))
	if failed > 0 {
		return fmt.Errorf("%d case(s) failed", failed)
	}
	return nil
}

func limitText(n int) string {
	if n == 0 {
		return "unchanged"
	}
	return strconv.Itoa(n)
}

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

// target is a mailpulse process started for the abuse cases.
type target struct {
	*child
	dir          string
	http, ingest string // host:port
	admin, key   string // the admin and ingest keys
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func startTarget(nofile int) (*target, error) {
	dir, err := os.MkdirTemp("", "mailpulse-abuse-")
	if err != nil {
		return nil, err
	}
	p := &target{dir: dir, admin: randomKey(), key: randomKey()}
	if p.http, err = freeAddr(); err != nil {
		return nil, err
	}
	if p.ingest, err = freeAddr(); err != nil {
		return nil, err
	}
	archiverAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	p.child, err = startChild(nil, []string{
		"MAILPULSE_DATA_DIR=" + dir, "MAILPULSE_HTTP_ADDR=" + p.http, "MAILPULSE_INGEST_ADDR=" + p.ingest,
		"MAILPULSE_ARCHIVER_ADDR=" + archiverAddr, "MAILPULSE_SIMULATE=0", "MAILPULSE_LOG_LEVEL=error",
		"MAILPULSE_ADMIN_KEY=" + p.admin, "MAILPULSE_INGEST_KEY=" + p.key, "MAILPULSE_METRICS_INTERVAL=1s"}, nofile, p.healthy)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return p, nil
}

func (p *target) stop() {
	p.child.stop()
	os.RemoveAll(p.dir)
}

var abuseClient = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}

// healthClient probes from an address of its own (127.0.0.2), so that the per-address caps
// that the slow connections meet do not refuse it.
var healthClient = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
	DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).DialContext}}

func (p *target) healthy() bool {
	return answers(healthClient, "http://"+p.http+"/healthz", "http://"+p.ingest+"/healthz")
}

// do sends a request and returns its status and body (at most 1 MiB of it).
func (p *target) do(method, url, key string, body io.Reader) (int, string, error) {
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		return 0, "", err
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := abuseClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b), nil
}

func (p *target) post(path, key, body string) (int, string, error) {
	return p.do(http.MethodPost, "http://"+p.ingest+path, key, strings.NewReader(body))
}

func (p *target) get(path, key string) (int, string, error) {
	return p.do(http.MethodGet, "http://"+p.http+path, key, nil)
}

// countStatuses formats a status histogram.
func countStatuses(m map[string]int) string {
	var parts []string
	for k, v := range m {
		parts = append(parts, fmt.Sprintf("%s×%d", k, v))
	}
	return strings.Join(parts, " ")
}

// slowConnections opens n connections that send half a request and stall (to both
// listeners), then checks that the process still answers, and again once they are gone.
func slowConnections(p *target, n int) (string, bool) {
	var conns []net.Conn
	refused := 0
	for i := range n {
		addr := p.http
		if i%2 == 1 {
			addr = p.ingest
		}
		// From many loopback addresses, as many clients would come: one address alone
		// meets the per-address cap first.
		d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 1+byte(i/250%200), 1+byte(i%250))}}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			refused++
			continue
		}
		_, _ = c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n"))
		conns = append(conns, c)
	}
	during := p.healthy()
	for _, c := range conns {
		c.Close()
	}
	after := poll.Wait(10*time.Second, p.healthy)
	return fmt.Sprintf("%d opened, %d refused at connect; /healthz during: %v, after: %v", len(conns), refused, during, after), after
}

// zeros is an endless body of zeros.
type zeros struct{}

func (zeros) Read(b []byte) (int, error) { clear(b); return len(b), nil }

// unauthenticatedUploads posts n bodies of size bytes without a key, at once.
func unauthenticatedUploads(p *target, n, size int) (string, bool) {
	var mu sync.Mutex
	statuses := map[string]int{}
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodPost, "http://"+p.ingest+"/api/v1/events", io.LimitReader(zeros{}, int64(size)))
			req.ContentLength = int64(size)
			resp, err := abuseClient.Do(req)
			k := "error"
			if err == nil {
				k = strconv.Itoa(resp.StatusCode)
				resp.Body.Close()
			}
			mu.Lock()
			statuses[k]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	// 401, or refused at the connection cap (503) or cut (error): none is read and stored.
	return fmt.Sprintf("%d uploads of %d MiB: %s", n, size>>20, countStatuses(statuses)), statuses["401"]+statuses["503"]+statuses["error"] == n
}

// oversizedBody posts 64 MiB with a valid key through Go's client, which used to see a reset
// connection instead of the 413.
func oversizedBody(p *target) (string, bool) {
	req, _ := http.NewRequest(http.MethodPost, "http://"+p.ingest+"/api/v1/events", io.LimitReader(zeros{}, 64<<20))
	req.ContentLength = 64 << 20
	req.Header.Set("Authorization", "Bearer "+p.key)
	resp, err := abuseClient.Do(req)
	if err != nil {
		return "Go's client got no answer: " + err.Error(), false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return fmt.Sprintf("%d %s", resp.StatusCode, bytes.TrimSpace(b)), resp.StatusCode == http.StatusRequestEntityTooLarge
}

// farDates sends 20,000 events with distinct far-past and far-future dates, then checks that
// a normal event still reaches the history.
func farDates(p *target) (string, bool) {
	accepted, rejected := 0, 0
	base := time.Date(1000, 1, 1, 0, 0, 0, 0, time.UTC)
	for b := range 20 {
		var sb strings.Builder
		sb.WriteByte('[')
		for i := range 1000 {
			if i > 0 {
				sb.WriteByte(',')
			}
			n := b*1000 + i
			at := base.AddDate(0, 0, n*150) // every 150 days from year 1000: past and far future
			fmt.Fprintf(&sb, `{"id":"far-%d","type":"smtp.ehlo","createdAt":%q}`, n, at.Format(time.RFC3339))
		}
		sb.WriteByte(']')
		_, body, err := p.post("/api/v1/events", p.key, sb.String())
		if err != nil {
			return err.Error(), false
		}
		var r struct{ Accepted, Rejected int }
		_ = json.Unmarshal([]byte(body), &r)
		accepted, rejected = accepted+r.Accepted, rejected+r.Rejected
	}
	code, _, err := p.post("/api/v1/events", p.key, `[{"id":"after-far-dates","type":"abuse.marker"}]`)
	if err != nil || code != http.StatusAccepted {
		return fmt.Sprintf("a normal event after them: %d %v", code, err), false
	}
	found := poll.Wait(30*time.Second, func() bool {
		_, body, err := p.get("/api/v1/events?types=abuse.marker", p.admin)
		return err == nil && strings.Contains(body, "after-far-dates")
	})
	return fmt.Sprintf("accepted %d, rejected %d; a normal event sent after them is in the history: %v", accepted, rejected, found), found
}

// cardinality sends 100,000 distinct event types from one source, then measures the
// Prometheus exposition.
func cardinality(p *target) (string, bool) {
	for b := range 10 {
		var sb strings.Builder
		sb.WriteByte('[')
		for i := range 10_000 {
			if i > 0 {
				sb.WriteByte(',')
			}
			fmt.Fprintf(&sb, `{"id":"card-%d-%d","type":"flood.t%d"}`, b, i, b*10_000+i)
		}
		sb.WriteByte(']')
		if code, body, err := p.post("/api/v1/events", p.key, sb.String()); err != nil || code != http.StatusAccepted {
			return fmt.Sprintf("batch %d: %d %v %.200s", b, code, err, body), false
		}
	}
	var size int
	poll.Wait(15*time.Second, func() bool {
		_, body, err := p.get("/metrics/prometheus", p.admin)
		size = len(body)
		return err == nil && strings.Contains(body, "flood_")
	})
	_, own, _ := p.get("/metrics", p.admin)
	var overflow []string
	for _, line := range strings.Split(own, "\n") {
		if strings.HasPrefix(line, "mailpulse_producer_metrics_overflow_total") {
			overflow = append(overflow, line)
		}
	}
	return fmt.Sprintf("/metrics/prometheus is %d KiB; %s", size>>10, strings.Join(overflow, ", ")), size < 4<<20 && len(overflow) > 0
}

// badSources sends sources that are no subject tokens.
func badSources(p *target) (string, bool) {
	statuses := map[string]int{}
	for _, src := range []string{"a..b", "with space", "gt>", "star*", strings.Repeat("x", 300)} {
		code, _, err := p.post("/api/v1/events", p.key, fmt.Sprintf(`[{"id":"src-%d","type":"smtp.ehlo","source":%q}]`, len(src), src))
		k := strconv.Itoa(code)
		if err != nil {
			k = "error"
		}
		statuses[k]++
	}
	return countStatuses(statuses), statuses["400"] == 5
}

// invalidUTF8 sends data with bytes that are not UTF-8.
func invalidUTF8(p *target) (string, bool) {
	code, body, err := p.post("/api/v1/events", p.key, "[{\"id\":\"utf\",\"type\":\"smtp.ehlo\",\"data\":{\"host\":\"\xff\xfe\"}}]")
	if err != nil {
		return err.Error(), false
	}
	return fmt.Sprintf("%d %.160s", code, body), code == http.StatusBadRequest
}

// headerBomb sends a request with a megabyte of headers.
func headerBomb(p *target) (string, bool) {
	c, err := net.DialTimeout("tcp", p.http, 2*time.Second)
	if err != nil {
		return err.Error(), false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	var sb strings.Builder
	sb.WriteString("GET /healthz HTTP/1.1\r\nHost: x\r\n")
	for i := range 20_000 {
		fmt.Fprintf(&sb, "X-Bomb-%d: %s\r\n", i, strings.Repeat("b", 40))
	}
	sb.WriteString("\r\n")
	_, _ = c.Write([]byte(sb.String()))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "connection closed without an answer (" + err.Error() + ")", true
	}
	return strings.TrimSpace(line), strings.Contains(line, " 431 ") || strings.Contains(line, " 400 ")
}

// queryInjection sends SQL in every parameter of the history search.
func queryInjection(p *target) (string, bool) {
	statuses := map[string]int{}
	for _, q := range []string{"text=%27%20OR%201%3D1%20--", "to=x%27%3B%20DROP%20TABLE%20events%3B--", "types=smtp.*%27", "source=%27%29%20OR%20%281%3D1", "cursor=%27"} {
		code, _, err := p.get("/api/v1/events?"+q, p.admin)
		k := strconv.Itoa(code)
		if err != nil {
			k = "error"
		}
		statuses[k]++
	}
	return countStatuses(statuses), statuses["500"] == 0 && statuses["error"] == 0
}

// revokedKey opens a stream with a new key, revokes the key, and times the stream's end.
func revokedKey(p *target) (string, bool) {
	code, body, err := p.do(http.MethodPost, "http://"+p.http+"/api/v1/keys", p.admin, strings.NewReader(`{"name":"abuse","role":"viewer"}`))
	var k struct{ ID, Key string }
	if err != nil || code != http.StatusCreated || json.Unmarshal([]byte(body), &k) != nil {
		return fmt.Sprintf("create key: %d %v", code, err), false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.http+"/api/v1/live/events", nil)
	req.Header.Set("Authorization", "Bearer "+k.Key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		return fmt.Sprintf("open stream: %v", err), false
	}
	defer resp.Body.Close()
	ended := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, resp.Body); close(ended) }()
	start := time.Now()
	if code, _, err := p.do(http.MethodDelete, "http://"+p.http+"/api/v1/keys/"+k.ID, p.admin, nil); err != nil || code != http.StatusNoContent {
		return fmt.Sprintf("revoke: %d %v", code, err), false
	}
	select {
	case <-ended:
		return fmt.Sprintf("the stream ended %v after the revocation", time.Since(start).Round(time.Microsecond)), time.Since(start) < 5*time.Second
	case <-ctx.Done():
		return "the stream was still open 20 s after its key was revoked", false
	}
}

// manyStreams opens 2,000 SSE connections with one key: past the per-key cap they are
// refused with 429, and the process keeps answering.
func manyStreams(p *target) (string, bool) {
	statuses := map[string]int{}
	var bodies []io.Closer
	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 0, MaxIdleConnsPerHost: 0}}
	for range 2000 {
		req, _ := http.NewRequest(http.MethodGet, "http://"+p.http+"/api/v1/live/events", nil)
		req.Header.Set("Authorization", "Bearer "+p.admin)
		resp, err := client.Do(req)
		k := "error"
		if err == nil {
			k = strconv.Itoa(resp.StatusCode)
			if resp.StatusCode == 200 {
				bodies = append(bodies, resp.Body)
			} else {
				resp.Body.Close()
			}
		}
		statuses[k]++
	}
	alive := p.healthy()
	for _, b := range bodies {
		b.Close()
	}
	return countStatuses(statuses) + fmt.Sprintf("; /healthz while open: %v", alive), alive && statuses["429"] > 0
}
