package webhooker_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gofiber/fiber/v2"

	"github.com/mailpulse/mailpulse/services/webhooker"
	"github.com/mailpulse/mailpulse/shared/apikey"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/httpserver"
)

// apiApp mounts the API on an app as the gateway does, behind real keys, over a store with
// the default settings (no network allowed past the SSRF guard).
func apiApp(t *testing.T, h *harness) (app *fiber.App, eps *webhooker.Endpoints, admin, viewer string) {
	t.Helper()
	eps, err := webhooker.OpenEndpoints(t.Context(), h.js, webhooker.DefaultConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	app, keys := mountAPI(t, h, eps)
	if admin, _, err = keys.Create(t.Context(), "admin", apikey.Admin); err != nil {
		t.Fatal(err)
	}
	if viewer, _, err = keys.Create(t.Context(), "viewer", apikey.Viewer); err != nil {
		t.Fatal(err)
	}
	return app, eps, admin, viewer
}

// mountAPI serves the webhooks API over eps behind the admin key of a key store of its own,
// as a gateway replica does.
func mountAPI(t *testing.T, h *harness, eps *webhooker.Endpoints) (*fiber.App, *apikey.Store) {
	t.Helper()
	kv, err := h.js.KeyValue(t.Context(), bus.BucketKeys)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := apikey.Open(t.Context(), kv, nil)
	if err != nil {
		t.Fatal(err)
	}
	app := httpserver.New(httpserver.Config{Name: "test"})
	webhooker.NewAPI(eps).Mount(app, httpserver.RequireKey(keys, apikey.Admin))
	return app, keys
}

func call(t *testing.T, app *fiber.App, key, method, path, body string) (int, map[string]any) {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := app.Test(req, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if len(b) > 0 {
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatalf("%s %s: %d %s: not JSON", method, path, resp.StatusCode, b)
		}
	}
	return resp.StatusCode, out
}

func TestAPILifecycle(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, eps, admin, viewer := apiApp(t, h)

	if code, _ := call(t, app, viewer, "GET", "/api/v1/webhooks", ""); code != http.StatusForbidden {
		t.Errorf("viewer key: %d, want 403", code)
	}
	if code, _ := call(t, app, "nope", "GET", "/api/v1/webhooks", ""); code != http.StatusUnauthorized {
		t.Errorf("wrong key: %d, want 401", code)
	}

	code, ep := call(t, app, admin, "POST", "/api/v1/webhooks",
		`{"url":"https://hooks.example.org/in","types":["auth.*","smtp.rcpt-to"],"format":"standard","auth":{"type":"bearer","token":"s3cr3t-token-value"}}`)
	if code != http.StatusCreated {
		t.Fatalf("POST: %d %v", code, ep)
	}
	id, _ := ep["id"].(string)
	secrets, _ := ep["secrets"].([]any)
	if id == "" || len(secrets) != 1 || !strings.HasPrefix(secrets[0].(string), "whsec_") || len(secrets[0].(string)) < 40 {
		t.Fatalf("POST answer %v: want an id and the generated secret in clear", ep)
	}
	secret := secrets[0].(string)

	code, got := call(t, app, admin, "GET", "/api/v1/webhooks/"+id, "")
	if code != http.StatusOK || strings.Contains(toJSON(got), secret) || strings.Contains(toJSON(got), "s3cr3t-token-value") {
		t.Errorf("GET %d %v: the secret and the token must be masked after creation", code, got)
	}
	if got["format"] != "standard" || got["start"] != "now" || got["timeout"] != "30s" {
		t.Errorf("GET: defaults not filled: %v", got)
	}

	// PUT without secrets keeps the secret; the stored one still signs.
	code, _ = call(t, app, admin, "PUT", "/api/v1/webhooks/"+id, `{"url":"https://hooks.example.org/v2","types":["*"],"auth":{"type":"bearer"}}`)
	if code != http.StatusOK {
		t.Fatalf("PUT: %d", code)
	}
	stored, _ := eps.Get(id)
	if stored.URL != "https://hooks.example.org/v2" || len(stored.Secrets) != 1 || stored.Secrets[0] != secret || stored.Auth.Token != "s3cr3t-token-value" {
		t.Errorf("after PUT: %+v, want the new URL with the secret and token kept", stored)
	}

	if code, got := call(t, app, admin, "POST", "/api/v1/webhooks/"+id+"/pause", ""); code != http.StatusOK || got["paused"] != true {
		t.Errorf("pause: %d %v", code, got)
	}
	if code, got := call(t, app, admin, "POST", "/api/v1/webhooks/"+id+"/resume", ""); code != http.StatusOK || got["paused"] != false {
		t.Errorf("resume: %d %v", code, got)
	}
	if code, got := call(t, app, admin, "GET", "/api/v1/webhooks", ""); code != http.StatusOK || len(got["endpoints"].([]any)) != 1 {
		t.Errorf("list: %d %v", code, got)
	}
	if code, _ := call(t, app, admin, "DELETE", "/api/v1/webhooks/"+id, ""); code != http.StatusNoContent {
		t.Errorf("DELETE: %d", code)
	}
	for _, path := range []string{"/api/v1/webhooks/" + id, "/api/v1/webhooks/nope/pause"} {
		method := "GET"
		if strings.HasSuffix(path, "pause") {
			method = "POST"
		}
		if code, _ := call(t, app, admin, method, path, ""); code != http.StatusNotFound {
			t.Errorf("%s %s after delete: %d, want 404", method, path, code)
		}
	}
}

func TestAPIRefusesBadDefinitionsListingEveryReason(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	app, eps, admin, _ := apiApp(t, h)
	for _, tc := range []struct {
		name, body string
		want       []string
	}{
		{"everything wrong", `{"url":"ftp://user:pw@h.example/#x","types":["SMTP.*"],"format":"xml","minLevel":"loud",
			"batch":{"maxEvents":5000,"maxWait":"soon"},"timeout":"1h","retry":{"initial":"2s","max":"1s","maxAge":"90d"},
			"headers":{"X-Signature":"forged","Bad Name":"v"},"auth":{"type":"digest"},"start":"yesterday","rateLimit":{"perSecond":-1}}`,
			[]string{"scheme \"ftp\"", "credentials in the URL", "fragment", `"SMTP.*"`, `format: "xml"`, "minLevel", "batch.maxEvents",
				"batch.maxWait: not a duration", "timeout: 1h0m0s", "retry.max: must not be below", "retry.maxAge", "X-Signature is set by the webhooker",
				`"Bad Name" is not a header name`, `auth.type: "digest"`, `start: "yesterday"`, "rateLimit"}},
		{"no types", `{"url":"https://h.example/"}`, []string{"types: at least one pattern"}},
		{"loopback", `{"url":"http://127.0.0.1:8080/","types":["*"]}`, []string{"127.0.0.1 is a loopback address"}},
		{"metadata", `{"url":"http://169.254.169.254/latest","types":["*"]}`, []string{"cloud metadata"}},
		{"ipv6 loopback", `{"url":"http://[::1]/","types":["*"]}`, []string{"::1 is a loopback address"}},
		{"decimal ip", `{"url":"http://2130706433/","types":["*"]}`, []string{"is a number"}},
		{"bad standard secret", `{"url":"https://h.example/","types":["*"],"secret":"hunter2"}`, []string{"starts with whsec_"}},
		{"unknown field", `{"url":"https://h.example/","types":["*"],"evnets":["x"]}`, []string{`unknown field "evnets"`}},
		{"not json", `{"url":`, []string{"body:"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, got := call(t, app, admin, "POST", "/api/v1/webhooks", tc.body)
			if code != http.StatusBadRequest {
				t.Fatalf("POST: %d %v, want 400", code, got)
			}
			var reasons []string
			list, _ := got["errors"].([]any)
			for _, r := range list {
				reasons = append(reasons, r.(string))
			}
			all := strings.Join(reasons, "\n")
			for _, w := range tc.want {
				if !strings.Contains(all, w) {
					t.Errorf("errors:\n%s\nmissing %q", all, w)
				}
			}
		})
	}
	if n := len(eps.List()); n != 0 {
		t.Errorf("%d endpoints stored after refused definitions", n)
	}
}

func toJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
