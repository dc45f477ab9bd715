package config

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestPrecedenceFileEnvFlags(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "mailpulse.toml")
	err := os.WriteFile(path, []byte(`
data_dir = "/from/file"
ingest_addr = ":9001"
simulate = 5
[stalwart]
metrics_url = "http://mail.example.org/metrics/prometheus"
metrics_interval = "30s"
[ingest]
max_batch = 500
`), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"MAILPULSE_INGEST_ADDR=:9002", "MAILPULSE_SIMULATE=7", "PATH=/bin", "MAILPULSE_STALWART_SECRET=s3cret"}
	l := NewLoader("all")
	cfg, err := l.Load([]string{"--config", path, "--simulate", "9", "--stalwart-metrics-interval=1m"}, env)
	if err != nil {
		t.Fatalf("Load = %v", err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"data_dir from file", cfg.DataDir, "/from/file"},
		{"ingest_addr env over file", cfg.IngestAddr, ":9002"},
		{"simulate flag over env", cfg.Simulate, 9.0},
		{"metrics_interval flag over file", cfg.Stalwart.MetricsInterval, time.Minute},
		{"max_batch from file", cfg.Ingest.MaxBatch, 500},
		{"secret from env", cfg.Stalwart.Secret, "s3cret"},
		{"default kept", cfg.HTTPAddr, ":8080"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, c.got, c.want)
		}
	}
	if r := cfg.Redacted(); r["stalwart.secret"] != "<set>" {
		t.Errorf("Redacted shows the secret: %v", r)
	}
}

func TestInvalidConfigListsEveryProblem(t *testing.T) {
	l := NewLoader("producer")
	env := []string{"MAILPULSE_SIMULATE=-5", "MAILPULSE_LOG_LEVEL=loud", "MAILPULSE_TYPO=1", "MAILPULSE_ADMIN_KEY=short",
		"MAILPULSE_STALWART_METRICS_URL=ftp://x", "MAILPULSE_INGEST_MAX_BATCH=0"}
	_, err := l.Load([]string{"--ingest-addr", "nonsense"}, env)
	if err == nil {
		t.Fatal("Load accepted an invalid configuration")
	}
	for _, want := range []string{"MAILPULSE_TYPO"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	// Without the unknown variable, the validation problems are all listed together.
	l = NewLoader("producer")
	_, err = l.Load([]string{"--ingest-addr", "nonsense"}, []string{"MAILPULSE_SIMULATE=-5", "MAILPULSE_LOG_LEVEL=loud", "MAILPULSE_ADMIN_KEY=short",
		"MAILPULSE_STALWART_METRICS_URL=ftp://x", "MAILPULSE_INGEST_MAX_BATCH=0"})
	if err == nil {
		t.Fatal("Load accepted an invalid configuration")
	}
	for _, want := range []string{"ingest_addr", "simulate", "log_level", "admin_key", "stalwart.metrics_url", "ingest.max_batch", "nats.url: required for the producer role"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
}

func TestUndecodableValueStillListsTheOtherProblems(t *testing.T) {
	_, err := NewLoader("producer").Load([]string{"--ingest-addr", "nope"}, []string{"MAILPULSE_SIMULATE=abc"})
	if err == nil {
		t.Fatal("accepted")
	}
	msg := err.Error()
	for _, want := range []string{"'simulate'", "ingest_addr", "nats.url"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error does not mention %s:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "decoding failed") || strings.Contains(msg, "simulate: want") {
		t.Errorf("error has a header line or judges the undecodable key twice:\n%s", msg)
	}
}

func TestRedactedHidesCredentialsInURLs(t *testing.T) {
	cfg, err := NewLoader("all").Load(nil, []string{"MAILPULSE_NATS_URL=nats://ops:hunter2@n1:4222,nats://ops:hunter2@n2:4222"})
	if err != nil {
		t.Fatal(err)
	}
	if r := cfg.Redacted()["nats.url"]; strings.Contains(r, "hunter2") || !strings.Contains(r, "n2:4222") {
		t.Errorf("Redacted nats.url = %q", r)
	}
}

func TestBadValuesAndFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.toml")
	os.WriteFile(path, []byte("ingest_adr = \":1\"\n[nats]\nurl = \"nats://127.0.0.1:4222\"\n"), 0o600)
	_, err := NewLoader("all").Load([]string{"--config", path}, nil)
	if err == nil || !strings.Contains(err.Error(), `unknown key "ingest_adr"`) {
		t.Errorf("unknown file key: error = %v", err)
	}
	_, err = NewLoader("all").Load(nil, []string{"MAILPULSE_METRICS_INTERVAL=soon"})
	if err == nil || !strings.Contains(err.Error(), "interval") {
		t.Errorf("bad duration: error = %v", err)
	}
	_, err = NewLoader("all").Load([]string{"--config", filepath.Join(t.TempDir(), "missing.toml")}, nil)
	if err == nil {
		t.Error("missing config file accepted")
	}
	_, err = NewLoader("all").Load([]string{"-h"}, nil)
	if !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: error = %v, want flag.ErrHelp", err)
	}
}

func TestEnvNamesMatchTheIssue(t *testing.T) {
	want := []string{"MAILPULSE_DATA_DIR", "MAILPULSE_HTTP_ADDR", "MAILPULSE_INGEST_ADDR", "MAILPULSE_NATS_URL", "MAILPULSE_NATS_LISTEN",
		"MAILPULSE_NATS_USER", "MAILPULSE_NATS_PASSWORD", "MAILPULSE_SIMULATE", "MAILPULSE_ADMIN_KEY", "MAILPULSE_INGEST_KEY",
		"MAILPULSE_STALWART_SECRET", "MAILPULSE_STALWART_METRICS_URL", "MAILPULSE_STALWART_METRICS_USER", "MAILPULSE_STALWART_METRICS_PASSWORD"}
	have := strings.Join(EnvNames(), " ")
	for _, w := range want {
		if !strings.Contains(have+" ", w+" ") {
			t.Errorf("variable %s is not read", w)
		}
	}
	u := NewLoader("producer").Usage()
	if !strings.Contains(u, "--stalwart-metrics-url") || strings.Contains(u, "--http-addr") {
		t.Errorf("producer usage lists the wrong flags:\n%s", u)
	}
}
