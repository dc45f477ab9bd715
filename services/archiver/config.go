package archiver

import (
	"errors"
	"time"

	"github.com/mailpulse/mailpulse/shared/config"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/filter"
)

// Config is the archiver's settings, under archiver.* in the configuration. Zero fields
// take the defaults of DefaultConfig.
type Config struct {
	Addr        string `koanf:"addr" help:"listen address of the archiver's health and metrics when it runs alone (in all mode the gateway serves them)"`
	Store       string `koanf:"store" help:"history store: sqlite (a file in the data dir) or postgresql (for several archivers)"`
	PostgresURL string `koanf:"postgres_url" help:"PostgreSQL connection string when store is postgresql" secret:"true"`

	Retention        time.Duration `koanf:"retention" help:"how long events are kept in the history (dropped by whole days)"`
	MetricsRetention time.Duration `koanf:"metrics_retention" help:"how long metric snapshots are kept in the history"`
	// MaxFuture bounds the history's days ahead (issue 9 #3): an event dated further ahead
	// is filed under the time the log stored it, so that no input makes a partition after
	// now + MaxFuture, nor (with Retention) before now - Retention.
	MaxFuture time.Duration `koanf:"max_future" help:"events dated further ahead are filed under the time the log stored them, their own time kept in data.originalCreatedAt (keep it at least ingest.max_future)"`

	// Keep decides what is stored: a minimum level and type patterns to include (none:
	// all) and exclude, compiled when the settings are read. Events not kept are
	// acknowledged without being stored.
	MinLevel event.Level  `koanf:"min_level" help:"events below this level are not kept"`
	Include  filter.Types `koanf:"include" help:"comma-separated type patterns to keep (empty: all)"`
	Exclude  filter.Types `koanf:"exclude" help:"comma-separated type patterns not to keep"`

	Consumer  string        `koanf:"-"` // durable consumer name, shared by replicas ("archiver")
	BatchSize int           `koanf:"-"` // events per transaction (1000)
	MaxWait   time.Duration `koanf:"-"` // longest an event waits for its batch to fill (250 ms)
	Grace     time.Duration `koanf:"-"` // bound of a graceful stop (shutdown.grace)
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	var c Config
	c.setDefaults()
	return c
}

func (c *Config) setDefaults() {
	if c.Addr == "" {
		c.Addr = ":8082"
	}
	if c.Store == "" {
		c.Store = "sqlite"
	}
	if c.Consumer == "" {
		c.Consumer = "archiver"
	}
	if c.BatchSize == 0 {
		c.BatchSize = 1000
	}
	if c.MaxWait == 0 {
		c.MaxWait = 250 * time.Millisecond
	}
	if c.Retention == 0 {
		c.Retention = 30 * 24 * time.Hour
	}
	if c.MetricsRetention == 0 {
		c.MetricsRetention = 90 * 24 * time.Hour
	}
	if c.MaxFuture == 0 {
		c.MaxFuture = time.Hour
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
		add("addr", "%q: %v", c.Addr, err)
	}
	switch c.Store {
	case "sqlite":
	case "postgresql":
		if c.PostgresURL == "" {
			add("postgres_url", "required when archiver.store is postgresql")
		}
	default:
		add("store", "%q: want sqlite or postgresql", c.Store)
	}
	if c.Retention < 24*time.Hour {
		add("retention", "at least 24h (history is dropped by whole days)")
	}
	if c.MetricsRetention < time.Hour {
		add("metrics_retention", "at least 1h")
	}
	if c.MaxFuture < time.Minute || c.MaxFuture > 7*24*time.Hour {
		add("max_future", "want 1m to 168h")
	}
	if c.BatchSize < 1 || c.BatchSize > 100_000 {
		add("batch_size", "want 1 to 100000")
	}
	return errors.Join(errs...)
}

func (c *Config) keep(e *event.Event) bool {
	if e.Level < c.MinLevel || c.Exclude.Match(e.Type) {
		return false
	}
	return c.Include.Empty() || c.Include.Match(e.Type)
}
