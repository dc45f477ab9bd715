// Package brokertest starts real embedded NATS servers for tests: one per test, with its
// store in the test's temporary directory, shut down when the test ends.
package brokertest

import (
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/mailpulse/mailpulse/shared/broker"
	"github.com/mailpulse/mailpulse/shared/poll"
)

// Credentials of the TCP listener of servers started with TCP.
const (
	User     = "test"
	Password = "test-password"
)

// restartWithin bounds how long Start keeps trying to start a server again.
const restartWithin = 10 * time.Second

// Server is a test's embedded server. It can be stopped and started again on the same
// store and port, to test what survives a broker restart.
type Server struct {
	*broker.Server
	t   testing.TB
	cfg broker.Config
}

// Start starts an in-process-only server.
func Start(t testing.TB) *Server {
	t.Helper()
	return start(t, broker.Config{StoreDir: t.TempDir(), Name: "test"})
}

// StartTCP starts a server that also listens on a free loopback port, with User and
// Password, as an external NATS would.
func StartTCP(t testing.TB) *Server {
	t.Helper()
	return start(t, broker.Config{StoreDir: t.TempDir(), Listen: "127.0.0.1:0", User: User, Password: Password, Name: "test"})
}

func start(t testing.TB, cfg broker.Config) *Server {
	t.Helper()
	s, err := broker.Start(cfg, nil)
	if err != nil {
		t.Fatalf("start embedded NATS: %v", err)
	}
	if cfg.Listen != "" {
		cfg.Listen = "127.0.0.1:" + strconv.Itoa(s.Port()) // keep the port across restarts
	}
	ts := &Server{Server: s, t: t, cfg: cfg}
	t.Cleanup(func() { ts.Server.Shutdown() })
	return ts
}

// Restart shuts the server down and starts it again on the same store and port.
func (s *Server) Restart() {
	s.t.Helper()
	s.Server.Shutdown()
	s.Start()
}

// Start starts a server that was shut down, on the same store and port.
func (s *Server) Start() {
	s.t.Helper()
	var err error
	// The port can stay busy for a moment after a shutdown: try again for a while.
	started := poll.Wait(restartWithin, func() bool {
		var ns *broker.Server
		if ns, err = broker.Start(s.cfg, nil); err != nil {
			return false
		}
		s.Server = ns
		return true
	})
	if !started {
		s.t.Fatalf("restart embedded NATS: %v", err)
	}
}

// Conn opens an in-process connection closed at the end of the test.
func (s *Server) Conn(opts ...nats.Option) *nats.Conn {
	s.t.Helper()
	nc, err := s.Connect(opts...)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(nc.Close)
	return nc
}
