package httpserver_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailpulse/mailpulse/shared/apikey"
	"github.com/mailpulse/mailpulse/shared/broker/brokertest"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/httpserver"
	"github.com/mailpulse/mailpulse/shared/httpserver/httpservertest"
)

func TestMain(m *testing.M) { httpservertest.VerifyTestMain(m) }

type fixture struct {
	url           string
	admin, viewer string
}

func start(t *testing.T) fixture {
	t.Helper()
	s := brokertest.Start(t)
	js, _ := jetstream.New(s.Conn())
	if err := bus.Provision(t.Context(), js, bus.Limits{}, nil); err != nil {
		t.Fatal(err)
	}
	kv, _ := js.KeyValue(t.Context(), bus.BucketKeys)
	ctx, cancel := context.WithCancel(context.Background())
	keys, err := apikey.Open(ctx, kv, nil)
	if err != nil {
		t.Fatal(err)
	}
	admin, _, err := keys.Create(t.Context(), "a", apikey.Admin)
	if err != nil {
		t.Fatal(err)
	}
	viewer, _, _ := keys.Create(t.Context(), "v", apikey.Viewer)

	app := httpserver.New(httpserver.Config{Name: "test", BodyLimit: 1024})
	httpserver.Health(app, keys, func() error { return nil }, prometheus.NewRegistry())
	app.Post("/admin", httpserver.RequireKey(keys, apikey.Admin), func(c *fiber.Ctx) error {
		return c.SendString("hello " + httpserver.KeyOf(c).Name)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- httpserver.Serve(ctx, app, ln, 5*time.Second, nil) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve = %v", err)
		}
	})
	return fixture{url: "http://" + ln.Addr().String(), admin: admin, viewer: viewer}
}

func do(t *testing.T, method, url, auth, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAuthByRole(t *testing.T) {
	f := start(t)
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("anyone:"+f.admin))
	for _, tc := range []struct {
		name, auth string
		want       int
	}{
		{"no key", "", 401},
		{"wrong key", "Bearer mp_nope", 401},
		{"unknown scheme", "Digest " + f.admin, 401},
		{"viewer on an admin route", "Bearer " + f.viewer, 403},
		{"admin", "Bearer " + f.admin, 200},
		{"scheme in any case", "bEARER " + f.admin, 200},
		{"Basic with the key as password", basic, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := do(t, "POST", f.url+"/admin", tc.auth, "")
			if code != tc.want {
				t.Fatalf("POST /admin with %q = %d %s, want %d", tc.name, code, body, tc.want)
			}
			if strings.Contains(body, f.admin) || strings.Contains(body, f.viewer) {
				t.Fatalf("the answer echoes the key: %s", body)
			}
		})
	}
}

func TestHealthAndMetrics(t *testing.T) {
	f := start(t)
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/metrics": 401} {
		if code, _ := do(t, "GET", f.url+path, "", ""); code != want {
			t.Errorf("GET %s without a key = %d, want %d", path, code, want)
		}
	}
	if code, _ := do(t, "GET", f.url+"/metrics", "Bearer "+f.viewer, ""); code != 200 {
		t.Errorf("GET /metrics with a viewer key = %d, want 200", code)
	}
}

func TestBodyLimitIsStated(t *testing.T) {
	f := start(t)
	code, body := do(t, "POST", f.url+"/admin", "Bearer "+f.admin, strings.Repeat("x", 4096))
	if code != 413 || !strings.Contains(body, "1024 bytes") {
		t.Fatalf("oversized body = %d %s, want 413 naming the limit", code, body)
	}
}

// A request that fasthttp cannot parse is answered with a status text: its error message
// quotes the raw request, Authorization header included.
func TestMalformedRequestDoesNotEchoHeaders(t *testing.T) {
	f := start(t)
	conn, err := net.Dial("tcp", strings.TrimPrefix(f.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+f.admin+"\r\nContent-Length: zz\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || strings.Contains(string(b), f.admin) {
		t.Fatalf("malformed request = %d %s; want 400 without the key", resp.StatusCode, b)
	}
}

func TestParseCredential(t *testing.T) {
	for in, want := range map[string]string{
		"Bearer abc":   "abc",
		"bearer  abc ": "abc",
		"Basic " + base64.StdEncoding.EncodeToString([]byte("u:p:q")): "p:q",
		"Basic !!!": "",
		"abc":       "",
		"":          "",
	} {
		if got := httpserver.ParseCredential(in); got != want {
			t.Errorf("ParseCredential(%q) = %q, want %q", in, got, want)
		}
	}
}
