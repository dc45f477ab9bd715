package httpserver_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailpulse/mailpulse/shared/apikey"
	"github.com/mailpulse/mailpulse/shared/broker/brokertest"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/httpserver"
	"github.com/mailpulse/mailpulse/shared/poll"
)

// server is an app of New served by Serve, with an admin key and its metrics.
type server struct {
	addr  string
	url   string
	admin string
	reg   *prometheus.Registry
	done  chan error // Serve's result, once it returns
	// held, when a test sets it, is where POST /hold waits with its body read.
	held chan struct{}
}

type serverOpts struct {
	cfg httpserver.Config
	ln  httpserver.ListenerConfig
	// listen wraps the real listener, for a fake one that fails.
	listen func(net.Listener) net.Listener
}

func openKeys(t *testing.T) (*apikey.Store, string) {
	t.Helper()
	s := brokertest.Start(t)
	js, _ := jetstream.New(s.Conn())
	if err := bus.Provision(t.Context(), js, bus.Limits{}, nil); err != nil {
		t.Fatal(err)
	}
	kv, _ := js.KeyValue(t.Context(), bus.BucketKeys)
	keys, err := apikey.Open(t.Context(), kv, nil)
	if err != nil {
		t.Fatal(err)
	}
	admin, _, err := keys.Create(t.Context(), "a", apikey.Admin)
	if err != nil {
		t.Fatal(err)
	}
	return keys, admin
}

func serve(t *testing.T, o serverOpts) *server {
	t.Helper()
	keys, admin := openKeys(t)
	reg := prometheus.NewRegistry()
	o.cfg.Registry, o.ln.Registry = reg, reg
	if o.cfg.Name == "" {
		o.cfg.Name = "test"
	}
	s := &server{admin: admin, reg: reg, done: make(chan error, 1), held: make(chan struct{})}
	app := httpserver.New(o.cfg)
	httpserver.Health(app, keys, func() error { return nil }, reg)
	app.Post("/admin", httpserver.RequireKey(keys, apikey.Admin), func(c *fiber.Ctx) error {
		return c.SendString(fmt.Sprintf("read %d bytes", len(c.Body())))
	})
	app.Post("/hold", httpserver.RequireKey(keys, apikey.Admin), func(c *fiber.Ctx) error {
		<-s.held
		return c.SendString("released")
	})
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener = raw
	if o.listen != nil {
		ln = o.listen(raw)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { s.done <- httpserver.Serve(ctx, app, httpserver.NewListener(ln, o.ln), 5*time.Second, nil) }()
	t.Cleanup(func() {
		cancel()
		if err := <-s.done; err != nil {
			t.Errorf("Serve = %v", err)
		}
	})
	s.addr = raw.Addr().String()
	s.url = "http://" + s.addr
	return s
}

// metric sums the samples of the metric name in the server's registry.
func (s *server) metric(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := s.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			}
		}
	}
	return sum
}

// running fails the test if Serve has returned.
func (s *server) running(t *testing.T) {
	t.Helper()
	select {
	case err := <-s.done:
		s.done <- err
		t.Fatalf("the server stopped: Serve = %v", err)
	default:
	}
}

func (s *server) healthy() bool {
	resp, err := http.Get(s.url + "/healthz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}

// rawRequest sends head (request line and headers) and the first body bytes of the body
// on a new connection, and reads the answer, waiting at most 10 s: a server that waits for
// the rest of the body does not answer. (fasthttp reads up to 8 KiB of a body before any
// handler runs: a test sends them.)
func rawRequest(t *testing.T, addr, head string, body int) (*http.Response, string, net.Conn) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := io.WriteString(conn, head+strings.Repeat("x", body)); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer to the headers alone (the server waits for the body?): %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b), conn
}

// patterned is n bytes of body that are not allocated.
type patterned struct{ n int64 }

func (p *patterned) Read(b []byte) (int, error) {
	if p.n == 0 {
		return 0, io.EOF
	}
	k := min(int64(len(b)), p.n)
	for i := range b[:k] {
		b[i] = 'x'
	}
	p.n -= k
	return int(k), nil
}

func post(t *testing.T, url, auth string, body io.Reader, length int64) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, body)
	req.ContentLength = length // -1: chunked
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

