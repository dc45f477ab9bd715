package livegateway

import (
	"errors"
	"net/url"
	"time"

	"github.com/mailpulse/mailpulse/shared/config"
	"github.com/mailpulse/mailpulse/shared/metric"
)

// Config is the gateway's settings, under gateway.* in the configuration (its listen
// address is the top-level http_addr). Zero fields take the defaults of DefaultConfig.
type Config struct {
	Addr             string        `koanf:"http_addr" top:"true" help:"listen address of the gateway (API, live streams, dashboard)"`
	Heartbeat        time.Duration `koanf:"heartbeat" help:"comment sent on idle streams so dead clients are noticed"`
	QueueSize        int           `koanf:"queue_size" help:"events waiting for one slow stream before it loses some"`
	MaxStreams       int           `koanf:"max_streams" help:"open streams in total (429 past it)"`
	MaxStreamsPerKey int           `koanf:"max_streams_per_key" help:"open streams per API key (429 past it)"`
	MaxConns         int           `koanf:"max_conns" help:"open connections in all (0: 10000, or a quarter of the open-file limit if lower); past it a connection gets 503 and is closed"`
	MaxConnsPerIP    int           `koanf:"max_conns_per_ip" help:"open connections from one client address (0: 256); raise it behind a reverse proxy"`
	CORSOrigins      []string      `koanf:"cors_origins" help:"comma-separated browser origins allowed to call the API (empty: none)"`
	// MetricsOrigin: which of a source's metrics the live metric routes and the metric
	// history show when it is both scraped and sending events; never their sum.
	MetricsOrigin metric.OriginPolicy `koanf:"metrics_origin" help:"a source both scraped and sending events is shown from: auto (its scraped metrics when it has any, else its events), events or prometheus"`
	// PrometheusNames: mailpulse's correct names, or those of Stalwart's exporter.
	PrometheusNames string `koanf:"prometheus_names" help:"names on /metrics/prometheus: mailpulse (counters with _total, promtool-clean) or stalwart (exactly Stalwart's exporter's names, for dashboards built on it)"`

	// Hopeless is how long a stream may keep losing frames before it is closed (30 s).
	Hopeless time.Duration `koanf:"-"`
	// StalwartBatch is how long the Stalwart-compatible streams gather events before a
	// frame, as Stalwart does (1 s).
	StalwartBatch time.Duration `koanf:"-"`
	Grace         time.Duration `koanf:"-"` // bound of a graceful stop (shutdown.grace)
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	var c Config
	c.setDefaults()
	return c
}

func (c *Config) setDefaults() {
	if c.Addr == "" {
		c.Addr = ":8080"
	}
	if c.PrometheusNames == "" {
		c.PrometheusNames = namesMailpulse
	}
	if c.MetricsOrigin == "" {
		c.MetricsOrigin = metric.PreferPrometheus
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = 15 * time.Second
	}
	if c.QueueSize == 0 {
		c.QueueSize = 1024
	}
	if c.MaxStreams == 0 {
		c.MaxStreams = 1000
	}
	if c.MaxStreamsPerKey == 0 {
		c.MaxStreamsPerKey = 20
	}
	if c.Hopeless == 0 {
		c.Hopeless = 30 * time.Second
	}
	if c.StalwartBatch == 0 {
		c.StalwartBatch = time.Second
	}
	if c.Grace == 0 {
		c.Grace = 15 * time.Second
	}
}

// Validate reports every problem at once, each under its key.
func (c *Config) Validate() error {
	var errs []error
	add := func(key, format string, a ...any) { errs = append(errs, config.Problem(key, format, a...)) }
	if err := config.CheckAddr(c.Addr); err != nil {
		add("http_addr", "%q: %v", c.Addr, err)
	}
	if c.Heartbeat < 100*time.Millisecond || c.Heartbeat > 5*time.Minute {
		add("heartbeat", "want 100ms to 5m")
	}
	if c.QueueSize < 16 || c.QueueSize > 1_000_000 {
		add("queue_size", "want 16 to 1000000")
	}
	if c.MaxStreams < 1 {
		add("max_streams", "at least 1")
	}
	if c.MaxConns < 0 {
		add("max_conns", "at least 0 (0: automatic)")
	}
	if c.MaxConnsPerIP < 0 {
		add("max_conns_per_ip", "at least 0 (0: 256)")
	}
	if c.MaxStreamsPerKey < 1 {
		add("max_streams_per_key", "at least 1")
	}
	if c.PrometheusNames != namesMailpulse && c.PrometheusNames != namesStalwart {
		add("prometheus_names", "want mailpulse or stalwart")
	}
	if _, err := metric.ParseOriginPolicy(string(c.MetricsOrigin)); err != nil {
		add("metrics_origin", "%v", err)
	}
	for _, o := range c.CORSOrigins {
		if u, err := url.Parse(o); o != "*" && (err != nil || u.Scheme == "" || u.Host == "") {
			add("cors_origins", "%q: want an origin such as https://admin.example.org", o)
		}
	}
	return errors.Join(errs...)
}
