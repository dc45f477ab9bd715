// Package config loads mailpulse's settings: defaults, then a TOML file, then MAILPULSE_*
// environment variables, then command-line flags, each overriding the one before. One
// typed struct is the single source of truth: its tags name the file key, and the variable
// and flag names are derived from it, so the three can never disagree.
package config

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/knadh/koanf/parsers/toml/v2"
	"github.com/knadh/koanf/providers/confmap"
	"github.com/knadh/koanf/providers/file"
	"github.com/knadh/koanf/v2"

	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/event"
)

// Roles are the services the binary can run; "all" runs every one in one process.
var Roles = []string{"all", "producer", "live-gateway", "alerter", "webhooker", "archiver"}

// EnvPrefix starts every environment variable mailpulse reads.
const EnvPrefix = "MAILPULSE_"

// Config is every setting. Field tags: koanf is the TOML key (and, upper-cased with the
// prefix, the variable; with dashes, the flag); help explains it; roles limits the flag to
// some roles (empty: every role); secret keeps its value out of help and logs.
type Config struct {
	DataDir    string `koanf:"data_dir" help:"directory for the embedded NATS store and generated credentials"`
	HTTPAddr   string `koanf:"http_addr" help:"listen address of the gateway (API, live streams, dashboard)" roles:"all,live-gateway"`
	IngestAddr string `koanf:"ingest_addr" help:"listen address of the producer's ingest API" roles:"all,producer"`
	LogLevel   string `koanf:"log_level" help:"log level: debug, info, warn or error"`
	LogFormat  string `koanf:"log_format" help:"log format: text or json"`
	Source     string `koanf:"source" help:"source given to ingested events that name none" roles:"all,producer"`
	// MemoryLimit is Go's soft memory limit for the process (runtime/debug.SetMemoryLimit):
	// near it the garbage collector works harder instead of letting the heap double. GOMEMLIMIT,
	// when set, wins.
	MemoryLimit int64 `koanf:"memory_limit" help:"soft memory limit in bytes (0: none; GOMEMLIMIT wins when set)"`

	// Simulate is the simulator's rate in events/s: 0 is off, -1 (the default) is on at 20
	// events/s in all mode when no Stalwart source is configured, off otherwise.
	Simulate     float64 `koanf:"simulate" help:"simulated events per second (0 off; -1 auto: on at 20/s in all mode without a Stalwart source)" roles:"all,producer"`
	SimulateSeed int64   `koanf:"simulate_seed" help:"seed of the simulator, for reproducible traffic" roles:"all,producer"`

	AdminKey  string `koanf:"admin_key" help:"fixed admin API key (at least 16 characters); generated on first start when empty" secret:"true"`
	IngestKey string `koanf:"ingest_key" help:"fixed ingest API key (at least 16 characters); generated on first start when empty" secret:"true"`

	Gateway  Gateway    `koanf:"gateway"`
	Archiver Archiver   `koanf:"archiver"`
	NATS     NATS       `koanf:"nats"`
	Stalwart Stalwart   `koanf:"stalwart"`
	Ingest   Ingest     `koanf:"ingest"`
	Metrics  Metrics    `koanf:"metrics"`
	Stream   bus.Limits `koanf:"stream"`
	Shutdown Shutdown   `koanf:"shutdown"`
}

// NATS says where the event log is.
type NATS struct {
	URL      string `koanf:"url" help:"external NATS server(s), comma-separated; in all mode it replaces the embedded server"`
	Listen   string `koanf:"listen" help:"TCP address for the embedded server, so other processes and the nats CLI can join (empty: in-process only)" roles:"all"`
	User     string `koanf:"user" help:"NATS user (required by the embedded listener; used by roles to connect)"`
	Password string `koanf:"password" help:"NATS password (generated and printed when the embedded listener has none)" secret:"true"`
}

