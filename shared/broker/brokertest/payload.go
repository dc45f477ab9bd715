package brokertest

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// StartMaxPayload starts an in-process JetStream server whose largest message is maxPayload
// bytes (a default NATS allows 1 MiB, the embedded broker 8 MiB), for tests of what is too
// large for one message, and returns a connection to it. Both end with the test.
func StartMaxPayload(t testing.TB, maxPayload int32) *nats.Conn {
	t.Helper()
	ns, err := server.NewServer(&server.Options{JetStream: true, StoreDir: t.TempDir(), NoSigs: true, DontListen: true, MaxPayload: maxPayload, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS not ready")
	}
	nc, err := nats.Connect("", nats.InProcessServer(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}
