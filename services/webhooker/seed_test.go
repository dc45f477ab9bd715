package webhooker_test

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailpulse/mailpulse/services/webhooker"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/config"
)

var seedSecret = "whsec_" + base64.StdEncoding.EncodeToString([]byte("a seeded secret of 32 bytes!!!!!"))

// loadFile loads the webhooker's settings from a TOML file, as mailpulse --config does.
func loadFile(t *testing.T, toml string) (webhooker.Config, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "mailpulse.toml")
	if err := os.WriteFile(path, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := webhooker.DefaultConfig()
	doc := &config.Document{}
	doc.Add("webhooker", &cfg)
	err := config.NewLoader("webhooker", doc).Load([]string{"--config", path}, nil)
	return cfg, err
}

const seedFile = `
[webhooker]
allow_networks = ["127.0.0.0/8"]

[[webhooker.endpoints]]
id = "siem"
description = "the SIEM"
url = "http://127.0.0.1:9/siem"
types = ["auth.*", "security.*"]
minLevel = "warn"
secret = "SECRET"
batch = { maxEvents = 50, maxWait = "500ms" }
retry = { schedule = ["1s", "1m"], maxAge = "24h" }
start = 2026-01-01T00:00:00Z

[[webhooker.endpoints]]
id = "chat"
url = "http://127.0.0.1:9/chat"
types = ["*"]
format = "stalwart"
secret = "stalwart-key"
headers = { X-Team = "mail" }
timeout = 5000
paused = true
`

func TestEndpointsAreSeededFromTheConfigFile(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	cfg, err := loadFile(t, strings.ReplaceAll(seedFile, "SECRET", seedSecret))
	if err != nil {
		t.Fatal(err)
	}
	open := func() *webhooker.Endpoints {
		t.Helper()
		eps, err := webhooker.OpenEndpoints(t.Context(), h.js, cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		return eps
	}
	eps := open()
	siem, ok := eps.Get("siem")
	if !ok || siem.URL != "http://127.0.0.1:9/siem" || siem.Description != "the SIEM" || siem.MinLevel != "warn" || len(siem.Secrets) != 1 || siem.Secrets[0] != seedSecret ||
		siem.Batch.MaxEvents != 50 || siem.Batch.MaxWait.D() != 500*time.Millisecond || len(siem.Retry.Schedule) != 2 || siem.Retry.MaxAge.D() != 24*time.Hour ||
		siem.Start != "2026-01-01T00:00:00Z" || siem.Timeout.D() != webhooker.DefaultTimeout || siem.Paused {
		t.Errorf("seeded siem: %+v", siem)
	}
	chat, ok := eps.Get("chat")
	if !ok || chat.Format != webhooker.FormatStalwart || chat.Secrets[0] != "stalwart-key" || chat.Headers["X-Team"] != "mail" || chat.Timeout.D() != 5*time.Second || !chat.Paused {
		t.Errorf("seeded chat: %+v", chat)
	}
	kv, err := h.js.KeyValue(t.Context(), bus.BucketWebhooks)
	if err != nil {
		t.Fatal(err)
	}
	revision := func(id string) uint64 {
		t.Helper()
		e, err := kv.Get(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		return e.Revision()
	}
	first := revision("siem")

	// The same file again: nothing is written.
	open()
	if r := revision("siem"); r != first {
		t.Errorf("an unchanged seed was written again: revision %d → %d", first, r)
	}

	// A changed file: the definition is replaced, the state (paused through the API) and
	// the creation time are kept.
	if _, err := eps.SetPaused(t.Context(), "siem", true); err != nil {
		t.Fatal(err)
	}
	cfg.Endpoints[0]["url"] = "http://127.0.0.1:9/siem-v2"
	again := open()
	if e, _ := again.Get("siem"); e.URL != "http://127.0.0.1:9/siem-v2" || !e.Paused || !e.CreatedAt.Equal(siem.CreatedAt) || !e.UpdatedAt.After(siem.UpdatedAt) {
		t.Errorf("after a change in the file: %+v", e)
	}

	// Replicas starting together with a new endpoint: one creates it, the others find it.
	cfg.Endpoints = append(cfg.Endpoints, webhooker.EndpointSeed{"id": "together", "url": "http://127.0.0.1:9/t", "types": []any{"*"}, "secret": seedSecret})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := webhooker.OpenEndpoints(t.Context(), h.js, cfg, nil); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	hist, err := kv.History(t.Context(), "together")
	if err != nil || len(hist) != 1 || hist[0].Operation() != jetstream.KeyValuePut {
		t.Errorf("history of an endpoint seeded by 4 replicas at once: %d entries (%v), want 1", len(hist), err)
	}
}

func TestSeedProblemsAreReportedAtLoad(t *testing.T) {
	t.Parallel()
	_, err := loadFile(t, `
[[webhooker.endpoints]]
url = "ftp://h.example/"
types = ["*"]

[[webhooker.endpoints]]
id = "dup"
url = "https://h.example/"
types = ["*"]
secret = "hunter2"

[[webhooker.endpoints]]
id = "dup"
url = "https://h.example/"
types = ["*"]
secret = "`+seedSecret+`"
evnets = ["x"]

[[webhooker.endpoints]]
id = "Bad_Id"
url = "http://10.0.0.1/"
types = ["*"]
secret = "`+seedSecret+`"
batch = { maxEvents = 0, maxWait = "soon" }
`)
	if err == nil {
		t.Fatal("Load accepted bad endpoints")
	}
	for _, want := range []string{
		"webhooker.endpoints[0]: id: required", "webhooker.endpoints[0]: secret: required", `webhooker.endpoints[0]: url: scheme "ftp"`,
		"webhooker.endpoints[1]: secrets[0]: a Standard Webhooks secret starts with whsec_\n",
		`webhooker.endpoints[2]: json: unknown field "evnets"`,
		`webhooker.endpoints[3]: id: "Bad_Id"`, "webhooker.endpoints[3]: url: destination address not allowed: 10.0.0.1 is a private address", "webhooker.endpoints[3]: batch.maxWait: not a duration",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Load error:\n%v\nmissing %q", err, want)
		}
	}
}

func TestADuplicateSeedIDIsRefused(t *testing.T) {
	t.Parallel()
	_, err := loadFile(t, `
[[webhooker.endpoints]]
id = "twice"
url = "https://h.example/a"
types = ["*"]
secret = "`+seedSecret+`"

[[webhooker.endpoints]]
id = "twice"
url = "https://h.example/b"
types = ["*"]
secret = "`+seedSecret+`"
`)
	if err == nil || !strings.Contains(err.Error(), `webhooker.endpoints[1]: id "twice": endpoints[0] has it too`) {
		t.Errorf("Load = %v, want the duplicate id named", err)
	}
}