// Stalwart configures the Stalwart adapters.
type Stalwart struct {
	Secret           string        `koanf:"secret" help:"secret Stalwart signs its webhooks with (X-Signature); when set, the signature is required" secret:"true" roles:"all,producer"`
	Source           string        `koanf:"source" help:"source of events and metrics from Stalwart (a webhook can override it with ?source=)" roles:"all,producer"`
	MetricsURL       string        `koanf:"metrics_url" help:"Stalwart /metrics/prometheus URL to scrape (empty: no scraping)" roles:"all,producer"`
	MetricsUser      string        `koanf:"metrics_user" help:"Basic auth user for the metrics URL" roles:"all,producer"`
	MetricsPassword  string        `koanf:"metrics_password" help:"Basic auth password for the metrics URL" secret:"true" roles:"all,producer"`
	MetricsInterval  time.Duration `koanf:"metrics_interval" help:"scrape interval" roles:"all,producer"`
	HistogramBuckets string        `koanf:"histogram_buckets" help:"how Stalwart writes histogram buckets: auto, per-bucket or cumulative" roles:"all,producer"`
}

// Gateway configures the live gateway.
type Gateway struct {
	Heartbeat        time.Duration `koanf:"heartbeat" help:"comment sent on idle streams so dead clients are noticed" roles:"all,live-gateway"`
	QueueSize        int           `koanf:"queue_size" help:"events waiting for one slow stream before it loses some" roles:"all,live-gateway"`
	MaxStreams       int           `koanf:"max_streams" help:"open streams in total (429 past it)" roles:"all,live-gateway"`
	MaxStreamsPerKey int           `koanf:"max_streams_per_key" help:"open streams per API key (429 past it)" roles:"all,live-gateway"`
	CORSOrigins      string        `koanf:"cors_origins" help:"comma-separated browser origins allowed to call the API (empty: none)" roles:"all,live-gateway"`
}

// Archiver configures the history.
type Archiver struct {
	Store            string        `koanf:"store" help:"history store: sqlite (a file in the data dir) or postgresql (for several archivers)" roles:"all,archiver"`
	PostgresURL      string        `koanf:"postgres_url" help:"PostgreSQL connection string when store is postgresql" secret:"true" roles:"all,archiver"`
	Retention        time.Duration `koanf:"retention" help:"how long events are kept in the history (dropped by whole days)" roles:"all,archiver"`
	MetricsRetention time.Duration `koanf:"metrics_retention" help:"how long metric snapshots are kept in the history" roles:"all,archiver"`
	MinLevel         string        `koanf:"min_level" help:"events below this level are not kept" roles:"all,archiver"`
	Include          string        `koanf:"include" help:"comma-separated type patterns to keep (empty: all)" roles:"all,archiver"`
	Exclude          string        `koanf:"exclude" help:"comma-separated type patterns not to keep" roles:"all,archiver"`
}

// Ingest bounds the ingest API.
type Ingest struct {
	MaxBodyBytes int           `koanf:"max_body_bytes" help:"largest request body accepted" roles:"all,producer"`
	MaxBatch     int           `koanf:"max_batch" help:"most events in one request" roles:"all,producer"`
	Timeout      time.Duration `koanf:"timeout" help:"longest a request waits for the log to store its events before 503" roles:"all,producer"`
	Window       int           `koanf:"window" help:"asynchronous publishes awaiting acknowledgement (back-pressure point)" roles:"all,producer"`
}

// Metrics configures the metrics projection of events.
type Metrics struct {
	Interval time.Duration `koanf:"interval" help:"how often metric snapshots are published per source" roles:"all,producer"`
}

// Shutdown bounds a graceful stop.
type Shutdown struct {
	Grace time.Duration `koanf:"grace" help:"longest a graceful shutdown waits for in-flight work"`
}

