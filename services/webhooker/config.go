package webhooker

import (
	"errors"
	"time"

	"github.com/mailpulse/mailpulse/shared/config"
	"github.com/mailpulse/mailpulse/shared/ssrf"
)

// Config is the webhooker's settings, under webhooker.* in the configuration. Zero fields
// take the defaults of DefaultConfig. Endpoints themselves live in the WEBHOOKS bucket and
// are managed through the API; those declared here are seeded into it at start (seed.go).
type Config struct {
	Addr string `koanf:"addr" help:"listen address of the webhooker's health and metrics when it runs alone (in all mode the gateway serves them, and the webhook API)"`
	// AllowNetworks opens ranges that are refused by default (loopback, private,
	// link-local, metadata…): a compose network, a receiver on the same host.
	AllowNetworks ssrf.Networks `koanf:"allow_networks" help:"comma-separated networks (CIDR) webhook URLs may reach although they are loopback, private or link-local (e.g. 10.0.0.0/8 for a compose network)"`
	MaxEndpoints  int           `koanf:"max_endpoints" help:"the most webhook endpoints that can be defined"`
	// MaxRequestBytes bounds one request's events (a batch stops short of it), and so,
	// with the number of endpoints, the memory deliveries use.
	MaxRequestBytes int    `koanf:"max_request_bytes" help:"largest body of one webhook request, in bytes (at least 1 MiB: one event must always fit)"`
	Source          string `koanf:"source" help:"the source named in the webhooker's own events (telemetry.webhook-delivered, -error, -disabled)"`

	// DisableAfter is how long an endpoint may fail continuously (no 2xx) before it is
	// disabled, for endpoints that do not say (their disableAfter; breaker.go).
	DisableAfter time.Duration `koanf:"disable_after" help:"an endpoint failing continuously for longer is disabled, unless it sets its own disableAfter (1m to 2160h)"`
	// Endpoints are declared in the configuration file as [[webhooker.endpoints]] tables,
	// with the API's fields plus an id, and seeded into the bucket at start by every
	// process that opens it. Only the file can declare them: a list of tables has no form
	// in a variable or a flag.
	Endpoints []EndpointSeed `koanf:"endpoints" secret:"true" help:"webhook endpoints to create or update at start: [[webhooker.endpoints]] tables in the config file, each with an id, a secret and the API's fields (url, types, format…)"`

	Grace time.Duration `koanf:"-"` // bound of a graceful stop (shutdown.grace)
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	var c Config
	c.setDefaults()
	return c
}

func (c *Config) setDefaults() {
	if c.Addr == "" {
		c.Addr = ":8083"
	}
	if c.MaxEndpoints == 0 {
		c.MaxEndpoints = 1000
	}
	if c.MaxRequestBytes == 0 {
		c.MaxRequestBytes = 4 << 20
	}
	if c.Source == "" {
		c.Source = "mailpulse-webhooker"
	}
	if c.DisableAfter == 0 {
		c.DisableAfter = DefaultDisableAfter
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
	if c.MaxEndpoints < 1 || c.MaxEndpoints > 100_000 {
		add("max_endpoints", "want 1 to 100000")
	}
	// NATS's default largest message is 1 MiB: a request smaller than that could meet an
	// event that fits in no batch, and it would stay at the head of its endpoint for ever.
	if c.MaxRequestBytes < 1<<20 || c.MaxRequestBytes > 64<<20 {
		add("max_request_bytes", "want 1048576 (1 MiB) to 67108864 (64 MiB)")
	}
	if c.Source == "" || len(c.Source) > 255 {
		add("source", "want 1 to 255 characters")
	}
	if c.DisableAfter < minDisableAfter || c.DisableAfter > maxDisableAfter {
		add("disable_after", "%s: want %s to %s", c.DisableAfter, minDisableAfter, maxDisableAfter)
	}
	if len(c.Endpoints) > 0 {
		_, probs := c.seeds()
		for _, p := range probs {
			add(p.key, "%s", p.problem)
		}
	}
	return errors.Join(errs...)
}

func (c *Config) guard(r ssrf.Resolver) *ssrf.Guard {
	return ssrf.New(ssrf.Options{Allow: c.AllowNetworks, Resolver: r})
}
