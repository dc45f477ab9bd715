package config

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailpulse/mailpulse/shared/filter"
)

// svc is a service's section, as a service declares it.
type svc struct {
	Addr     string        `koanf:"http_addr" top:"true" help:"listen address"`
	Interval time.Duration `koanf:"interval"`
	Max      int           `koanf:"max"`
	Include  filter.Types  `koanf:"include"`
	Secret   string        `koanf:"secret" secret:"true"`
	Nested   struct {
		Name string `koanf:"name"`
	} `koanf:"nested"`
	Grace time.Duration `koanf:"-"`
}

func (s *svc) Validate() error {
	var errs []error
	if s.Max < 1 {
		errs = append(errs, Problem("max", "at least 1"))
	}
	if err := CheckAddr(s.Addr); err != nil {
		errs = append(errs, Problem("http_addr", "%v", err))
	}
	if s.Interval < time.Second {
		errs = append(errs, Problem("interval", "at least 1s"))
	}
	return errors.Join(errs...)
}

func doc() (*Document, *Process, *svc) {
	p := DefaultProcess()
	s := &svc{Addr: ":8080", Interval: 10 * time.Second, Max: 5}
	var d Document
	d.Add("", &p)
	d.Add("svc", s, "all", "live-gateway")
	return &d, &p, s
}

func TestPrecedenceFileEnvFlags(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.toml")
	os.WriteFile(path, []byte("log_level = \"debug\"\n[svc]\nmax = 2\ninterval = \"5s\"\ninclude = [\"smtp.*\", \"auth.failed\"]\n[svc.nested]\nname = \"file\"\n"), 0o600)
	d, p, s := doc()
	env := []string{"MAILPULSE_SVC_MAX=3", "MAILPULSE_NATS_URL=nats://n:4222", "PATH=/bin", "MAILPULSE_SVC_SECRET=s3cret", "MAILPULSE_HTTP_ADDR=:9000"}
	if err := NewLoader("live-gateway", d).Load([]string{"--config", path, "--svc-max", "4", "--svc-nested-name=flag"}, env); err != nil {
		t.Fatalf("Load = %v", err)
	}
	if s.Max != 4 || s.Interval != 5*time.Second || s.Nested.Name != "flag" || p.LogLevel != "debug" || s.Secret != "s3cret" || s.Addr != ":9000" {
		t.Fatalf("loaded %+v / log level %q; want flags over env over file over defaults", s, p.LogLevel)
	}
	if !s.Include.Match("smtp.ehlo") || s.Include.Match("imap.login") {
		t.Fatalf("include %v not compiled from the TOML array", s.Include)
	}
	r := d.Redacted()
	if r["svc.secret"] != "<set>" || r["svc.max"] != "4" || r["http_addr"] != ":9000" {
		t.Fatalf("Redacted = %v", r)
	}
}

func TestEveryProblemAtOnceUnderItsKey(t *testing.T) {
	d, _, _ := doc()
	env := []string{"MAILPULSE_SVC_INCLUDE=SMTP.*,ok.fine", "MAILPULSE_LOG_LEVEL=loud", "MAILPULSE_TYPO=1",
		"MAILPULSE_SVC_MAX=0", "MAILPULSE_SVC_INTERVAL=soon", "MAILPULSE_ADMIN_KEY=short"}
	err := NewLoader("live-gateway", d).Load([]string{"--http-addr", "nonsense"}, env)
	if err == nil {
		t.Fatal("Load accepted bad settings")
	}
	msg := err.Error()
	for _, want := range []string{"svc.include: types: pattern \"SMTP.*\"", "log_level:", "MAILPULSE_TYPO", "svc.max: at least 1",
		"svc.interval:", "admin_key:", "http_addr: want host:port", "nats.url: required for the live-gateway role"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	// An undecodable value is reported once, not again by Validate.
	if strings.Count(msg, "svc.interval") != 1 {
		t.Errorf("svc.interval reported %d times:\n%s", strings.Count(msg, "svc.interval"), msg)
	}
}

func TestSectionsOfOtherRolesAreNeitherFlagsNorValidated(t *testing.T) {
	d, _, s := doc()
	s.Max = 0 // invalid, but the producer role does not run this section
	l := NewLoader("producer", d)
	err := l.Load([]string{"--svc-max", "3"}, []string{"MAILPULSE_NATS_URL=nats://n:4222"})
	if err == nil || !strings.Contains(err.Error(), "svc-max") {
		t.Fatalf("Load with another role's flag = %v, want an unknown-flag error", err)
	}
	d, _, s = doc()
	s.Max = 0
	if err := NewLoader("producer", d).Load(nil, []string{"MAILPULSE_NATS_URL=nats://n:4222"}); err != nil {
		t.Fatalf("Load = %v: a section of another role was validated", err)
	}
	if u := NewLoader("live-gateway", d).Usage(); !strings.Contains(u, "--svc-max") || strings.Contains(u, "s3cret") {
		t.Errorf("Usage:\n%s", u)
	}
}

func TestRedactedHidesCredentialsInURLs(t *testing.T) {
	d, _, _ := doc()
	if err := NewLoader("all", d).Load(nil, []string{"MAILPULSE_NATS_URL=nats://ops:hunter2@n1:4222,nats://ops:hunter2@n2:4222"}); err != nil {
		t.Fatal(err)
	}
	if v := d.Redacted()["nats.url"]; strings.Contains(v, "hunter2") || !strings.Contains(v, "n2:4222") {
		t.Fatalf("Redacted nats.url = %q", v)
	}
}

func TestFileProblems(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.toml")
	os.WriteFile(path, []byte("[svc]\nunknown = 1\n"), 0o600)
	d, _, _ := doc()
	if err := NewLoader("all", d).Load([]string{"--config", path}, nil); err == nil || !strings.Contains(err.Error(), `unknown key "svc.unknown"`) {
		t.Errorf("unknown file key: %v", err)
	}
	d, _, _ = doc()
	if err := NewLoader("all", d).Load([]string{"--config", filepath.Join(t.TempDir(), "missing.toml")}, nil); err == nil {
		t.Error("a missing config file was accepted")
	}
	d, _, _ = doc()
	if err := NewLoader("all", d).Load([]string{"-h"}, nil); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h = %v, want flag.ErrHelp", err)
	}
}

func TestRulesRunAfterSections(t *testing.T) {
	d, _, s := doc()
	d.Rule(func(role string) error {
		if s.Max == 7 {
			return Problem("svc.max", "not 7 in %s mode", role)
		}
		return nil
	})
	if err := NewLoader("all", d).Load(nil, []string{"MAILPULSE_SVC_MAX=7"}); err == nil || !strings.Contains(err.Error(), "svc.max: not 7 in all mode") {
		t.Fatalf("rule: %v", err)
	}
}

func TestListenerPasswordStrength(t *testing.T) {
	for pass, ok := range map[string]bool{"x": false, "short-but-15chr": false, "sixteen-chars-ok": true, "$2a$10$abcdefghijklmnopqrstuv": true} {
		d, _, _ := doc()
		err := NewLoader("all", d).Load(nil, []string{"MAILPULSE_NATS_LISTEN=0.0.0.0:4222", "MAILPULSE_NATS_USER=u", "MAILPULSE_NATS_PASSWORD=" + pass})
		if (err == nil) != ok {
			t.Errorf("listener password %q: %v, want ok=%v", pass, err, ok)
		}
	}
}