// Default returns the defaults.
func Default() Config {
	return Config{
		DataDir:     "./data",
		HTTPAddr:    ":8080",
		IngestAddr:  ":8081",
		LogLevel:    "info",
		LogFormat:   "text",
		MemoryLimit: 128 << 20,
		Simulate:    -1,
		Stalwart: Stalwart{
			Source:           "stalwart",
			MetricsInterval:  15 * time.Second,
			HistogramBuckets: "auto",
		},
		Archiver: Archiver{Store: "sqlite", Retention: 30 * 24 * time.Hour, MetricsRetention: 90 * 24 * time.Hour, MinLevel: "trace"},
		Gateway:  Gateway{Heartbeat: 15 * time.Second, QueueSize: 1024, MaxStreams: 1000, MaxStreamsPerKey: 20},
		Ingest:   Ingest{MaxBodyBytes: 16 << 20, MaxBatch: 10_000, Timeout: 10 * time.Second, Window: 4000},
		Metrics:  Metrics{Interval: 10 * time.Second},
		Stream:   bus.DefaultLimits(),
		Shutdown: Shutdown{Grace: 15 * time.Second},
	}
}

// field is one setting, found by walking Config.
type field struct {
	key    string // TOML path: stalwart.metrics_url
	env    string // MAILPULSE_STALWART_METRICS_URL
	flag   string // stalwart-metrics-url
	help   string
	roles  []string
	secret bool
	typ    reflect.Type
	def    any
}

func fields() []field {
	var out []field
	var walk func(t reflect.Type, v reflect.Value, prefix string)
	walk = func(t reflect.Type, v reflect.Value, prefix string) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			key := f.Tag.Get("koanf")
			if key == "" {
				continue
			}
			if prefix != "" {
				key = prefix + "." + key
			}
			if f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeOf(time.Time{}) {
				walk(f.Type, v.Field(i), key)
				continue
			}
			help := f.Tag.Get("help")
			if help == "" {
				help = strings.ReplaceAll(key, "_", " ")
			}
			var roles []string
			if r := f.Tag.Get("roles"); r != "" {
				roles = strings.Split(r, ",")
			}
			flat := strings.ReplaceAll(key, ".", "_")
			out = append(out, field{
				key:    key,
				env:    EnvPrefix + strings.ToUpper(flat),
				flag:   strings.ReplaceAll(flat, "_", "-"),
				help:   help,
				roles:  roles,
				secret: f.Tag.Get("secret") == "true",
				typ:    f.Type,
				def:    v.Field(i).Interface(),
			})
		}
	}
	d := Default()
	walk(reflect.TypeOf(d), reflect.ValueOf(d), "")
	return out
}

func (f field) forRole(role string) bool { return len(f.roles) == 0 || slices.Contains(f.roles, role) }

// Loader parses a role's command line and loads the configuration.
type Loader struct {
	role   string
	fs     *flag.FlagSet
	config *string
	fields []field
}

// NewLoader returns a loader whose flag set has the flags of role, plus --config.
func NewLoader(role string) *Loader {
	l := &Loader{role: role, fs: flag.NewFlagSet("mailpulse "+role, flag.ContinueOnError), fields: fields()}
	l.config = l.fs.String("config", "", "TOML configuration file")
	for _, f := range l.fields {
		if !f.forRole(role) {
			continue
		}
		help := f.help + " (" + f.env + ")"
		// Flag defaults are not shown: the effective default may come from the file or the
		// environment. Printed defaults come from Usage.
		l.fs.Var(&rawValue{}, f.flag, help)
	}
	return l
}

// FlagSet exposes the flag set, for usage output.
func (l *Loader) FlagSet() *flag.FlagSet { return l.fs }

// rawValue keeps a flag's text for koanf to convert, so the conversion rules (durations,
// numbers) are the same for flags, variables and the file.
type rawValue struct{ s string }

func (r *rawValue) String() string     { return r.s }
func (r *rawValue) Set(s string) error { r.s = s; return nil }

