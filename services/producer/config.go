package producer

import (
	"errors"
	"net/url"
	"slices"
	"time"

	"github.com/mailpulse/mailpulse/shared/config"
	"github.com/mailpulse/mailpulse/shared/event"
)

// Config is the producer's settings: the ingest API, the simulator, the metrics projection
// and the Stalwart adapters. Its keys stand at the top level of the configuration
// (ingest_addr, ingest.*, stalwart.*…), where a Stalwart administrator looks for them.
// Zero fields take the defaults of DefaultConfig.
type Config struct {
	Addr   string `koanf:"ingest_addr" help:"listen address of the producer's ingest API"`
	Source string `koanf:"source" help:"source given to ingested events that name none"`
	// Simulate is the simulator's rate in events/s: 0 is off, -1 (auto) is decided by the
	// process (on at 20 events/s in all mode without a Stalwart source). The producer
	// itself treats anything below 0 as off.
	Simulate     float64 `koanf:"simulate" help:"simulated events per second (0 off; -1 auto: on at 20/s in all mode without a Stalwart source)"`
	SimulateSeed int64   `koanf:"simulate_seed" help:"seed of the simulator, for reproducible traffic"`

	Ingest   Ingest   `koanf:"ingest"`
	Metrics  Metrics  `koanf:"metrics"`
	Stalwart Stalwart `koanf:"stalwart"`

	Grace    time.Duration `koanf:"-"` // graceful shutdown bound (shutdown.grace)
	Instance string        `koanf:"-"` // this process, in snapshots (host name and pid)
}

// Ingest bounds the ingest API.
type Ingest struct {
	MaxBodyBytes int           `koanf:"max_body_bytes" help:"largest request body accepted"`
	MaxBatch     int           `koanf:"max_batch" help:"most events in one request"`
	Timeout      time.Duration `koanf:"timeout" help:"longest a request waits for the log to store its events before 503"`
	Window       int           `koanf:"window" help:"asynchronous publishes awaiting acknowledgement (back-pressure point)"`
	// Bounds on createdAt (issue 9 #3): every distinct day makes history partitions.
	// Zero takes the default; projection.go and producer.go apply and check them.
	MaxFuture time.Duration `koanf:"max_future" help:"events dated further ahead of this server's clock are refused, each with its reason (0: 1h)"`
	MaxAge    time.Duration `koanf:"max_age" help:"events dated further back are refused, each with its reason (0: no bound; the archiver does not keep events older than archiver.retention)"`
}

// Metrics configures the metrics projection of events.
type Metrics struct {
	Interval time.Duration `koanf:"interval" help:"how often metric snapshots are published per source"`
	// Cardinality bounds (issue 9 #7). Zero takes the default; projection.go applies and
	// checks them.
	MaxSources int `koanf:"max_sources" help:"sources with metrics of their own; events of further sources are counted under the source _overflow (0: 1000)"`
	MaxTypes   int `koanf:"max_types" help:"event-type counters per source; further types are counted under the counter _overflow (0: 1000)"`
	MaxSeries  int `koanf:"max_series" help:"event-type counters in all sources together; further types are counted under their source's _overflow (0: 100000)"`
}

