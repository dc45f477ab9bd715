package app_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailpulse/mailpulse/internal/app"
	"github.com/mailpulse/mailpulse/shared/broker/brokertest"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/datadir"
	"github.com/mailpulse/mailpulse/shared/poll"
)

func runAll(t *testing.T, dataDir string, env []string) (app.Ready, func()) {
	t.Helper()
	return runRole(t, "all", append([]string{"MAILPULSE_DATA_DIR=" + dataDir, "MAILPULSE_INGEST_ADDR=127.0.0.1:0",
		"MAILPULSE_HTTP_ADDR=127.0.0.1:0", "MAILPULSE_NATS_LISTEN=127.0.0.1:0", "MAILPULSE_SHUTDOWN_GRACE=5s"}, env...))
}

// runRole runs a role with the given environment until the returned stop is called, and
// returns once it is ready.
func runRole(t *testing.T, role string, env []string) (app.Ready, func()) {
	t.Helper()
	set, _, err := app.Load(role, nil, env)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	readyCh := make(chan app.Ready, 1)
	done := make(chan error, 1)
	go func() {
		done <- app.Run(ctx, role, set, set.Process.Logger(io.Discard), func(r app.Ready) { readyCh <- r })
	}()
	select {
	case r := <-readyCh:
		return r, func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run = %v", err)
				}
			case <-time.After(20 * time.Second):
				t.Error("mailpulse did not stop within 20 s")
			}
		}
	case err := <-done:
		cancel()
		t.Fatalf("Run = %v before it was ready", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("not ready after 30 s")
	}
	return app.Ready{}, nil
}

func TestAllModeRunsAndKeepsItsLogAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	r, stop := runAll(t, dir, []string{"MAILPULSE_SIMULATE=200", "MAILPULSE_METRICS_INTERVAL=1s"})
	if r.AdminKey == "" || r.IngestKey == "" || r.NATSPass == "" {
		t.Fatalf("first start generated no keys or NATS password: %+v", r)
	}
	var banner strings.Builder
	app.PrintBanner(&banner, r)
	for _, want := range []string{r.AdminKey, r.IngestKey, "/api/v1/events", "/ingest/stalwart", "200 events/s", r.NATSURL} {
		if !strings.Contains(banner.String(), want) {
			t.Errorf("banner lacks %q:\n%s", want, banner.String())
		}
	}
	url := "http://" + r.IngestAddr.String() + "/api/v1/events"
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(`[{"id":"e2e-1","type":"e2e.marker"}]`))
	req.Header.Set("Authorization", "Bearer "+r.IngestKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 202 {
		t.Fatalf("ingest = %v", resp.StatusCode)
	}

	// The event becomes searchable through the gateway, answered by the archiver.
	search := func(query string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, "http://"+r.HTTPAddr.String()+"/api/v1/events?"+query, nil)
		req.Header.Set("Authorization", "Bearer "+r.AdminKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	poll.Until(t, "the event to be searchable", func() bool {
		code, body := search("types=e2e.*")
		return code == 200 && strings.Contains(body, `"id":"e2e-1"`)
	})
	if code, body := search("start=2026-11-21T10:00:00Z&end=2026-11-20T10:00:00Z"); code != 400 || !strings.Contains(body, "reversed") {
		t.Errorf("reversed range: %d %s", code, body)
	}
	// The README's first history example, as written: to= is a key, not the time range.
	req, _ = http.NewRequest(http.MethodPost, url, strings.NewReader(`[{"id":"e2e-bob","type":"delivery.delivered","data":{"to":["bob@example.org"]}},{"id":"e2e-carol","type":"delivery.delivered","data":{"to":["carol@example.org"]}}]`))
	req.Header.Set("Authorization", "Bearer "+r.IngestKey)
	if resp, err = http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	poll.Until(t, "the README's deliveries-to-bob search to find bob's delivery alone", func() bool {
		code, body := search("types=delivery.*&to=bob@example.org&limit=50")
		return code == 200 && strings.Contains(body, `"id":"e2e-bob"`) && !strings.Contains(body, `"id":"e2e-carol"`)
	})

	// Stalwart 0.15's history routes over a session with a queue id.
	session := `[{"type":"smtp.connection-start","data":{"spanId":"e2e-span","remoteIp":"192.0.2.44"}},
		{"type":"smtp.rcpt-to","data":{"spanId":"e2e-span","to":["zoe@example.org"]}},
		{"type":"queue.message-queued","data":{"spanId":"e2e-span","queueId":"e2e-q1","from":"x@example.com","to":["zoe@example.org"]}}]`
	req, _ = http.NewRequest(http.MethodPost, url, strings.NewReader(session))
	req.Header.Set("Authorization", "Bearer "+r.IngestKey)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 202 {
		t.Fatalf("ingest session: %v", resp.StatusCode)
	}
	stalwart := func(path string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, "http://"+r.HTTPAddr.String()+path, nil)
		req.Header.Set("Authorization", "Bearer "+r.AdminKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	poll.Until(t, "/api/telemetry/traces?queue_id=… to find the session", func() bool {
		code, body := stalwart("/api/telemetry/traces?queue_id=e2e-q1")
		return code == 200 && body == `{"data":{"items":["e2e-span"],"total":1}}`
	})
	// The 0.15 route names the queueing as 0.15 did (queue.queue-message).
	if code, body := stalwart("/api/telemetry/traces?filter=zoe@example.org&type=smtp.connection-start&values=1"); code != 200 ||
		!strings.Contains(body, `"type":"queue.queue-message"`) || !strings.Contains(body, `"text":"Message queued for delivery"`) || !strings.Contains(body, `"total":1`) {
		t.Errorf("traces with values: %d %s", code, body)
	}
	if code, body := stalwart("/api/telemetry/trace/e2e-span"); code != 200 || strings.Count(body, `"type":`) != 3 {
		t.Errorf("trace: %d %s", code, body)
	}
	if code, body := stalwart("/api/telemetry/traces?queue_id=e2e-q1&page=0&limit=0"); code != 200 || body != `{"data":{"items":["e2e-span"],"total":1}}` {
		t.Errorf("page=0&limit=0 (Stalwart's first page, every session): %d %s", code, body)
	}

	// Metric history: the producer's snapshots (every second here) reach the archiver.
	poll.Until(t, "metric history of the simulated counters", func() bool {
		code, body := stalwart("/api/v1/metrics/history?metrics=smtp.*&step=10s&start=" + time.Now().Add(-5*time.Minute).UTC().Format(time.RFC3339))
		return code == 200 && strings.Contains(body, `"metric":"smtp.connection-start","kind":"counter"`)
	})
	if code, body := stalwart("/api/telemetry/metrics?after=" + time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)); code != 200 || !strings.Contains(body, `"type":"counter","value"`) && !strings.Contains(body, `"type":"counter"`) {
		t.Errorf("Stalwart metrics history: %d %.300s", code, body)
	}
	if code, _ := stalwart("/api/v1/metrics/history?step=1ms"); code != 400 {
		t.Errorf("bad step: %d, want 400", code)
	}
	// All the services' own metrics on the gateway's /metrics, the history's disk use among them.
	if code, body := stalwart("/metrics"); code != 200 || !strings.Contains(body, "mailpulse_archiver_store_bytes") ||
		!strings.Contains(body, "mailpulse_producer_events_stored_total") || !strings.Contains(body, "mailpulse_gateway_streams_open") {
		t.Errorf("/metrics: %d, lacks a service's metrics", code)
	}

	// Another process joins the embedded server over TCP with the printed credentials and
	// sees the simulator's events accumulate.
	// The server checks a bcrypt hash: slow under the race detector, hence the timeout.
	nc, err := nats.Connect(r.NATSURL, nats.UserInfo(r.NATSUser, r.NATSPass), nats.Timeout(20*time.Second))
	if err != nil {
		t.Fatalf("connect with the printed credentials: %v", err)
	}
	js, _ := jetstream.New(nc)
	count := func() uint64 {
		st, err := js.Stream(t.Context(), bus.StreamEvents)
		if err != nil {
			return 0
		}
		info, err := st.Info(t.Context())
		if err != nil {
			return 0
		}
		return info.State.Msgs
	}
	poll.Until(t, "simulated events to accumulate", func() bool { return count() >= 100 })
	nc.Close()
	stop()
	r2, stop2 := runAll(t, dir, []string{"MAILPULSE_SIMULATE=0"})
	defer stop2()
	if r2.AdminKey != "" || r2.IngestKey != "" || r2.NATSPass != "" {
		t.Errorf("second start generated new secrets: %+v", r2)
	}
	// The first start's key still works, and the event sent then is still in the log.
	req, _ = http.NewRequest(http.MethodPost, "http://"+r2.IngestAddr.String()+"/api/v1/events", strings.NewReader(`[{"id":"e2e-1","type":"e2e.marker"}]`))
	req.Header.Set("Authorization", "Bearer "+r.IngestKey)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 202 {
		t.Fatalf("ingest with the first start's key = %v", resp.StatusCode)
	}
	nc, err = nats.Connect(r2.NATSURL, nats.UserInfo(r.NATSUser, r.NATSPass), nats.Timeout(20*time.Second))
	if err != nil {
		t.Fatalf("the first start's NATS password no longer works: %v", err)
	}
	defer nc.Close()
	js, _ = jetstream.New(nc)
	st, _ := js.Stream(t.Context(), bus.StreamEvents)
	m, err := st.GetLastMsgForSubject(t.Context(), "events.e2e.marker")
	if err != nil || !strings.Contains(string(m.Data), `"id":"e2e-1"`) {
		t.Errorf("event from before the restart: %v %v", m, err)
	}
	if n := count(); n < 100 {
		t.Errorf("log holds %d events after restart, want the ≥100 from before", n)
	}
}

func TestOtherRolesNeedAnExternalNATS(t *testing.T) {
	_, _, err := app.Load("producer", nil, nil)
	if err == nil || !strings.Contains(err.Error(), "nats.url") {
		t.Errorf("producer without nats.url: %v", err)
	}
}

// externalNATS is the environment of a role run against srv.
func externalNATS(srv *brokertest.Server) []string {
	return []string{"MAILPULSE_NATS_URL=" + srv.ClientURL(), "MAILPULSE_NATS_USER=" + brokertest.User, "MAILPULSE_NATS_PASSWORD=" + brokertest.Password}
}

func TestArchiverRoleServesHealthAndMetrics(t *testing.T) {
	srv := brokertest.StartTCP(t)
	r, stop := runRole(t, "archiver", append(externalNATS(srv), "MAILPULSE_DATA_DIR="+t.TempDir(), "MAILPULSE_ARCHIVER_ADDR=127.0.0.1:0"))
	defer stop()
	base := "http://" + r.HTTPAddr.String()
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/metrics": 401} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s = %v, want %d", path, resp.StatusCode, want)
		}
	}
	req, _ := http.NewRequest(http.MethodGet, base+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+r.AdminKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/metrics with a key: %v %v", resp.StatusCode, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "mailpulse_archiver_store_bytes") || !strings.Contains(string(b), "go_goroutines") ||
		!strings.Contains(string(b), "mailpulse_consumer_processed_total") {
		t.Error("/metrics lacks the archiver's store size")
	}
}