// Usage describes every setting of the role with its default, variable and flag.
func (l *Loader) Usage() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Settings (flag, environment variable, TOML key; later sources override earlier ones:\ndefaults < --config file < environment < flags):\n\n")
	fmt.Fprintf(&b, "  --config FILE\n        TOML configuration file\n")
	for _, f := range l.fields {
		if !f.forRole(l.role) {
			continue
		}
		def := fmt.Sprint(f.def)
		if f.secret || def == "" {
			def = "none"
		}
		fmt.Fprintf(&b, "  --%s  (%s, key %s, default %s)\n        %s\n", f.flag, f.env, f.key, def, f.help)
	}
	return b.String()
}

// Load parses args, reads the file named by --config, the environment (environ, as
// os.Environ returns it) and the flags, and validates the result for the role. The error
// lists every problem found. flag.ErrHelp is returned for -h and --help.
func (l *Loader) Load(args, environ []string) (Config, error) {
	l.fs.SetOutput(discard{})
	if err := l.fs.Parse(args); err != nil {
		return Config{}, err
	}
	if l.fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected argument %q", l.fs.Arg(0))
	}
	ko := koanf.New(".")
	defaults := map[string]any{}
	known := map[string]field{}
	byEnv := map[string]field{}
	for _, f := range l.fields {
		defaults[f.key] = f.def
		known[f.key] = f
		byEnv[f.env] = f
	}
	if err := ko.Load(confmap.Provider(defaults, "."), nil); err != nil {
		return Config{}, fmt.Errorf("defaults: %w", err)
	}
	var problems []error
	if *l.config != "" {
		fk := koanf.New(".")
		if err := fk.Load(file.Provider(*l.config), toml.Parser()); err != nil {
			return Config{}, fmt.Errorf("config file %s: %w", *l.config, err)
		}
		for _, k := range fk.Keys() {
			if _, ok := known[k]; !ok {
				problems = append(problems, fmt.Errorf("config file %s: unknown key %q", *l.config, k))
			}
		}
		if err := ko.Merge(fk); err != nil {
			return Config{}, fmt.Errorf("config file %s: %w", *l.config, err)
		}
	}
	envs := map[string]any{}
	for _, kv := range environ {
		name, value, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, EnvPrefix) {
			continue
		}
		f, ok := byEnv[name]
		if !ok {
			problems = append(problems, fmt.Errorf("unknown environment variable %s", name))
			continue
		}
		envs[f.key] = value
	}
	if err := ko.Load(confmap.Provider(envs, "."), nil); err != nil {
		return Config{}, fmt.Errorf("environment: %w", err)
	}
	flags := map[string]any{}
	l.fs.Visit(func(fl *flag.Flag) {
		for _, f := range l.fields {
			if f.flag == fl.Name {
				flags[f.key] = fl.Value.String()
			}
		}
	})
	if err := ko.Load(confmap.Provider(flags, "."), nil); err != nil {
		return Config{}, fmt.Errorf("flags: %w", err)
	}
	var cfg Config
	// Decoding goes on past a bad value, so the rest can still be validated: every
	// problem is reported at once. A key that failed to decode is not judged again.
	failed := map[string]bool{}
	if err := ko.UnmarshalWithConf("", &cfg, koanf.UnmarshalConf{Tag: "koanf"}); err != nil {
		for _, e := range decodeErrors(err) {
			problems = append(problems, e)
			if m := quotedKey.FindStringSubmatch(e.Error()); m != nil {
				failed[m[1]] = true
			}
		}
	}
	if err := cfg.Validate(l.role); err != nil {
		for _, e := range splitJoined(err) {
			key, _, _ := strings.Cut(e.Error(), ":")
			key, _, _ = strings.Cut(key, " ")
			if !failed[key] {
				problems = append(problems, e)
			}
		}
	}
	if len(problems) > 0 {
		return Config{}, errors.Join(problems...)
	}
	return cfg, nil
}

var quotedKey = regexp.MustCompile(`'([a-z0-9_.]+)'`)

