package producer_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mailpulse/mailpulse/services/producer"
)

// Issue 9 #3 and #4: createdAt had no bounds. 20,000 events with distinct far dates made as
// many history partitions and stalled the history; year 9999 wrapped to 1816. The ingest
// now refuses each such event with its reason, and takes the rest of the batch.
func TestFarDatesAreRefusedAtIngest(t *testing.T) {
	h := start(t, producer.Config{Ingest: producer.Ingest{MaxAge: 30 * 24 * time.Hour}}, false)
	// 20,000 distinct days, both directions, in two requests of 10,000 (ingest.max_batch).
	past, future := time.Date(1971, 1, 1, 12, 0, 0, 0, time.UTC), time.Now().UTC().Add(2*time.Hour)
	for req := range 2 {
		var b strings.Builder
		for i := range 5_000 {
			d := req*5_000 + i
			fmt.Fprintf(&b, `{"type":"smtp.ehlo","createdAt":%q}`+"\n", past.AddDate(0, 0, d).Format(time.RFC3339))
			fmt.Fprintf(&b, `{"type":"smtp.ehlo","createdAt":%q}`+"\n", future.AddDate(0, 0, d).Format(time.RFC3339))
		}
		r := h.post("/api/v1/events", b.String(), h.bearer())
		if r.Status != 400 || r.Rejected != 10_000 || r.Accepted != 0 || len(r.Errors) != 100 {
			t.Fatalf("request %d: status %d, %d rejected, %d accepted, %d errors listed; want 400 and every event refused (100 listed)", req, r.Status, r.Rejected, r.Accepted, len(r.Errors))
		}
		var first, second struct {
			Index int    `json:"index"`
			Error string `json:"error"`
		}
		json.Unmarshal(r.Errors[0], &first)
		json.Unmarshal(r.Errors[1], &second)
		if first.Index != 0 || !strings.Contains(first.Error, "older than 720h") || second.Index != 1 || !strings.Contains(second.Error, "more than 1h ahead") {
			t.Errorf("errors = %+v, %+v: want each event's reason (too old, too far ahead)", first, second)
		}
	}
	if n := len(h.stored()); n != 0 {
		t.Fatalf("%d refused events in the log", n)
	}
	// A mixed batch: the good events are stored, the bad ones listed by index.
	now := time.Now().UTC()
	body := fmt.Sprintf(`[{"type":"smtp.ehlo","createdAt":%q},{"type":"smtp.ehlo","createdAt":"9999-12-31T23:59:59Z"},{"type":"smtp.ehlo"},{"type":"smtp.ehlo","createdAt":"0001-06-01T00:00:00Z"},{"type":"smtp.ehlo","createdAt":%q}]`,
		now.Add(-24*time.Hour).Format(time.RFC3339Nano), now.Add(30*time.Minute).Format(time.RFC3339Nano))
	r := h.post("/api/v1/events", body, h.bearer())
	if r.Status != 202 || r.Accepted != 3 || r.Rejected != 2 {
		t.Fatalf("mixed batch: %+v; want 202 with 3 accepted and 2 rejected", r)
	}
	for i, want := range map[int]string{0: `"index":1`, 1: `"index":3`} {
		if s := string(r.Errors[i]); !strings.Contains(s, want) || !strings.Contains(s, "outside the years 1970 to 2261") {
			t.Errorf("error %d = %s, want %s refused as outside 1970–2261", i, s, want)
		}
	}
	for _, e := range h.stored() {
		if e.CreatedAt.Before(now.Add(-25*time.Hour)) || e.CreatedAt.After(now.Add(time.Hour)) {
			t.Errorf("stored an event dated %v", e.CreatedAt)
		}
	}
	// Stalwart's webhook: the same bounds, the same per-event answer.
	stalwart := fmt.Sprintf(`{"events":[{"id":1,"createdAt":%q,"type":"auth.failed","data":{}},{"id":2,"createdAt":"2099-01-01T00:00:00Z","type":"auth.failed","data":{}}]}`, now.Format(time.RFC3339))
	r = h.post("/ingest/stalwart", stalwart, h.bearer())
	if r.Status != 202 || r.Accepted != 1 || r.Rejected != 1 || len(r.Errors) != 1 || !strings.Contains(string(r.Errors[0]), "ahead of this server's clock") {
		t.Errorf("Stalwart batch: %+v; want 202, the event of 2099 refused with its reason", r)
	}
}

func TestIngestTimeBoundsAreChecked(t *testing.T) {
	for _, in := range []producer.Ingest{{MaxFuture: -time.Second}, {MaxFuture: 8 * 24 * time.Hour}, {MaxAge: -time.Hour}, {MaxAge: time.Minute}} {
		cfg := producer.Config{Addr: "127.0.0.1:0", Ingest: in}
		if _, err := producer.New(cfg, producer.Deps{}); err == nil || !strings.Contains(err.Error(), "ingest.max_") {
			t.Errorf("New(%+v) = %v, want the bound refused by name", in, err)
		}
	}
}
