package app_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/mailpulse/mailpulse/shared/broker/brokertest"
	"github.com/mailpulse/mailpulse/shared/poll"
)

// receiver is a real HTTP server that keeps the bodies it receives.
type receiver struct {
	mu     sync.Mutex
	bodies []string
	srv    *httptest.Server
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.bodies = append(r.bodies, string(b))
		r.mu.Unlock()
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) got(s string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, b := range r.bodies {
		if strings.Contains(b, s) {
			return true
		}
	}
	return false
}

func do(t *testing.T, method, url, key, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestAllModeDeliversToAWebhook: in all mode the gateway serves the webhooks API and the
// webhooker delivers: an endpoint added over HTTP receives the events ingested after it.
func TestAllModeDeliversToAWebhook(t *testing.T) {
	rcv := newReceiver(t)
	r, stop := runAll(t, t.TempDir(), []string{"MAILPULSE_SIMULATE=0", "MAILPULSE_WEBHOOKER_ALLOW_NETWORKS=127.0.0.0/8"})
	defer stop()
	api := "http://" + r.HTTPAddr.String() + "/api/v1/webhooks"
	if code, _ := do(t, http.MethodPost, api, r.IngestKey, `{}`); code != http.StatusForbidden {
		t.Errorf("webhooks API with the ingest key: %d, want 403", code)
	}
	code, body := do(t, http.MethodPost, api, r.AdminKey, `{"url":"`+rcv.srv.URL+`","types":["e2e.*"],"format":"standard","batch":{"maxEvents":10,"maxWait":"100ms"}}`)
	if code != http.StatusCreated {
		t.Fatalf("create endpoint: %d %s", code, body)
	}
	var ep struct{ ID string }
	if json.Unmarshal([]byte(body), &ep) != nil || ep.ID == "" {
		t.Fatalf("create endpoint answered %s", body)
	}
	if code, body := do(t, http.MethodPost, "http://"+r.IngestAddr.String()+"/api/v1/events", r.IngestKey,
		`[{"id":"hook-1","type":"e2e.hooked"},{"id":"not-hooked","type":"smtp.ehlo"}]`); code != http.StatusAccepted {
		t.Fatalf("ingest: %d %s", code, body)
	}
	poll.Until(t, "the endpoint to receive the event", func() bool { return rcv.got(`"id":"hook-1"`) })
	if rcv.got("not-hooked") {
		t.Error("the endpoint received an event of a type it did not ask for")
	}
}

// TestWebhookerRoleDelivers: "mailpulse webhooker" alone against an external NATS serves
// its health and the webhooks API on its own address, and delivers.
func TestWebhookerRoleDelivers(t *testing.T) {
	rcv := newReceiver(t)
	srv := brokertest.StartTCP(t)
	env := append(externalNATS(srv), "MAILPULSE_WEBHOOKER_ADDR=127.0.0.1:0", "MAILPULSE_WEBHOOKER_ALLOW_NETWORKS=127.0.0.0/8")
	r, stop := runRole(t, "webhooker", env)
	defer stop()
	base := "http://" + r.HTTPAddr.String()
	if code, _ := do(t, http.MethodGet, base+"/healthz", "", ""); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	if code, _ := do(t, http.MethodGet, base+"/api/v1/webhooks", "", ""); code != 401 {
		t.Errorf("webhooks API without a key = %d, want 401", code)
	}
	if code, body := do(t, http.MethodPost, base+"/api/v1/webhooks", r.AdminKey, `{"url":"`+rcv.srv.URL+`","types":["*"],"format":"stalwart","start":"beginning","batch":{"maxWait":"100ms"}}`); code != 201 {
		t.Fatalf("create endpoint: %d %s", code, body)
	}
	// A producer elsewhere: an event into the log over NATS.
	pr, stopProducer := runRole(t, "producer", append(env, "MAILPULSE_INGEST_ADDR=127.0.0.1:0", "MAILPULSE_INGEST_KEY=mpk_fixed_ingest_key_for_tests"))
	defer stopProducer()
	if code, body := do(t, http.MethodPost, "http://"+pr.IngestAddr.String()+"/api/v1/events", "mpk_fixed_ingest_key_for_tests", `[{"id":"role-hook","type":"smtp.ehlo"}]`); code != 202 {
		t.Fatalf("ingest: %d %s", code, body)
	}
	poll.Until(t, "the endpoint to receive the event", func() bool { return rcv.got(`"id":"role-hook"`) })
}