// decodeErrors splits mapstructure's one error for all bad values into one error each,
// without its header line.
func decodeErrors(err error) []error {
	var out []error
	for _, line := range strings.Split(err.Error(), "\n") {
		line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "*"))
		if line == "" || strings.HasSuffix(line, ":") || strings.Contains(line, "error(s) decoding") {
			continue
		}
		out = append(out, errors.New(line))
	}
	if len(out) == 0 {
		out = append(out, err)
	}
	return out
}

func splitJoined(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// Validate reports every problem of the configuration for a role at once.
func (c *Config) Validate(role string) error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if !slices.Contains(Roles, role) {
		add("unknown role %q: want one of %s", role, strings.Join(Roles, ", "))
	}
	if c.MemoryLimit < 0 {
		add("memory_limit: must not be negative")
	}
	if c.DataDir == "" {
		add("data_dir: must not be empty")
	}
	for _, a := range []struct{ key, v string }{{"http_addr", c.HTTPAddr}, {"ingest_addr", c.IngestAddr}, {"nats.listen", c.NATS.Listen}} {
		if a.v == "" && a.key == "nats.listen" {
			continue
		}
		if err := checkAddr(a.v); err != nil {
			add("%s %q: %v", a.key, a.v, err)
		}
	}
	if c.HTTPAddr == c.IngestAddr && role == "all" && !strings.HasSuffix(c.HTTPAddr, ":0") {
		add("http_addr and ingest_addr: must differ in all mode")
	}
	if _, err := parseLogLevel(c.LogLevel); err != nil {
		add("log_level: %v", err)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		add("log_format %q: want text or json", c.LogFormat)
	}
	if c.Simulate < -1 || c.Simulate > 1_000_000 {
		add("simulate: want -1 (auto), 0 (off) or a rate up to 1000000 events/s")
	}
	if err := event.ValidateSource(c.Source); err != nil && c.Source != "" {
		add("source: %v", err)
	}
	for _, k := range []struct{ key, v string }{{"admin_key", c.AdminKey}, {"ingest_key", c.IngestKey}} {
		if k.v != "" && (len(k.v) < 16 || len(k.v) > 256 || strings.ContainsAny(k.v, " \t\r\n")) {
			add("%s: want 16 to 256 characters without spaces", k.key)
		}
	}
	if c.NATS.URL != "" {
		for _, u := range strings.Split(c.NATS.URL, ",") {
			pu, err := url.Parse(strings.TrimSpace(u))
			if err != nil || pu.Host == "" || !slices.Contains([]string{"nats", "tls", "ws", "wss"}, pu.Scheme) {
				add("nats.url %q: want nats://host:port (or tls://, ws://, wss://)", u)
			}
		}
	} else if role != "all" && role != "" && slices.Contains(Roles, role) {
		add("nats.url: required for the %s role (the embedded server runs only in all mode)", role)
	}
	if c.NATS.URL != "" && c.NATS.Listen != "" {
		add("nats.listen: the embedded server does not run when nats.url is set")
	}
	if (c.NATS.User == "") != (c.NATS.Password == "") && c.NATS.Listen == "" {
		add("nats.user and nats.password: give both or neither")
	}
	if c.Stalwart.MetricsURL != "" {
		if u, err := url.Parse(c.Stalwart.MetricsURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			add("stalwart.metrics_url %q: want an http:// or https:// URL", c.Stalwart.MetricsURL)
		}
	}
	if (c.Stalwart.MetricsUser == "") != (c.Stalwart.MetricsPassword == "") {
		add("stalwart.metrics_user and stalwart.metrics_password: give both or neither")
	}
	if c.Stalwart.MetricsInterval < time.Second {
		add("stalwart.metrics_interval: at least 1s")
	}
	if !slices.Contains([]string{"auto", "per-bucket", "cumulative"}, c.Stalwart.HistogramBuckets) {
		add("stalwart.histogram_buckets %q: want auto, per-bucket or cumulative", c.Stalwart.HistogramBuckets)
	}
	if err := event.ValidateSource(c.Stalwart.Source); err != nil {
		add("stalwart.source: %v", err)
	}
	if c.Ingest.MaxBodyBytes < 1024 || c.Ingest.MaxBodyBytes > 1<<30 {
		add("ingest.max_body_bytes: want 1 KiB to 1 GiB")
	}
	if c.Ingest.MaxBatch < 1 || c.Ingest.MaxBatch > 1_000_000 {
		add("ingest.max_batch: want 1 to 1000000")
	}
	if c.Ingest.Timeout < 100*time.Millisecond {
		add("ingest.timeout: at least 100ms")
	}
	if c.Ingest.Window < 1 || c.Ingest.Window > 1_000_000 {
		add("ingest.window: want 1 to 1000000")
	}
	if c.Gateway.Heartbeat < 100*time.Millisecond || c.Gateway.Heartbeat > 5*time.Minute {
		add("gateway.heartbeat: want 100ms to 5m")
	}
	if c.Gateway.QueueSize < 16 || c.Gateway.QueueSize > 1_000_000 {
		add("gateway.queue_size: want 16 to 1000000")
	}
	if c.Gateway.MaxStreams < 1 || c.Gateway.MaxStreamsPerKey < 1 {
		add("gateway.max_streams and gateway.max_streams_per_key: at least 1")
	}
	switch c.Archiver.Store {
	case "sqlite":
	case "postgresql":
		if c.Archiver.PostgresURL == "" {
			add("archiver.postgres_url: required when archiver.store is postgresql")
		}
	default:
		add("archiver.store %q: want sqlite or postgresql", c.Archiver.Store)
	}
	if c.Archiver.Retention < 24*time.Hour {
		add("archiver.retention: at least 24h (history is dropped by whole days)")
	}
	if c.Archiver.MetricsRetention < time.Hour {
		add("archiver.metrics_retention: at least 1h")
	}
	if _, err := event.ParseLevel(c.Archiver.MinLevel); err != nil {
		add("archiver.min_level: %v", err)
	}
	if c.Metrics.Interval < time.Second {
		add("metrics.interval: at least 1s")
	}
	if c.Shutdown.Grace < 0 {
		add("shutdown.grace: must not be negative")
	}
	if err := c.Stream.Validate(); err != nil {
		add("stream: %v", err)
	}
	return errors.Join(errs...)
}