// A key that is missing or wrong is answered from the headers: the body is never waited
// for, nor read into memory, and the connection closes after the answer (issue 9 #5).
func TestUnauthenticatedBodyIsNotRead(t *testing.T) {
	s := serve(t, serverOpts{cfg: httpserver.Config{BodyLimit: 16 << 20}})
	for _, tc := range []struct {
		name, head string
		body       int
	}{
		{"no key", "POST /admin HTTP/1.1\r\nHost: x\r\nContent-Length: 15728640\r\n\r\n", 8 << 10},
		{"wrong key", "POST /admin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer mpk_nope_x\r\nContent-Length: 15728640\r\n\r\n", 8 << 10},
		{"chunked", "POST /admin HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 0},
		// A multipart body used to be parsed (to memory and files) before any handler ran.
		{"multipart", "POST /admin HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 104857600\r\n\r\n", 8 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body, _ := rawRequest(t, s.addr, tc.head, tc.body)
			if resp.StatusCode != 401 || !resp.Close {
				t.Fatalf("%s = %d %s (close %v), want 401 and Connection: close", tc.name, resp.StatusCode, body, resp.Close)
			}
		})
	}
	// Clients that write the whole body before reading (Go's among them) read the 401 too.
	for range 4 {
		if code, body, _ := post(t, s.url+"/admin", "", &patterned{n: 15 << 20}, 15<<20); code != 401 {
			t.Fatalf("POST 15 MiB without a key = %d %s, want 401", code, body)
		}
	}
	if n := s.metric(t, "mailpulse_http_body_read_bytes_total"); n != 0 {
		t.Errorf("the handlers read %v bytes of unauthenticated bodies, want 0", n)
	}
	if n := s.metric(t, "mailpulse_http_lingering_closes_total"); n == 0 {
		t.Error("no lingering close counted")
	}
}

// An oversized body is answered 413 with the limit, and Go's client reads that answer
// instead of a reset connection: the server discards the rest of the body before closing
// (issue 8 #4).
func TestOversizedBodyAnswerIsReadable(t *testing.T) {
	s := serve(t, serverOpts{cfg: httpserver.Config{BodyLimit: 1 << 20}})
	auth := "Bearer " + s.admin
	for _, tc := range []struct {
		name   string
		length int64
	}{{"declared", 64 << 20}, {"chunked", -1}} {
		t.Run(tc.name, func(t *testing.T) {
			code, body, _ := post(t, s.url+"/admin", auth, &patterned{n: 64 << 20}, tc.length)
			if code != 413 || !strings.Contains(body, "1048576 bytes") || !strings.Contains(body, `"limit":1048576`) {
				t.Fatalf("POST 64 MiB = %d %s, want 413 naming the limit", code, body)
			}
		})
	}
	if code, body, _ := post(t, s.url+"/admin", auth, strings.NewReader("hello"), 5); code != 200 || body != "read 5 bytes" {
		t.Errorf("a small body after = %d %s", code, body)
	}
	if code, body, _ := post(t, s.url+"/admin", auth, &patterned{n: 1 << 20}, -1); code != 200 || body != "read 1048576 bytes" {
		t.Errorf("a chunked body at the limit = %d %s", code, body)
	}
}

// Fiber would decompress an encoded body without bound: it is refused.
func TestEncodedBodyRefused(t *testing.T) {
	s := serve(t, serverOpts{})
	resp, body, _ := rawRequest(t, s.addr, "POST /admin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+s.admin+"\r\nContent-Encoding: gzip\r\nContent-Length: 100\r\n\r\n", 100)
	if resp.StatusCode != 415 {
		t.Fatalf("gzip body = %d %s, want 415", resp.StatusCode, body)
	}
}

// Bodies held in memory at once are bounded: a request that finds no room within the wait
// gets 503 with Retry-After, and is served once room is made.
func TestBodyMemoryIsBounded(t *testing.T) {
	s := serve(t, serverOpts{cfg: httpserver.Config{BodyLimit: 4096, BodyMemory: 6000, BodyWait: 50 * time.Millisecond}})
	auth := "Bearer " + s.admin
	first := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, s.url+"/hold", strings.NewReader(strings.Repeat("a", 4000)))
		req.Header.Set("Authorization", auth)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			first <- 0
			return
		}
		resp.Body.Close()
		first <- resp.StatusCode
	}()
	poll.Until(t, "the first body to hold its memory", func() bool { return s.metric(t, "mailpulse_http_body_memory_bytes") == 4000 })
	code, body, hdr := post(t, s.url+"/admin", auth, strings.NewReader(strings.Repeat("b", 4000)), 4000)
	if code != 503 || hdr.Get("Retry-After") == "" || !strings.Contains(body, "bodies in memory") {
		t.Fatalf("a body with no room = %d %s (Retry-After %q), want 503 with Retry-After", code, body, hdr.Get("Retry-After"))
	}
	if code, _, _ := post(t, s.url+"/admin", auth, strings.NewReader("small"), 5); code != 200 {
		t.Errorf("a body that fits = %d, want 200", code)
	}
	close(s.held)
	if code := <-first; code != 200 {
		t.Fatalf("the held request = %d", code)
	}
	if code, _, _ := post(t, s.url+"/admin", auth, strings.NewReader(strings.Repeat("b", 4000)), 4000); code != 200 {
		t.Errorf("the same body once room is made = %d, want 200", code)
	}
	if n := s.metric(t, "mailpulse_http_body_memory_refused_total"); n != 1 {
		t.Errorf("refusals counted = %v, want 1", n)
	}
}

