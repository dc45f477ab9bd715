package broker_test

import (
	"testing"

	"github.com/nats-io/nats.go"
	"golang.org/x/crypto/bcrypt"

	"github.com/mailpulse/mailpulse/shared/broker"
)

func TestTCPListenerRequiresCredentials(t *testing.T) {
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	s, err := broker.Start(broker.Config{StoreDir: t.TempDir(), Listen: "127.0.0.1:0", User: "ops", Password: string(hash)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)

	if s.ClientURL() == "" || s.Port() == 0 {
		t.Fatalf("no TCP listener: url %q port %d", s.ClientURL(), s.Port())
	}
	for _, tc := range []struct {
		name string
		opts []nats.Option
		ok   bool
	}{
		{"anonymous", nil, false},
		{"wrong password", []nats.Option{nats.UserInfo("ops", "guess")}, false},
		{"right password", []nats.Option{nats.UserInfo("ops", "s3cret")}, true},
	} {
		nc, err := nats.Connect(s.ClientURL(), tc.opts...)
		if (err == nil) != tc.ok {
			t.Errorf("%s: Connect error = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if nc != nil {
			nc.Close()
		}
	}
	nc, err := s.Connect()
	if err != nil {
		t.Fatalf("in-process Connect with a listener = %v", err)
	}
	nc.Close()
}

func TestInProcessOnly(t *testing.T) {
	s, err := broker.Start(broker.Config{StoreDir: t.TempDir()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown()
	if s.ClientURL() != "" {
		t.Errorf("ClientURL = %q without a listener", s.ClientURL())
	}
	nc, err := s.Connect()
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
	if _, err := broker.Start(broker.Config{StoreDir: t.TempDir(), Listen: "127.0.0.1:0"}, nil); err == nil {
		t.Error("Start accepted a listener without credentials")
	}
}
