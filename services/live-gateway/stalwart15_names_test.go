package livegateway

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/mailpulse/mailpulse/shared/history"
	"github.com/nats-io/nats.go"
)

// TestStalwart015LiveUses015Names: a 0.15 client names types as 0.15 did
// (queue.queue-message, 0.16's queue.message-queued) and reads them so: traces?type= found
// nothing. The 0.15 live stream takes 0.15's names in types= and sends them; 0.16's stream
// keeps 0.16's.
func TestStalwart015LiveUses015Names(t *testing.T) {
	h := start(t, Config{}, false)
	c15, resp := h.open("/api/telemetry/traces/live?types=queue.queue-message", withKey(h.viewer))
	if c15 == nil {
		t.Fatalf("0.15 stream: %d", resp.StatusCode)
	}
	c16, resp := h.open("/api/live/tracing?types=queue.message-queued", withKey(h.viewer))
	if c16 == nil {
		t.Fatalf("0.16 stream: %d", resp.StatusCode)
	}
	h.publish("smtp.ehlo", 1, `{}`)
	h.publish("queue.message-queued", 1, `{"queueId":"7"}`)
	if f := c15.next(t, "trace"); !strings.Contains(f.data, `"type":"queue.queue-message"`) || strings.Contains(f.data, "smtp.ehlo") {
		t.Errorf("0.15 frame = %s, want the queued message alone, under 0.15's name", f.data)
	}
	if f := c16.next(t, "trace"); !strings.Contains(f.data, `"event":"queue.message-queued"`) {
		t.Errorf("0.16 frame = %s, want 0.16's name", f.data)
	}
}

// TestStalwart015TracesTypeIs015Name: traces?type=queue.queue-message asks the history for
// 0.16's queue.message-queued, the name the history keeps.
func TestStalwart015TracesTypeIs015Name(t *testing.T) {
	h := start(t, Config{}, false)
	kinds := make(chan string, 1)
	sub, err := h.nc.QueueSubscribe(history.SubjectSpans, history.QueueGroup, func(m *nats.Msg) {
		var req history.SpansRequest
		_ = json.Unmarshal(m.Data, &req)
		select {
		case kinds <- req.Kind:
		default:
		}
		b, _ := json.Marshal(history.SpansReply{Spans: []history.Span{}})
		_ = m.Respond(b)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if code, body := get(t, h.url+"/api/telemetry/traces?type=queue.queue-message", withKey(h.viewer)); code != 200 {
		t.Fatalf("traces: %d %s", code, body)
	}
	if k := <-kinds; k != "queue.message-queued" {
		t.Errorf("the history was asked for type %q, want queue.message-queued", k)
	}
}
