package webhooker_test

import (
	"strings"
	"testing"

	"github.com/mailpulse/mailpulse/services/webhooker"
	"github.com/mailpulse/mailpulse/shared/config"
)

func TestConfigFromEnvironment(t *testing.T) {
	cfg := webhooker.DefaultConfig()
	doc := &config.Document{}
	doc.Add("webhooker", &cfg)
	err := config.NewLoader("webhooker", doc).Load(nil, []string{
		"MAILPULSE_WEBHOOKER_ALLOW_NETWORKS=10.0.0.0/8, fd00::/8",
		"MAILPULSE_WEBHOOKER_MAX_ENDPOINTS=50",
	})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := cfg.AllowNetworks.MarshalText(); string(b) != "10.0.0.0/8,fd00::/8" || cfg.MaxEndpoints != 50 {
		t.Errorf("loaded %s, %d", b, cfg.MaxEndpoints)
	}
}

func TestConfigReportsEveryProblem(t *testing.T) {
	cfg := webhooker.DefaultConfig()
	doc := &config.Document{}
	doc.Add("webhooker", &cfg)
	err := config.NewLoader("webhooker", doc).Load(nil, []string{
		"MAILPULSE_WEBHOOKER_ALLOW_NETWORKS=10.0.0.0/8,everything",
		"MAILPULSE_WEBHOOKER_MAX_ENDPOINTS=0",
		"MAILPULSE_WEBHOOKER_MAX_REQUEST_BYTES=1000",
	})
	for _, want := range []string{"allow_networks", `"everything"`, "max_endpoints", "max_request_bytes"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Load = %v, want it to name %s", err, want)
		}
	}
}