func checkAddr(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return errors.New("want host:port or :port")
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return errors.New("port must be a number from 0 to 65535")
	}
	_ = host
	return nil
}

// Redacted returns the settings that differ from the defaults, secrets masked, for the
// start-up log.
func (c *Config) Redacted() map[string]string {
	out := map[string]string{}
	cv := reflect.ValueOf(*c)
	for _, f := range fields() {
		v := lookup(cv, f.key)
		s := fmt.Sprint(v)
		if s == fmt.Sprint(f.def) {
			continue
		}
		if f.secret && s != "" {
			s = "<set>"
		}
		s = redactUserInfo(s)
		out[f.key] = s
	}
	return out
}

// redactUserInfo masks credentials written into URLs (nats://user:pass@host), which may
// hold several comma-separated URLs.
func redactUserInfo(v string) string {
	if !strings.Contains(v, "@") || !strings.Contains(v, "://") {
		return v
	}
	parts := strings.Split(v, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			u.User = url.User("<redacted>")
			parts[i] = u.String()
		}
	}
	return strings.Join(parts, ",")
}

func lookup(v reflect.Value, key string) any {
	for _, part := range strings.Split(key, ".") {
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			if t.Field(i).Tag.Get("koanf") == part {
				v = v.Field(i)
				break
			}
		}
	}
	return v.Interface()
}

// EnvNames lists every variable mailpulse reads, sorted.
func EnvNames() []string {
	var out []string
	for _, f := range fields() {
		out = append(out, f.env)
	}
	sort.Strings(out)
	return out
}
