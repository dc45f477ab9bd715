// Package metric defines the metric snapshots published on the METRICS stream and the
// metrics mailpulse derives from events the way Stalwart does: a counter per event type,
// Stalwart's histograms with its bucket bounds, and its gauges.
//
// Unlike Stalwart's exposition, histograms here are cumulative with inclusive upper bounds
// (Prometheus' le), so they can be exposed as they are.
package metric

import (
	"math"
	"sort"
	"time"

	json "github.com/goccy/go-json"
)

// Snapshot is the state of one source's metrics at one time.
type Snapshot struct {
	Source   string    `json:"source"`
	Origin   string    `json:"origin"`   // OriginEvents or OriginPrometheus
	Instance string    `json:"instance"` // the process that computed it
	Time     time.Time `json:"time"`
	// Start is when the counters started counting: a later Start means they were reset.
	Start      time.Time            `json:"start"`
	Counters   map[string]uint64    `json:"counters,omitempty"`
	Gauges     map[string]float64   `json:"gauges,omitempty"`
	Histograms map[string]Histogram `json:"histograms,omitempty"`
	// Part and Parts number the pieces of a snapshot too large for one message (see Split):
	// part 1 to Parts, each holding a disjoint share of the series and the same Source,
	// Origin, Instance, Time and Start. Both are zero (left out) for a whole snapshot.
	Part  int `json:"part,omitempty"`
	Parts int `json:"parts,omitempty"`
}

// Origins of snapshots.
const (
	OriginEvents     = "events"     // projected from the events mailpulse ingested
	OriginPrometheus = "prometheus" // scraped from the mail server's Prometheus endpoint
)

// Histogram is a cumulative histogram: Counts[i] observations were ≤ Bounds[i], and the
// last count (one more than the bounds) is every observation (+Inf).
type Histogram struct {
	Bounds []float64 `json:"bounds"`
	Counts []uint64  `json:"counts"`
	Sum    float64   `json:"sum"`
	Count  uint64    `json:"count"`
}

// NewHistogram returns an empty histogram with the given upper bounds.
func NewHistogram(bounds []float64) Histogram {
	return Histogram{Bounds: bounds, Counts: make([]uint64, len(bounds)+1)}
}

// Observe adds one observation.
func (h *Histogram) Observe(v float64) {
	if math.IsNaN(v) {
		return
	}
	i := sort.SearchFloat64s(h.Bounds, v) // first bound ≥ v
	for ; i < len(h.Counts); i++ {
		h.Counts[i]++
	}
	h.Sum += v
	h.Count++
}

// Clone returns a deep copy.
func (h Histogram) Clone() Histogram {
	c := h
	c.Counts = append([]uint64(nil), h.Counts...)
	return c
}

// Marshal encodes a snapshot for the METRICS stream.
func (s *Snapshot) Marshal() ([]byte, error) { return json.Marshal(s) }

// Unmarshal decodes a snapshot from the METRICS stream.
func Unmarshal(b []byte) (Snapshot, error) {
	var s Snapshot
	err := json.Unmarshal(b, &s)
	return s, err
}

// Stalwart's bucket bounds (its histograms count value < bound; ours value ≤ bound).
var (
	ShortBounds  = []float64{5, 10, 50, 100, 500, 1000, 2000, 5000, 10000, 30000, 60000}
	MediumBounds = []float64{250, 500, 1000, 5000, 10000, 60000, 300000, 600000, 1.8e6, 3.6e6, 1.8e7}
	LongBounds   = []float64{1000, 30000, 300000, 600000, 1.8e6, 3.6e6, 1.8e7, 2.88e7, 4.32e7, 8.64e7, 6.048e8}
	SizeBounds   = []float64{500, 1000, 10000, 100000, 1e6, 5e6, 1e7, 2.5e7, 5e7, 1e8, 5e8}
)

// HistogramDef says which events feed a histogram, and with which key.
type HistogramDef struct {
	Name   string
	Unit   string // "milliseconds" or "bytes"
	Key    string // the event key observed: elapsed or size
	Bounds []float64
	Events []string
	Help   string
}

