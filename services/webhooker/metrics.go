package webhooker

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the webhooker's, per endpoint (label endpoint=<id>; the number of endpoints
// is bounded by max_endpoints, and a deleted endpoint's series are removed).
type metrics struct {
	delivered, failed, retried, dead *prometheus.CounterVec
	latency                          *prometheus.HistogramVec
	outcomeDropped                   prometheus.Counter
	workers                          prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		delivered: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mailpulse_webhook_delivered_events_total", Help: "Events delivered (a 2xx answered) and acknowledged, per endpoint."}, []string{"endpoint"}),
		failed:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mailpulse_webhook_failed_requests_total", Help: "Requests that did not get a 2xx (error status, timeout, refused connection), per endpoint."}, []string{"endpoint"}),
		retried:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mailpulse_webhook_retried_events_total", Help: "Events handed back to the log to be tried again later, per endpoint."}, []string{"endpoint"}),
		dead:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mailpulse_webhook_dead_letter_events_total", Help: "Events sent to the dead letters (permanent failure, or retries exhausted), per endpoint."}, []string{"endpoint"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "mailpulse_webhook_request_seconds", Help: "Duration of webhook requests, until the response headers, per endpoint.",
			Buckets: prometheus.ExponentialBuckets(0.002, 2.5, 12)}, []string{"endpoint"}),
		outcomeDropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "mailpulse_webhook_outcome_events_dropped_total", Help: "Delivery records (telemetry.webhook-* events) that could not be published."}),
		workers:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "mailpulse_webhook_active_endpoints", Help: "Endpoints this webhooker is delivering to (not paused, disabled or invalid)."}),
	}
	for _, c := range []prometheus.Collector{m.delivered, m.failed, m.retried, m.dead, m.latency, m.outcomeDropped, m.workers} {
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
}