// A bad setting stops start-up with its reason, together with every other problem; before,
// a bad keep pattern started an archiver that acknowledged every event and stored none.
func TestBadSettingsStopStartUp(t *testing.T) {
	_, _, err := app.Load("all", nil, []string{"MAILPULSE_ARCHIVER_INCLUDE=SMTP.*,auth.failed", "MAILPULSE_GATEWAY_HEARTBEAT=1ms",
		"MAILPULSE_INGEST_MAX_BATCH=0", "MAILPULSE_ARCHIVER_MIN_LEVEL=loud"})
	if err == nil {
		t.Fatal("Load accepted bad settings")
	}
	for _, want := range []string{`archiver.include: types: pattern "SMTP.*"`, "gateway.heartbeat:", "ingest.max_batch:", "archiver.min_level:"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

// The banner's first command runs as printed, in a shell, on a second start (when the keys
// are variables): single quotes used to send the literal "$MAILPULSE_INGEST_KEY".
func TestBannerCommandRunsAsPrinted(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is needed to run the banner's command (apt-get install curl)")
	}
	r, stop := runAll(t, t.TempDir(), []string{"MAILPULSE_SIMULATE=0"})
	defer stop()
	second := r
	second.AdminKey, second.IngestKey, second.NATSPass = "", "", ""
	var b strings.Builder
	app.PrintBanner(&b, second)
	banner := b.String()
	i := strings.Index(banner, "curl -H")
	if i < 0 {
		t.Fatalf("no command in the banner:\n%s", banner)
	}
	cmd := banner[i:]
	cmd = cmd[:strings.Index(cmd, "/api/v1/events")+len("/api/v1/events")]
	c := exec.Command("sh", "-c", cmd+" -s")
	c.Env = append(os.Environ(), "MAILPULSE_INGEST_KEY="+r.IngestKey)
	out, err := c.CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"accepted":1`) {
		t.Fatalf("%s\n= %s %v; want the event accepted", cmd, out, err)
	}
	for _, want := range []string{"/api/v1/events   sessions", "/metrics/prometheus"} {
		if !strings.Contains(banner, want) {
			t.Errorf("banner lacks %q:\n%s", want, banner)
		}
	}
}

// A role's banner lists only what the role serves.
func TestArchiverBannerListsNoGatewayRoute(t *testing.T) {
	var b strings.Builder
	app.PrintBanner(&b, app.Ready{Role: "archiver", HTTPAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8082}})
	if strings.Contains(b.String(), "/api/v1/live/events") || !strings.Contains(b.String(), "127.0.0.1:8082/healthz") {
		t.Fatalf("archiver banner:\n%s", b.String())
	}
}

// One process at a time on a data dir: a second mailpulse, or a rebuild while one runs,
// fails at once naming the first, instead of opening the same store (issue 9 #2, issue 8 #1).
func TestDataDirIsLocked(t *testing.T) {
	dir := t.TempDir()
	_, stop := runAll(t, dir, []string{"MAILPULSE_SIMULATE=0"})
	defer stop()
	set, _, err := app.Load("all", nil, []string{"MAILPULSE_DATA_DIR=" + dir, "MAILPULSE_INGEST_ADDR=127.0.0.1:0", "MAILPULSE_HTTP_ADDR=127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	err = app.Rebuild(t.Context(), set, set.Process.Logger(io.Discard), io.Discard)
	if !errors.Is(err, datadir.ErrLocked) || !strings.Contains(err.Error(), "PID") {
		t.Fatalf("rebuild while mailpulse runs = %v, want ErrLocked naming the holder", err)
	}
	err = app.Run(t.Context(), "all", set, set.Process.Logger(io.Discard), nil)
	if !errors.Is(err, datadir.ErrLocked) {
		t.Fatalf("a second mailpulse on the same data dir = %v, want ErrLocked", err)
	}
}
