package producer

import (
	"errors"
	"net/url"
	"os"
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

	// Abuse limits (docs/architecture.md, "Security and abuse limits"). Zero takes the
	// default.
	MaxBodyMemory int           `koanf:"max_body_memory" help:"request bodies held in memory at once, across requests; a request waits body_wait for room, then 503"`
	BodyWait      time.Duration `koanf:"body_wait" help:"longest a request waits for room in max_body_memory before 503"`
	MaxConns      int           `koanf:"max_conns" help:"connections open at once on the ingest listener, more are closed at once (0: 10000, or a quarter of the open-file limit when lower)"`
	MaxConnsPerIP int           `koanf:"max_conns_per_ip" help:"connections open at once from one client address (raise it behind a reverse proxy)"`
	HeaderTimeout time.Duration `koanf:"header_timeout" help:"longest a request's line and headers may take to arrive (slow clients are cut)"`
	BodyTimeout   time.Duration `koanf:"body_timeout" help:"longest a body may take on /api/v1/events; on /ingest/stalwart, longest a body may pause"`
	IdleTimeout   time.Duration `koanf:"idle_timeout" help:"longest a keep-alive connection stays open between requests"`
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

	// Stalwart has no cap on a webhook batch, and puts a failed batch back in front of newer
	// events: after an outage its batch is large, and stays so until accepted.
	MaxBatch      int    `koanf:"max_batch" help:"most events in one Stalwart webhook batch (read as a stream, stored in chunks)"`
	MaxBodyBytes  int64  `koanf:"max_body_bytes" help:"largest Stalwart webhook body"`
	MaxConcurrent int    `koanf:"max_concurrent" help:"Stalwart webhook requests read at once (Stalwart sends one at a time per webhook); more wait ingest.body_wait, then 503"`
	SpoolDir      string `koanf:"spool_dir" help:"where a signed webhook body is kept while its signature is checked (default: <data_dir>/spool when the role has a data dir, else the system's temporary directory; use a disk, not a tmpfs, for large batches)"`
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
	def(&c.Ingest.MaxBodyMemory, 256<<20)
	def(&c.Ingest.MaxConnsPerIP, 256)
	dur := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	dur(&c.Ingest.BodyWait, 5*time.Second)
	dur(&c.Ingest.HeaderTimeout, 10*time.Second)
	dur(&c.Ingest.BodyTimeout, 30*time.Second)
	dur(&c.Ingest.IdleTimeout, 2*time.Minute)
	def(&c.Stalwart.MaxBatch, 1_000_000)
	if c.Stalwart.MaxBodyBytes == 0 {
		c.Stalwart.MaxBodyBytes = 512 << 20
	}
	def(&c.Stalwart.MaxConcurrent, 4)
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
	if c.Ingest.MaxBodyMemory < c.Ingest.MaxBodyBytes || c.Ingest.MaxBodyMemory > 64<<30 {
		add("ingest.max_body_memory", "want at least ingest.max_body_bytes (one body must fit), at most 64 GiB")
	}
	if c.Ingest.BodyWait < 0 || c.Ingest.BodyWait > time.Minute {
		add("ingest.body_wait", "want at most 1m")
	}
	if c.Ingest.MaxConns < 0 || c.Ingest.MaxConns > 1_000_000 {
		add("ingest.max_conns", "want 0 (automatic) to 1000000")
	}
	if c.Ingest.MaxConnsPerIP < 1 || c.Ingest.MaxConnsPerIP > 1_000_000 {
		add("ingest.max_conns_per_ip", "want 1 to 1000000")
	}
	for _, t := range []struct {
		key string
		d   time.Duration
	}{{"ingest.header_timeout", c.Ingest.HeaderTimeout}, {"ingest.body_timeout", c.Ingest.BodyTimeout}, {"ingest.idle_timeout", c.Ingest.IdleTimeout}} {
		if t.d < 100*time.Millisecond || t.d > time.Hour {
			add(t.key, "want 100ms to 1h")
		}
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
	if st.MaxBatch < 1 || st.MaxBatch > 100_000_000 {
		add("stalwart.max_batch", "want 1 to 100000000")
	}
	if st.MaxBodyBytes < 1024 || st.MaxBodyBytes > 64<<30 {
		add("stalwart.max_body_bytes", "want 1 KiB to 64 GiB")
	}
	if st.MaxConcurrent < 1 || st.MaxConcurrent > 1024 {
		add("stalwart.max_concurrent", "want 1 to 1024")
	}
	if st.SpoolDir != "" {
		if fi, err := os.Stat(st.SpoolDir); err != nil || !fi.IsDir() {
			add("stalwart.spool_dir", "%q: not a directory", st.SpoolDir)
		}
	}
	return errors.Join(errs...)
}

// scrape is the scraper's view of the settings.
func (c *Config) scrape() ScrapeConfig {
	return ScrapeConfig{URL: c.Stalwart.MetricsURL, User: c.Stalwart.MetricsUser, Password: c.Stalwart.MetricsPassword,
		Interval: c.Stalwart.MetricsInterval, Buckets: c.Stalwart.HistogramBuckets, Source: c.Stalwart.Source}
}
