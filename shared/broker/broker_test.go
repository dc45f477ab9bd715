package broker_test

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/crypto/bcrypt"

	"github.com/mailpulse/mailpulse/shared/broker"
	"github.com/mailpulse/mailpulse/shared/broker/brokertest"
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

// TestRestartKeepsStoreAndPort: brokertest's Restart brings the server back on the same
// store and TCP port, so tests of what survives a broker restart see the same broker.
func TestRestartKeepsStoreAndPort(t *testing.T) {
	s := brokertest.StartTCP(t)
	url, port := s.ClientURL(), s.Port()
	js, err := jetstream.New(s.Conn())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(t.Context(), jetstream.StreamConfig{Name: "KEPT", Subjects: []string{"kept.>"}, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(t.Context(), "kept.1", []byte("before the restart")); err != nil {
		t.Fatal(err)
	}

	s.Restart()

	if s.Port() != port || s.ClientURL() != url {
		t.Errorf("after Restart: port %d url %q, want %d and %q", s.Port(), s.ClientURL(), port, url)
	}
	nc, err := nats.Connect(url, nats.UserInfo(brokertest.User, brokertest.Password))
	if err != nil {
		t.Fatalf("Connect(%s) after Restart = %v", url, err)
	}
	defer nc.Close()
	js, err = jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(t.Context(), "KEPT")
	if err != nil {
		t.Fatalf("stream after Restart: %v", err)
	}
	m, err := stream.GetMsg(t.Context(), 1)
	if err != nil || string(m.Data) != "before the restart" {
		t.Errorf("GetMsg(1) after Restart = %v, want the message published before", err)
	} else if m.Subject != "kept.1" {
		t.Errorf("GetMsg(1).Subject = %q, want kept.1", m.Subject)
	}
}

// TestStartAfterShutdown: a server shut down by the test starts again with Start, and the
// in-process connection works on the new one.
func TestStartAfterShutdown(t *testing.T) {
	s := brokertest.Start(t)
	s.Shutdown()
	s.Start()
	nc := s.Conn()
	if err := nc.Flush(); err != nil {
		t.Errorf("Flush on the started-again server = %v", err)
	}
}

// With the listener on, the server holds no plaintext password: the in-process services
// sign with an nkey. It used to log "Plaintext passwords detected" at every start.
func TestNoPlaintextPasswordWarning(t *testing.T) {
	hash, _ := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	var logs bytes.Buffer
	s, err := broker.Start(broker.Config{StoreDir: t.TempDir(), Listen: "127.0.0.1:0", User: "ops", Password: string(hash)},
		slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	nc, err := s.Connect()
	if err != nil {
		t.Fatalf("in-process connection with the internal key: %v", err)
	}
	nc.Close()
	if strings.Contains(logs.String(), "Plaintext passwords detected") {
		t.Fatalf("the server warned about plaintext passwords:\n%s", logs.String())
	}
}
