package webhooker

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailpulse/mailpulse/shared/bus"
)

// metrics are the webhooker's, per endpoint (label endpoint=<id>; the number of endpoints
// is bounded by max_endpoints, and a deleted endpoint's series are removed).
type metrics struct {
	delivered, failed, retried, dead *prometheus.CounterVec
	latency                          *prometheus.HistogramVec
	breaker                          *prometheus.GaugeVec
	outcomeDropped                   prometheus.Counter
	workers                          prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer, js jetstream.JetStream) (*metrics, error) {
	m := &metrics{
		delivered: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mailpulse_webhook_delivered_events_total", Help: "Events delivered (a 2xx answered) and acknowledged, per endpoint."}, []string{"endpoint"}),
		failed:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mailpulse_webhook_failed_requests_total", Help: "Requests that did not get a 2xx (error status, timeout, refused connection), per endpoint."}, []string{"endpoint"}),
		retried:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mailpulse_webhook_retried_events_total", Help: "Events handed back to the log to be tried again later, per endpoint."}, []string{"endpoint"}),
		dead:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mailpulse_webhook_dead_letter_events_total", Help: "Events sent to the dead letters (permanent failure, or retries exhausted), per endpoint."}, []string{"endpoint"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "mailpulse_webhook_request_seconds", Help: "Duration of webhook requests, until the response headers, per endpoint.",
			Buckets: prometheus.ExponentialBuckets(0.002, 2.5, 12)}, []string{"endpoint"}),
		breaker:        prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "mailpulse_webhook_breaker_state", Help: "The endpoint's circuit breaker as this webhooker's worker sees it: 0 closed, 1 open (not fetching), 2 half-open (probing)."}, []string{"endpoint"}),
		outcomeDropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "mailpulse_webhook_outcome_events_dropped_total", Help: "Delivery records (telemetry.webhook-* events) that could not be published."}),
		workers:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "mailpulse_webhook_active_endpoints", Help: "Endpoints this webhooker is delivering to (not paused, disabled or invalid)."}),
	}
	cs := []prometheus.Collector{m.delivered, m.failed, m.retried, m.dead, m.latency, m.breaker, m.outcomeDropped, m.workers}
	if js != nil {
		cs = append(cs, newLagCollector(js))
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// forget removes a deleted endpoint's series.
func (m *metrics) forget(id string) {
	for _, v := range []*prometheus.CounterVec{m.delivered, m.failed, m.retried, m.dead} {
		v.DeleteLabelValues(id)
	}
	m.latency.DeleteLabelValues(id)
	m.breaker.DeleteLabelValues(id)
}

// lagTimeout bounds the consumer listing of one scrape.
const lagTimeout = 5 * time.Second

// lagCollector reports every endpoint's consumer lag, read from JetStream when scraped:
// one paged listing of the EVENTS consumers (a request per 256 consumers), whatever the
// number of endpoints, fresh at every scrape, and for paused and disabled endpoints too,
// whose lag is what grows. It is the consumer's lag, shared by the replicas: each reports
// the same value (aggregate with max, not sum).
type lagCollector struct {
	js   jetstream.JetStream
	desc *prometheus.Desc

	mu     sync.Mutex
	stream jetstream.Stream // looked up once
}

func newLagCollector(js jetstream.JetStream) *lagCollector {
	return &lagCollector{js: js, desc: prometheus.NewDesc("mailpulse_webhook_consumer_pending",
		"Events of the log the endpoint has not acknowledged yet: its consumer's pending plus ack-pending (in flight or waiting for a retry).", []string{"endpoint"}, nil)}
}

func (c *lagCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect lists the consumers. A scrape has no context of its own, so the listing gets a
// bounded one; when NATS does not answer, the series are missing from that scrape rather
// than stale.
func (c *lagCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), lagTimeout)
	defer cancel()
	c.mu.Lock()
	defer c.mu.Unlock() // one listing at a time
	if c.stream == nil {
		str, err := c.js.Stream(ctx, bus.StreamEvents)
		if err != nil {
			return
		}
		c.stream = str
	}
	list := c.stream.ListConsumers(ctx)
	for info := range list.Info() { // read to the end: the lister's goroutine ends with it
		if id, ok := strings.CutPrefix(info.Name, "webhook-"); ok {
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(info.NumPending)+float64(info.NumAckPending), id)
		}
	}
}
