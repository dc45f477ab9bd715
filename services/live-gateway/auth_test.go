package livegateway

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

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
		// Past what JetStream's nanoseconds hold: 2263 wrapped to 1678 and replayed everything.
		{"since past 2261", "/api/v1/live/events?since=2263-01-01T00:00:00Z", withKey(h.viewer), 400},
		{"since before 1970", "/api/v1/live/events?since=1969-12-31T23:59:59Z", withKey(h.viewer), 400},
		{"replay start past 2261", "/api/v1/replay?start=9999-01-01T00:00:00Z", withKey(h.viewer), 400},
		{"replay end past 2261", "/api/v1/replay?start=2026-01-01T00:00:00Z&end=2263-01-01T00:00:00Z", withKey(h.viewer), 400},
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

// Keys by role: no key or an unknown one is 401 (naming the schemes accepted), a valid key
// of too small a role is 403 (it used to be 401, as if the key were unknown); health
// probes need no key.
func TestKeyRolesGetTheirStatusCodes(t *testing.T) {
	h := start(t, Config{}, false)
	for _, tc := range []struct {
		name, method, path, key string
		code                    int
	}{
		{"viewer key listing keys", http.MethodGet, "/api/v1/keys", h.viewer, 403},
		{"viewer key creating a key", http.MethodPost, "/api/v1/keys", h.viewer, 403},
		{"viewer key revoking a key", http.MethodDelete, "/api/v1/keys/x", h.viewer, 403},
		{"ingest key on the history", http.MethodGet, "/api/v1/events", h.ingest, 403},
		{"ingest key on /metrics", http.MethodGet, "/metrics", h.ingest, 403},
		{"ingest key on a stream token", http.MethodGet, "/api/token/tracing", h.ingest, 403},
		{"no key", http.MethodGet, "/api/v1/keys", "", 401},
		{"unknown key", http.MethodGet, "/api/v1/keys", "mpk_x_y", 401},
		{"admin key", http.MethodGet, "/api/v1/keys", h.admin, 200},
		{"viewer key on /metrics", http.MethodGet, "/metrics", h.viewer, 200},
		{"viewer key on /metrics/prometheus", http.MethodGet, "/metrics/prometheus", h.viewer, 200},
		{"no key on /healthz", http.MethodGet, "/healthz", "", 200},
		{"no key on /readyz", http.MethodGet, "/readyz", "", 200},
	} {
		req, _ := http.NewRequest(tc.method, h.url+tc.path, strings.NewReader(`{"name":"x","role":"viewer"}`))
		if tc.key != "" {
			req.Header.Set("Authorization", "Bearer "+tc.key)
		}
		resp, err := testClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code {
			t.Errorf("%s: %s %s = %d %s, want %d", tc.name, tc.method, tc.path, resp.StatusCode, body, tc.code)
		}
		if tc.code == 401 && !strings.Contains(resp.Header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s: WWW-Authenticate = %q", tc.name, resp.Header.Get("WWW-Authenticate"))
		}
		if tc.code >= 400 && !json.Valid(body) {
			t.Errorf("%s: error body %q is not JSON", tc.name, body)
		}
	}
}