// Histograms are Stalwart's histograms, fed as Stalwart feeds them.
var Histograms = []HistogramDef{
	{"message-ingest.time", "milliseconds", "elapsed", ShortBounds, []string{"message-ingest.ham", "message-ingest.spam", "message-ingest.imap-append", "message-ingest.jmap-append"}, "time to store an incoming message"},
	{"message-ingest.index-time", "milliseconds", "elapsed", ShortBounds, []string{"message-ingest.search-index"}, "time to index a message for search"},
	{"delivery.total-time", "milliseconds", "elapsed", LongBounds, []string{"delivery.completed"}, "time from queueing to the end of delivery"},
	{"delivery.attempt-time", "milliseconds", "elapsed", MediumBounds, []string{"delivery.attempt-end"}, "duration of one delivery attempt"},
	{"message.size", "bytes", "size", SizeBounds, []string{"queue.message-queued"}, "size of queued messages"},
	{"message.authenticated-size", "bytes", "size", SizeBounds, []string{"queue.authenticated-message-queued"}, "size of messages queued by authenticated senders"},
	{"outgoing-report.size", "bytes", "size", SizeBounds, []string{"queue.report-queued"}, "size of outgoing reports"},
	{"store.data-read-time", "milliseconds", "elapsed", ShortBounds, []string{"store.data-iterate"}, "data store read time"},
	{"store.data-write-time", "milliseconds", "elapsed", ShortBounds, []string{"store.data-write"}, "data store write time"},
	{"store.blob-read-time", "milliseconds", "elapsed", ShortBounds, []string{"store.blob-read"}, "blob store read time"},
	{"store.blob-write-time", "milliseconds", "elapsed", ShortBounds, []string{"store.blob-write"}, "blob store write time"},
	{"dns.lookup-time", "milliseconds", "elapsed", ShortBounds, []string{"delivery.mx-lookup", "delivery.ip-lookup", "delivery.null-mx", "mta-sts.policy-fetch", "tls-rpt.record-fetch", "dane.tlsa-record-fetch"}, "DNS lookup time"},
	{"smtp.request-time", "milliseconds", "elapsed", MediumBounds, []string{"smtp.connection-end"}, "SMTP connection duration"},
	{"imap.request-time", "milliseconds", "elapsed", MediumBounds, []string{"imap.connection-end"}, "IMAP connection duration"},
	{"pop3.request-time", "milliseconds", "elapsed", MediumBounds, []string{"pop3.connection-end"}, "POP3 connection duration"},
	{"http.request-time", "milliseconds", "elapsed", MediumBounds, []string{"http.connection-end"}, "HTTP connection duration"},
	{"sieve.request-time", "milliseconds", "elapsed", MediumBounds, []string{"manage-sieve.connection-end"}, "ManageSieve connection duration"},
}

// Gauges Stalwart keeps, with the spans that move the active-connection ones.
var (
	// SpanGauges maps a span-start event's group to its active-connections gauge.
	SpanGauges = map[string]string{
		"smtp":         "smtp.active-connections",
		"imap":         "imap.active-connections",
		"pop3":         "pop3.active-connections",
		"http":         "http.active-connections",
		"manage-sieve": "sieve.active-connections",
		"delivery":     "delivery.active-connections",
	}
	// QueueCount is incremented by every *-queued event and decremented by delivery.completed.
	QueueCount = "queue.count"
	// OtherGauges are gauges Stalwart exposes that events cannot compute; the scraper fills
	// them.
	OtherGauges = []string{"server.memory", "user.count", "domain.count"}
)

// Names of every non-counter metric, for mapping Prometheus names back.
func Names() []string {
	var out []string
	for _, h := range Histograms {
		out = append(out, h.Name)
	}
	for _, g := range SpanGauges {
		out = append(out, g)
	}
	out = append(out, QueueCount)
	out = append(out, OtherGauges...)
	sort.Strings(out)
	return out
}
