package app_test

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync/atomic"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/mailpulse/mailpulse/shared/poll"
)

// TestWebhookAttemptsComeFromTheHistory: in all mode the attempts of an endpoint are its
// delivery records as the real archiver keeps them (SQLite in the data dir), newest first,
// paged with limit and cursor; the test route's attempt is one of them. (The webhooker's
// own tests cannot run an archiver: services do not import each other.)
func TestWebhookAttemptsComeFromTheHistory(t *testing.T) {
	var calls atomic.Int32
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if calls.Add(1) == 1 {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer rcv.Close()
	r, stop := runAll(t, t.TempDir(), []string{"MAILPULSE_SIMULATE=0", "MAILPULSE_WEBHOOKER_ALLOW_NETWORKS=127.0.0.0/8"})
	defer stop()
	api := "http://" + r.HTTPAddr.String() + "/api/v1/webhooks"
	code, body := do(t, http.MethodPost, api, r.AdminKey, `{"url":"`+rcv.URL+`","types":["e2e.*"],
		"batch":{"maxWait":"50ms"},"retry":{"initial":"100ms","max":"1s"}}`)
	if code != http.StatusCreated {
		t.Fatalf("create endpoint: %d %s", code, body)
	}
	id := gjson.Get(body, "id").Str
	if code, body := do(t, http.MethodPost, "http://"+r.IngestAddr.String()+"/api/v1/events", r.IngestKey, `[{"id":"attempted","type":"e2e.attempt"}]`); code != http.StatusAccepted {
		t.Fatalf("ingest: %d %s", code, body)
	}
	attempts := api + "/" + id + "/attempts"
	var page gjson.Result
	poll.Until(t, "the failed and the successful attempt in the history", func() bool {
		code, body := do(t, http.MethodGet, attempts, r.AdminKey, "")
		page = gjson.Parse(body)
		return code == http.StatusOK && len(page.Get("attempts").Array()) == 2
	})
	newest, oldest := page.Get("attempts.0"), page.Get("attempts.1")
	if newest.Get("outcome").Str != "delivered" || newest.Get("code").Int() != 204 || newest.Get("eventIds.0").Str != "attempted" ||
		oldest.Get("outcome").Str != "error" || oldest.Get("code").Int() != 500 || oldest.Get("attempt").Int() != 1 || oldest.Get("endpoint").Str != id {
		t.Errorf("attempts %s: want the delivery, then the 500 before it", page.Raw)
	}

	// limit and cursor are the history's.
	code, body = do(t, http.MethodGet, attempts+"?limit=1", r.AdminKey, "")
	first := gjson.Parse(body)
	if code != http.StatusOK || len(first.Get("attempts").Array()) != 1 || first.Get("next").Str == "" {
		t.Fatalf("limit=1: %d %s", code, body)
	}
	code, body = do(t, http.MethodGet, attempts+"?limit=1&cursor="+url.QueryEscape(first.Get("next").Str), r.AdminKey, "")
	if second := gjson.Parse(body); code != http.StatusOK || second.Get("attempts.0.outcome").Str != "error" {
		t.Errorf("the next page: %d %s", code, body)
	}

	// The test route's attempt is recorded too.
	if code, body := do(t, http.MethodPost, api+"/"+id+"/test", r.AdminKey, ""); code != http.StatusOK || gjson.Get(body, "status").Int() != 204 {
		t.Fatalf("test: %d %s", code, body)
	}
	poll.Until(t, "the test's attempt in the history", func() bool {
		code, body := do(t, http.MethodGet, attempts, r.AdminKey, "")
		return code == http.StatusOK && gjson.Get(body, "attempts.0.kind").Str == "test"
	})
}
