package livegateway

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/mailpulse/mailpulse/shared/browsertest"
	"github.com/mailpulse/mailpulse/shared/poll"
)

// page opens an EventSource on the gateway, as a dashboard would, and records every event
// id it receives and how often the connection opened.
const page = `<!doctype html><html><body><script>
const ids = []; let opens = 0, gaps = 0;
const es = new EventSource(%q);
es.onopen = () => opens++;
es.addEventListener("event", e => ids.push(JSON.parse(e.data).id));
es.addEventListener("gap", () => gaps++);
window.state = () => JSON.stringify({ids, opens, gaps});
</script></body></html>`

type browserState struct {
	IDs   []string `json:"ids"`
	Opens int      `json:"opens"`
	Gaps  int      `json:"gaps"`
}

func TestBrowserEventSourceResumesAfterGatewayRestart(t *testing.T) {
	var streamURL string
	site := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, page, streamURL)
	}))
	defer site.Close()
	h := start(t, Config{CORSOrigins: []string{site.URL}}, false)
	_, tok := get(t, h.url+"/api/token/tracing", withKey(h.viewer))
	streamURL = h.url + "/api/v1/live/events?types=e2e.*&token=" + tok

	browser := browsertest.New(t)
	if err := chromedp.Run(browser, chromedp.Navigate(site.URL)); err != nil {
		t.Fatal(err)
	}
	state := func() browserState {
		var s string
		if err := chromedp.Run(browser, chromedp.Evaluate(`window.state()`, &s)); err != nil {
			t.Fatal(err)
		}
		var st browserState
		json.Unmarshal([]byte(s), &st)
		return st
	}
	waitFor := func(what string, cond func(browserState) bool) browserState {
		t.Helper()
		var st browserState
		poll.Within(t, 30*time.Second, "the browser: "+what, func() bool {
			st = state()
			return cond(st)
		})
		return st
	}
	waitFor("first connection", func(s browserState) bool { return s.Opens == 1 })
	var sent []string
	sent = append(sent, h.publish("e2e.before", 10, `{}`)...)
	waitFor("first events", func(s browserState) bool { return len(s.IDs) == 10 })

	// The gateway restarts; events arrive while it is down. The browser reconnects by
	// itself (retry: 2000) and sends Last-Event-ID.
	addr := h.gw.Addr().String()
	h.stop()
	sent = append(sent, h.publish("e2e.during", 15, `{}`)...)
	gw, err := New(t.Context(), Config{Addr: addr, CORSOrigins: []string{site.URL}, Heartbeat: time.Second, Grace: 5 * time.Second}, Deps{Conn: h.nc, Keys: h.keys})
	if err != nil {
		t.Fatalf("restart the gateway on %s: %v", addr, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.Run(ctx) }()
	defer func() { cancel(); <-done }()
	st := waitFor("reconnection", func(s browserState) bool { return s.Opens >= 2 && len(s.IDs) >= 25 })
	sent = append(sent, h.publish("e2e.after", 5, `{}`)...)
	st = waitFor("events after the reconnection", func(s browserState) bool { return len(s.IDs) >= 30 })

	seen := map[string]int{}
	for _, id := range st.IDs {
		seen[id]++
	}
	for _, id := range sent {
		if seen[id] != 1 {
			t.Errorf("event %s reached the browser %d times, want once", id, seen[id])
		}
	}
	if len(st.IDs) != len(sent) || st.Gaps != 0 {
		t.Errorf("browser got %d events (%d gaps), want %d and no gap", len(st.IDs), st.Gaps, len(sent))
	}
}
