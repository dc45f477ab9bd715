// Package broker runs the embedded NATS server with JetStream that mailpulse uses in its
// monolithic mode and in tests: a file store in the data dir, in-process connections for the
// services of the same process, and an optional TCP listener with credentials for other
// processes and the nats CLI.
package broker

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// Config configures the embedded server.
type Config struct {
	// StoreDir holds the JetStream file store; it survives restarts.
	StoreDir string
	// Listen is an optional TCP address ("127.0.0.1:4222", or port 0 for any free port).
	// Empty means in-process connections only: nothing outside the process can connect.
	Listen string
	// User and Password are the credentials the TCP listener requires. Password should be a
	// bcrypt hash ($2a$…), which the server compares against the plain password clients
	// send; a plaintext one works, and the server warns about it.
	User, Password string
	// MaxStore bounds the JetStream file store in bytes (0: the server's default, a share of
	// the disk).
	MaxStore int64
	// Name identifies the server in logs and monitoring.
	Name string
	// ReadyTimeout bounds how long Start waits for the server (default 30 s).
	ReadyTimeout time.Duration
}

// Server is a running embedded NATS server.
type Server struct {
	ns       *server.Server
	internal nkeys.KeyPair // the in-process services' identity, when the listener needs auth
}

// Start starts the server and waits until it accepts connections.
func Start(cfg Config, log *slog.Logger) (*Server, error) {
	if cfg.StoreDir == "" {
		return nil, errors.New("broker: StoreDir is required")
	}
	if cfg.Listen != "" && (cfg.User == "" || cfg.Password == "") {
		return nil, errors.New("broker: a TCP listener requires a user and a password")
	}
	opts := &server.Options{
		ServerName:            cfg.Name,
		JetStream:             true,
		StoreDir:              cfg.StoreDir,
		JetStreamMaxStore:     cfg.MaxStore,
		NoSigs:                true, // signals belong to main
		DontListen:            cfg.Listen == "",
		MaxPayload:            8 << 20,
		DisableShortFirstPing: true,
	}
	s := &Server{}
	if cfg.Listen != "" {
		host, port, err := net.SplitHostPort(cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("broker: listen address %q: %w", cfg.Listen, err)
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, fmt.Errorf("broker: listen port %q: %w", port, err)
		}
		if p == 0 {
			p = server.RANDOM_PORT
		}
		opts.Host, opts.Port = host, p
		// The services of this process authenticate with an nkey that never leaves it: a
		// signature, not a password, so the server holds no plaintext secret (it warns of
		// plaintext passwords, and rightly).
		kp, err := nkeys.CreateUser()
		if err != nil {
			return nil, fmt.Errorf("broker: internal key: %w", err)
		}
		pub, err := kp.PublicKey()
		if err != nil {
			return nil, fmt.Errorf("broker: internal key: %w", err)
		}
		s.internal = kp
		opts.Nkeys = []*server.NkeyUser{{Nkey: pub}}
		opts.Users = []*server.User{{Username: cfg.User, Password: cfg.Password}}
	}
	if cfg.Listen != "" && !strings.HasSuffix(cfg.Listen, ":0") {
		// The server only logs a busy port and then never becomes ready: say so at once.
		ln, err := net.Listen("tcp", cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("broker: listen on %s: %w", cfg.Listen, err)
		}
		ln.Close()
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	if log != nil {
		ns.SetLoggerV2(slogAdapter{log.With("component", "nats-server")}, false, false, false)
	}
	ns.Start()
	wait := cfg.ReadyTimeout
	if wait == 0 {
		wait = 30 * time.Second
	}
	if !ns.ReadyForConnections(wait) {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil, fmt.Errorf("broker: not ready after %s (store %s)", wait, cfg.StoreDir)
	}
	s.ns = ns
	return s, nil
}

// Connect opens an in-process connection (no TCP): the fastest way for the services of this
// process. The options given come after mailpulse's own.
func (s *Server) Connect(opts ...nats.Option) (*nats.Conn, error) {
	base := []nats.Option{nats.InProcessServer(s.ns)}
	if s.internal != nil {
		pub, _ := s.internal.PublicKey()
		base = append(base, nats.Nkey(pub, s.internal.Sign))
	}
	nc, err := nats.Connect("", append(base, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("broker: connect in-process: %w", err)
	}
	return nc, nil
}

// ClientURL is the nats:// URL of the TCP listener, or "" without one.
func (s *Server) ClientURL() string {
	if s.ns.Addr() == nil {
		return ""
	}
	return s.ns.ClientURL()
}

// Port is the TCP listener's port, or 0 without one.
func (s *Server) Port() int {
	if a, ok := s.ns.Addr().(*net.TCPAddr); ok {
		return a.Port
	}
	return 0
}

// Shutdown stops the server, closing every client connection, and waits until the store is
// closed. It is safe to call more than once.
func (s *Server) Shutdown() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
}

// slogAdapter sends the server's log to slog. Its notices (a banner of a dozen lines at
// every start) are Debug, so that mailpulse's own start-up message stands out; traces are
// dropped.
type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) Noticef(f string, v ...any) { a.l.Debug(fmt.Sprintf(f, v...)) }
func (a slogAdapter) Warnf(f string, v ...any)   { a.l.Warn(fmt.Sprintf(f, v...)) }
func (a slogAdapter) Fatalf(f string, v ...any)  { a.l.Error(fmt.Sprintf(f, v...)) }
func (a slogAdapter) Errorf(f string, v ...any)  { a.l.Error(fmt.Sprintf(f, v...)) }
func (a slogAdapter) Debugf(f string, v ...any)  { a.l.Debug(fmt.Sprintf(f, v...)) }
func (a slogAdapter) Tracef(string, ...any)      {}
