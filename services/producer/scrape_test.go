package producer

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// stalwartPage is shaped like Stalwart's exposition: no _total, no labels, per-bucket
// histogram counts with the +Inf bucket equal to the count.
const stalwartPage = `# HELP smtp_connection_start SMTP connection started
# TYPE smtp_connection_start counter
smtp_connection_start 120
# HELP auth_failed Authentication failed
# TYPE auth_failed counter
auth_failed 7
# HELP server_memory Server memory
# TYPE server_memory gauge
server_memory 1.2345e+08
# TYPE smtp_active_connections gauge
smtp_active_connections 3
# TYPE message_size histogram
message_size_bucket{le="500"} 2
message_size_bucket{le="1000"} 5
message_size_bucket{le="10000"} 1
message_size_bucket{le="+Inf"} 10
message_size_sum 31000
message_size_count 10
`

func TestScraperConvertsStalwartPage(t *testing.T) {
	var mu sync.Mutex
	page := stalwartPage
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "metrics" || p != "pw" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		w.Write([]byte(page))
	}))
	defer srv.Close()
	now := time.Now()
	sc := newScraper(ScrapeConfig{URL: srv.URL, User: "metrics", Password: "pw", Buckets: "auto", Source: "mail"}, srv.Client(), now)
	snap, err := sc.scrape(t.Context(), now)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Source != "mail" || snap.Counters["smtp.connection-start"] != 120 || snap.Counters["auth.failed"] != 7 {
		t.Errorf("counters = %v", snap.Counters)
	}
	if snap.Gauges["server.memory"] != 1.2345e8 || snap.Gauges["smtp.active-connections"] != 3 {
		t.Errorf("gauges = %v", snap.Gauges)
	}
	h := snap.Histograms["message.size"]
	want := []uint64{2, 7, 8, 10}
	if len(h.Counts) != 4 || h.Count != 10 || h.Sum != 31000 {
		t.Fatalf("message.size = %+v", h)
	}
	for i, w := range want {
		if h.Counts[i] != w {
			t.Errorf("message.size bucket %d = %d, want %d (per-bucket counts made cumulative)", i, h.Counts[i], w)
		}
	}

	// Stalwart restarts: counters start again, and auth_failed has not appeared yet.
	mu.Lock()
	page = strings.NewReplacer("smtp_connection_start 120", "smtp_connection_start 5", "auth_failed 7\n", "").Replace(stalwartPage)
	page = strings.Replace(page, "# TYPE auth_failed counter\n", "", 1)
	mu.Unlock()
	snap, err = sc.scrape(t.Context(), now.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if got := snap.Counters["smtp.connection-start"]; got != 125 {
		t.Errorf("after a reset smtp.connection-start = %d, want 125 (120 before the restart + 5)", got)
	}
	if got := snap.Counters["auth.failed"]; got != 7 {
		t.Errorf("a counter missing after a restart = %d, want the 7 it had reached", got)
	}

	bad := newScraper(ScrapeConfig{URL: srv.URL, Source: "mail"}, srv.Client(), now)
	if _, err := bad.scrape(t.Context(), now); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("scrape without credentials = %v, want an HTTP 401 error", err)
	}
}

func TestHistogramBucketModes(t *testing.T) {
	cumulative := "# TYPE x histogram\nx_bucket{le=\"1\"} 1\nx_bucket{le=\"2\"} 3\nx_bucket{le=\"+Inf\"} 3\nx_sum 4\nx_count 3\n"
	for _, tc := range []struct {
		mode string
		want []uint64
	}{{"auto", []uint64{1, 3, 3}}, {"cumulative", []uint64{1, 3, 3}}, {"per-bucket", []uint64{1, 3, 3}}} {
		sc := newScraper(ScrapeConfig{Buckets: tc.mode}, nil, time.Now())
		snap, err := sc.convert(strings.NewReader(cumulative), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		got := snap.Histograms["x"].Counts
		for i := range tc.want {
			if got[i] != tc.want[i] {
				t.Errorf("%s: counts = %v, want %v", tc.mode, got, tc.want)
				break
			}
		}
	}
	// 1 then 3 is cumulative by its sum (4 > count 3), so auto must not add them up.
}

func FuzzScraperConvert(f *testing.F) {
	f.Add(stalwartPage)
	f.Add("# TYPE x histogram\nx_bucket{le=\"1\"} 5\nx_count 1\n")
	f.Add("x{a=\"b\"} NaN\n")
	f.Fuzz(func(t *testing.T, page string) {
		sc := newScraper(ScrapeConfig{Buckets: "auto"}, nil, time.Now())
		snap, err := sc.convert(strings.NewReader(page), time.Now())
		if err != nil {
			return
		}
		for name, h := range snap.Histograms {
			if len(h.Counts) != len(h.Bounds)+1 {
				t.Fatalf("%s: %d counts for %d bounds", name, len(h.Counts), len(h.Bounds))
			}
			for i := 1; i < len(h.Counts); i++ {
				if h.Counts[i] < h.Counts[i-1] {
					t.Fatalf("%s: counts not cumulative: %v", name, h.Counts)
				}
			}
		}
	})
}

// TestScraperNamesAStalwart015CounterAsItsEvents: a 0.15 server's exporter names counters
// after 0.15 ids (queue_queue_message); they count under the 0.16 ids its events get, or the
// two origins of one server would name one counter two ways.
func TestScraperNamesAStalwart015CounterAsItsEvents(t *testing.T) {
	sc := newScraper(ScrapeConfig{Source: "mail"}, nil, time.Now())
	for prom, want := range map[string]string{
		"queue_queue_message":               "queue.message-queued",
		"queue_queue_message_authenticated": "queue.authenticated-message-queued",
		"queue_message_queued":              "queue.message-queued",
		"smtp_connection_start":             "smtp.connection-start",
	} {
		if got := sc.metricID(prom); got != want {
			t.Errorf("metricID(%q) = %q, want %q", prom, got, want)
		}
	}
}