// A client sending its headers slowly (slowloris) is cut after the header timeout.
func TestSlowHeadersAreCut(t *testing.T) {
	s := serve(t, serverOpts{cfg: httpserver.Config{HeaderTimeout: 200 * time.Millisecond}})
	conn, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: a")
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = io.ReadAll(conn) // whatever the server says, it must end the connection
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the connection of a client that never finished its headers is still open after 10 s")
	}
	if !s.healthy() {
		t.Error("/healthz does not answer")
	}
}

// failing is a listener whose Accept fails with errs before it accepts for real, as
// accept4 does when the process is out of file descriptors.
type failing struct {
	net.Listener
	errs  []error
	calls atomic.Int32
}

func (f *failing) Accept() (net.Conn, error) {
	if i := int(f.calls.Add(1)) - 1; i < len(f.errs) {
		return nil, f.errs[i]
	}
	return f.Listener.Accept()
}

// Temporary accept errors are retried with back-off, never returned: the server keeps
// serving (issue 9 #1; Fiber's Listener used to return, and the errgroup stopped every
// service with it).
func TestAcceptErrorsDoNotStopTheServer(t *testing.T) {
	accept := func(err error) error {
		return &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", err)}
	}
	f := &failing{errs: []error{accept(syscall.EMFILE), accept(syscall.EMFILE), accept(syscall.ENFILE), accept(syscall.ECONNABORTED)}}
	s := serve(t, serverOpts{listen: func(ln net.Listener) net.Listener { f.Listener = ln; return f }})
	poll.Until(t, "/healthz to answer", s.healthy)
	s.running(t)
	if n := s.metric(t, "mailpulse_http_accept_errors_total"); n != 4 {
		t.Errorf("accept errors counted = %v, want 4", n)
	}
}

// A permanent accept error is returned: retrying it would spin.
func TestPermanentAcceptErrorIsReturned(t *testing.T) {
	perm := errors.New("listener broken")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	l := httpserver.NewListener(&failing{Listener: ln, errs: []error{perm}}, httpserver.ListenerConfig{})
	if _, err := l.Accept(); !errors.Is(err, perm) {
		t.Fatalf("Accept = %v, want the permanent error", err)
	}
}

// More connections than a cap are closed at once with 503 and counted; the server goes on,
// and serves again once they go.
func TestConnectionCaps(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cfg       httpserver.ListenerConfig
		capName   string
		connsOpen int
	}{
		{"per listener", httpserver.ListenerConfig{MaxConns: 3, MaxConnsPerIP: 100}, "limit", 3},
		{"per client address", httpserver.ListenerConfig{MaxConns: 100, MaxConnsPerIP: 3}, "per_ip", 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := serve(t, serverOpts{ln: tc.cfg})
			var conns []net.Conn
			for range tc.connsOpen {
				c, err := net.Dial("tcp", s.addr)
				if err != nil {
					t.Fatal(err)
				}
				conns = append(conns, c)
			}
			poll.Until(t, "the connections to be accepted", func() bool {
				return s.metric(t, "mailpulse_http_connections_open") == float64(tc.connsOpen)
			})
			over, err := net.Dial("tcp", s.addr)
			if err != nil {
				t.Fatal(err)
			}
			_ = over.SetReadDeadline(time.Now().Add(10 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(over), nil)
			if err != nil || resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
				t.Fatalf("a connection over the cap: %v %v, want 503 with Retry-After", resp, err)
			}
			resp.Body.Close()
			if _, err := over.Read(make([]byte, 1)); err != io.EOF {
				t.Errorf("a connection over the cap is not closed: %v", err)
			}
			over.Close()
			if n := s.metric(t, "mailpulse_http_connections_refused_total"); n != 1 {
				t.Errorf("refused connections = %v, want 1", n)
			}
			for _, c := range conns {
				c.Close()
			}
			poll.Until(t, "/healthz to answer once the connections go", s.healthy)
			s.running(t)
		})
	}
}