// Stalwart configures the Stalwart adapters: the webhook and the Prometheus scraper.
type Stalwart struct {
	Secret           string        `koanf:"secret" help:"secret Stalwart signs its webhooks with (X-Signature); when set, the signature is required" secret:"true"`
	Source           string        `koanf:"source" help:"source of events and metrics from Stalwart (a webhook can override it with ?source=)"`
	MetricsURL       string        `koanf:"metrics_url" help:"Stalwart /metrics/prometheus URL to scrape (empty: no scraping)"`
	MetricsUser      string        `koanf:"metrics_user" help:"Basic auth user for the metrics URL"`
	MetricsPassword  string        `koanf:"metrics_password" help:"Basic auth password for the metrics URL" secret:"true"`
	MetricsInterval  time.Duration `koanf:"metrics_interval" help:"scrape interval"`
	HistogramBuckets string        `koanf:"histogram_buckets" help:"how Stalwart writes histogram buckets: auto, per-bucket or cumulative"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	c := Config{Simulate: -1}
	c.setDefaults()
	return c
}

func (c *Config) setDefaults() {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	if c.Addr == "" {
		c.Addr = ":8081"
	}
	def(&c.Ingest.MaxBodyBytes, 16<<20)
	def(&c.Ingest.MaxBatch, 10_000)
	def(&c.Ingest.Window, 4000)
	if c.Ingest.Timeout == 0 {
		c.Ingest.Timeout = 10 * time.Second
	}
	if c.Metrics.Interval == 0 {
		c.Metrics.Interval = 10 * time.Second
	}
	if c.Stalwart.Source == "" {
		c.Stalwart.Source = "stalwart"
	}
	if c.Stalwart.MetricsInterval == 0 {
		c.Stalwart.MetricsInterval = 15 * time.Second
	}
	if c.Stalwart.HistogramBuckets == "" {
		c.Stalwart.HistogramBuckets = "auto"
	}
	if c.Grace == 0 {
		c.Grace = 15 * time.Second
	}
	if c.Instance == "" {
		c.Instance = defaultInstance()
	}
}

// Validate reports every problem at once, each under its key.
func (c *Config) Validate() error {
	var errs []error
	add := func(key, format string, a ...any) { errs = append(errs, config.Problem(key, format, a...)) }
	if err := config.CheckAddr(c.Addr); err != nil {
		add("ingest_addr", "%q: %v", c.Addr, err)
	}
	if c.Source != "" {
		if err := event.ValidateSource(c.Source); err != nil {
			add("source", "%v", err)
		}
	}
	if c.Simulate < -1 || c.Simulate > 1_000_000 {
		add("simulate", "want -1 (auto), 0 (off) or a rate up to 1000000 events/s")
	}
	if c.Ingest.MaxBodyBytes < 1024 || c.Ingest.MaxBodyBytes > 1<<30 {
		add("ingest.max_body_bytes", "want 1 KiB to 1 GiB")
	}
	if c.Ingest.MaxBatch < 1 || c.Ingest.MaxBatch > 1_000_000 {
		add("ingest.max_batch", "want 1 to 1000000")
	}
	if c.Ingest.Timeout < 100*time.Millisecond {
		add("ingest.timeout", "at least 100ms")
	}
	if c.Ingest.Window < 1 || c.Ingest.Window > 1_000_000 {
		add("ingest.window", "want 1 to 1000000")
	}
	if c.Metrics.Interval < time.Second {
		add("metrics.interval", "at least 1s")
	}
	st := c.Stalwart
	if st.MetricsURL != "" {
		if u, err := url.Parse(st.MetricsURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			add("stalwart.metrics_url", "want an http:// or https:// URL")
		}
	}
	if (st.MetricsUser == "") != (st.MetricsPassword == "") {
		add("stalwart.metrics_user", "give stalwart.metrics_user and stalwart.metrics_password both or neither")
	}
	if st.MetricsInterval < time.Second {
		add("stalwart.metrics_interval", "at least 1s")
	}
	if !slices.Contains([]string{"auto", "per-bucket", "cumulative"}, st.HistogramBuckets) {
		add("stalwart.histogram_buckets", "%q: want auto, per-bucket or cumulative", st.HistogramBuckets)
	}
	if err := event.ValidateSource(st.Source); err != nil {
		add("stalwart.source", "%v", err)
	}
	return errors.Join(errs...)
}

// scrape is the scraper's view of the settings.
func (c *Config) scrape() ScrapeConfig {
	return ScrapeConfig{URL: c.Stalwart.MetricsURL, User: c.Stalwart.MetricsUser, Password: c.Stalwart.MetricsPassword,
		Interval: c.Stalwart.MetricsInterval, Buckets: c.Stalwart.HistogramBuckets, Source: c.Stalwart.Source}
}
