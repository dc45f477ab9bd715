package apikey_test

import (
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailpulse/mailpulse/shared/apikey"
	"github.com/mailpulse/mailpulse/shared/broker/brokertest"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/poll"
)

func openTwo(t *testing.T) (*apikey.Store, *apikey.Store, jetstream.KeyValue) {
	t.Helper()
	s := brokertest.Start(t)
	js, err := jetstream.New(s.Conn())
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Provision(t.Context(), js, bus.Limits{}, nil); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(t.Context(), bus.BucketKeys)
	if err != nil {
		t.Fatal(err)
	}
	a, err := apikey.Open(t.Context(), kv, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := apikey.Open(t.Context(), kv, nil)
	if err != nil {
		t.Fatal(err)
	}
	return a, b, kv
}

func TestKeysAcrossReplicas(t *testing.T) {
	a, b, kv := openTwo(t)
	plain, k, err := a.Create(t.Context(), "ci", apikey.Viewer)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(plain, "mpk_"+k.ID+"_") {
		t.Errorf("key %q does not carry its id %q", plain, k.ID)
	}
	// Only the hash is stored.
	e, err := kv.Get(t.Context(), k.ID)
	if err != nil {
		t.Fatalf("kv.Get(%s) = %v", k.ID, err)
	}
	if strings.Contains(string(e.Value()), plain[len(plain)-20:]) {
		t.Error("the stored entry contains the key's secret")
	}
	if _, ok := a.Authenticate(plain, apikey.Viewer); !ok {
		t.Error("a new key does not authenticate on the replica that made it")
	}
	poll.Until(t, "the other replica to learn the key", func() bool { _, ok := b.Authenticate(plain, apikey.Viewer); return ok })
	if _, ok := b.Authenticate(plain, apikey.Ingest); ok {
		t.Error("a viewer key passed as an ingest key")
	}
	if _, ok := b.Authenticate(plain[:len(plain)-1]+"x", apikey.Viewer); ok {
		t.Error("a wrong key authenticated")
	}
	if err := a.Revoke(t.Context(), k.ID); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "the revocation to reach the other replica", func() bool { _, ok := b.Authenticate(plain); return !ok })
}

func TestBootstrap(t *testing.T) {
	a, b, _ := openTwo(t)
	plain, err := a.Bootstrap(t.Context(), apikey.Admin, "")
	if err != nil || plain == "" {
		t.Fatalf("first Bootstrap = %q, %v; want a generated key", plain, err)
	}
	again, err := a.Bootstrap(t.Context(), apikey.Admin, "")
	if err != nil || again != "" {
		t.Errorf("second Bootstrap = %q, %v; want nothing new", again, err)
	}
	poll.Until(t, "replica to see the admin key", func() bool { _, ok := b.Authenticate(plain, apikey.Ingest); return ok })
	// A fixed key from the configuration, and its replacement.
	if _, err := a.Bootstrap(t.Context(), apikey.Ingest, "fixed-ingest-key-0123"); err != nil {
		t.Fatal(err)
	}
	if _, ok := a.Authenticate("fixed-ingest-key-0123", apikey.Ingest); !ok {
		t.Error("fixed key does not authenticate")
	}
	if _, ok := a.Authenticate("fixed-ingest-key-0123", apikey.Admin); ok {
		t.Error("fixed ingest key passed as admin")
	}
	if _, err := a.Bootstrap(t.Context(), apikey.Ingest, "fixed-ingest-key-4567"); err != nil {
		t.Fatal(err)
	}
	if _, ok := a.Authenticate("fixed-ingest-key-0123", apikey.Ingest); ok {
		t.Error("the replaced fixed key still works")
	}
	for _, bad := range []string{"", "mpk_", "mpk_x_y", strings.Repeat("a", 1000)} {
		if _, ok := a.Authenticate(bad); ok {
			t.Errorf("Authenticate(%q) succeeded", bad)
		}
	}
	if _, _, err := a.Create(t.Context(), "x", "root"); err == nil {
		t.Error("Create accepted an unknown role")
	}
}
