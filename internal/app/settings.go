package app

import (
	"slices"
	"strings"

	"github.com/mailpulse/mailpulse/services/archiver"
	livegateway "github.com/mailpulse/mailpulse/services/live-gateway"
	"github.com/mailpulse/mailpulse/services/producer"
	"github.com/mailpulse/mailpulse/services/webhooker"
	"github.com/mailpulse/mailpulse/shared/config"
)

// Settings is the configuration of one process: the part every role shares, and each
// service's own section, declared by the service itself. Loading fills these in place.
type Settings struct {
	Process   config.Process
	Producer  producer.Config
	Gateway   livegateway.Config
	Archiver  archiver.Config
	Webhooker webhooker.Config

	doc *config.Document
}

// NewSettings returns the defaults, composed into one document: the producer's keys stand
// at the top level (ingest_addr, ingest.*, stalwart.*…), the others under their names.
func NewSettings() *Settings {
	s := &Settings{
		Process:   config.DefaultProcess(),
		Producer:  producer.DefaultConfig(),
		Gateway:   livegateway.DefaultConfig(),
		Archiver:  archiver.DefaultConfig(),
		Webhooker: webhooker.DefaultConfig(),
	}
	s.doc = &config.Document{}
	s.doc.Add("", &s.Process)
	s.doc.Add("", &s.Producer, "all", "producer")
	s.doc.Add("gateway", &s.Gateway, "all", "live-gateway")
	s.doc.Add("archiver", &s.Archiver, "all", "archiver")
	// The gateway serves the webhooks API, which checks endpoints against allow_networks.
	s.doc.Add("webhooker", &s.Webhooker, "all", "webhooker", "live-gateway")
	s.doc.Rule(func(role string) error {
		if role == "all" && s.Gateway.Addr == s.Producer.Addr && !strings.HasSuffix(s.Gateway.Addr, ":0") {
			return config.Problem("http_addr", "must differ from ingest_addr in all mode")
		}
		return nil
	})
	return s
}

// Document is the composed document, for a config.Loader.
func (s *Settings) Document() *config.Document { return s.doc }

// Redacted is what the start-up log shows: the settings that differ from the defaults,
// secrets masked.
func (s *Settings) Redacted() map[string]string { return s.doc.Redacted() }

// Load is NewSettings then a Loader for role: the usual way to get a role's settings.
func Load(role string, args, environ []string) (*Settings, *config.Loader, error) {
	s := NewSettings()
	l := config.NewLoader(role, s.doc)
	return s, l, l.Load(args, environ)
}

// roles are the roles this version runs.
var roles = []string{"all", "producer", "live-gateway", "archiver", "webhooker"}

func runs(role, service string) bool { return role == "all" || role == service }

func known(role string) bool { return slices.Contains(roles, role) }
