package config

import (
	"errors"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mailpulse/mailpulse/shared/bus"
)

// Roles are the services the binary can run; "all" runs every one in one process.
var Roles = []string{"all", "producer", "live-gateway", "alerter", "webhooker", "archiver"}

// Process is the settings every role shares: where data lives, logging, memory, the API
// keys to bootstrap, NATS, the log's limits and the stop. It is the top-level section.
type Process struct {
	DataDir   string `koanf:"data_dir" help:"directory for the embedded NATS store, the SQLite history and generated credentials"`
	LogLevel  string `koanf:"log_level" help:"log level: debug, info, warn or error"`
	LogFormat string `koanf:"log_format" help:"log format: text or json"`
	// MemoryLimit is Go's soft memory limit for the process (runtime/debug.SetMemoryLimit):
	// near it the garbage collector works harder instead of letting the heap double.
	// GOMEMLIMIT, when set, wins.
	MemoryLimit int64 `koanf:"memory_limit" help:"soft memory limit in bytes (0: none; GOMEMLIMIT wins when set)"`

	AdminKey  string `koanf:"admin_key" help:"fixed admin API key (at least 16 characters); generated on first start when empty" secret:"true"`
	IngestKey string `koanf:"ingest_key" help:"fixed ingest API key (at least 16 characters); generated on first start when empty" secret:"true"`

	NATS     NATS       `koanf:"nats"`
	Stream   bus.Limits `koanf:"stream"`
	Shutdown Shutdown   `koanf:"shutdown"`

	role string // set by ForRole: some rules depend on it
}

// NATS says where the event log is.
type NATS struct {
	URL      string `koanf:"url" help:"external NATS server(s), comma-separated; in all mode it replaces the embedded server"`
	Listen   string `koanf:"listen" help:"TCP address for the embedded server (all mode), so other processes and the nats CLI can join (empty: in-process only)"`
	User     string `koanf:"user" help:"NATS user (required by the embedded listener; used by roles to connect)"`
	Password string `koanf:"password" help:"NATS password (generated and printed when the embedded listener has none)" secret:"true"`
}

// Shutdown bounds a graceful stop.
type Shutdown struct {
	Grace time.Duration `koanf:"grace" help:"longest a graceful shutdown waits for in-flight work"`
}

// DefaultProcess returns the defaults.
func DefaultProcess() Process {
	return Process{
		DataDir:     "./data",
		LogLevel:    "info",
		LogFormat:   "text",
		MemoryLimit: 128 << 20,
		Stream:      bus.DefaultLimits(),
		Shutdown:    Shutdown{Grace: 15 * time.Second},
	}
}

// ForRole tells the section which role runs, for the rules that depend on it; the Loader
// calls it before Validate.
func (p *Process) ForRole(role string) { p.role = role }

// Validate reports every problem at once.
func (p *Process) Validate() error {
	var errs []error
	add := func(key, format string, a ...any) { errs = append(errs, Problem(key, format, a...)) }
	if p.role != "" && !slices.Contains(Roles, p.role) {
		errs = append(errs, errors.New("unknown role "+strconv.Quote(p.role)+": want one of "+strings.Join(Roles, ", ")))
	}
	if p.MemoryLimit < 0 {
		add("memory_limit", "must not be negative")
	}
	if p.DataDir == "" {
		add("data_dir", "must not be empty")
	}
	if p.NATS.Listen != "" {
		if err := CheckAddr(p.NATS.Listen); err != nil {
			add("nats.listen", "%q: %v", p.NATS.Listen, err)
		}
	}
	if _, err := parseLogLevel(p.LogLevel); err != nil {
		add("log_level", "%v", err)
	}
	if p.LogFormat != "text" && p.LogFormat != "json" {
		add("log_format", "%q: want text or json", p.LogFormat)
	}
	for _, k := range []struct{ key, v string }{{"admin_key", p.AdminKey}, {"ingest_key", p.IngestKey}} {
		if k.v != "" && (len(k.v) < 16 || len(k.v) > 256 || strings.ContainsAny(k.v, " \t\r\n")) {
			add(k.key, "want 16 to 256 characters without spaces")
		}
	}
	if p.NATS.URL != "" {
		for _, u := range strings.Split(p.NATS.URL, ",") {
			pu, err := url.Parse(strings.TrimSpace(u))
			if err != nil || pu.Host == "" || !slices.Contains([]string{"nats", "tls", "ws", "wss"}, pu.Scheme) {
				add("nats.url", "%q: want nats://host:port (or tls://, ws://, wss://)", redactUserInfo(u))
			}
		}
	} else if p.role != "all" && p.role != "" && slices.Contains(Roles, p.role) {
		add("nats.url", "required for the %s role (the embedded server runs only in all mode)", p.role)
	}
	if p.NATS.URL != "" && p.NATS.Listen != "" {
		add("nats.listen", "the embedded server does not run when nats.url is set")
	}
	if p.NATS.Listen != "" && p.NATS.Password != "" && !strings.HasPrefix(p.NATS.Password, "$2") &&
		(len(p.NATS.Password) < 16 || len(p.NATS.Password) > 256) {
		// The listener may face a network: a short password is guessed. The same rule
		// as API keys; a bcrypt hash ($2…) is accepted as it is.
		add("nats.password", "want 16 to 256 characters for the embedded listener (or leave it empty to have one generated)")
	}
	if (p.NATS.User == "") != (p.NATS.Password == "") && p.NATS.Listen == "" {
		add("nats.user", "give nats.user and nats.password both or neither")
	}
	if p.Shutdown.Grace < 0 {
		add("shutdown.grace", "must not be negative")
	}
	for _, err := range flatten(p.Stream.Validate()) {
		errs = append(errs, Problem("stream", "%v", err))
	}
	return errors.Join(errs...)
}

// CheckAddr checks a listen address: host:port or :port.
func CheckAddr(a string) error {
	_, port, err := net.SplitHostPort(a)
	if err != nil {
		return errors.New("want host:port or :port")
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return errors.New("port must be a number from 0 to 65535")
	}
	return nil
}
