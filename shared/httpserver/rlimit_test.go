//go:build linux

package httpserver_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/mailpulse/mailpulse/shared/debtest"
	"github.com/mailpulse/mailpulse/shared/httpserver"
	"github.com/mailpulse/mailpulse/shared/poll"
)

// helperEnv makes the test binary a helper process, run under prlimit by the tests below:
// the file limit of the test process itself cannot be lowered safely.
const helperEnv = "MAILPULSE_HTTPSERVER_HELPER"

// TestHelperProcess is not a test: as a helper process it serves /healthz on a loopback
// port it prints, until its stdin closes ("serve"), or raises its file limit and prints it
// ("raise").
func TestHelperProcess(t *testing.T) {
	switch os.Getenv(helperEnv) {
	case "raise":
		n, err := httpserver.RaiseFileLimit()
		fmt.Printf("limit=%d err=%v\n", n, err)
	case "serve":
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		app := httpserver.New(httpserver.Config{Name: "helper"})
		app.Get("/healthz", func(c *fiber.Ctx) error { return c.SendString("ok\n") })
		log := slog.New(slog.NewTextHandler(os.Stderr, nil))
		// A cap far above the file limit: accept itself runs out of descriptors.
		l := httpserver.NewListener(ln, httpserver.ListenerConfig{Name: "helper", MaxConns: 10_000, MaxConnsPerIP: 10_000, Log: log})
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			cancel()
		}()
		fmt.Printf("addr=%s\n", ln.Addr())
		if err := httpserver.Serve(ctx, app, l, 5*time.Second, nil); err != nil {
			t.Fatalf("Serve = %v", err)
		}
	}
}

// syncBuffer is a bytes.Buffer written by a process's output copier and read by a test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func helper(t *testing.T, mode, nofile string) (*exec.Cmd, *bufio.Reader, io.WriteCloser, *syncBuffer) {
	t.Helper()
	prlimit := debtest.Command(t, "prlimit", "util-linux") // never skipped: installed when missing
	cmd := exec.Command(prlimit, "--nofile="+nofile, os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, bufio.NewReader(stdout), stdin, stderr
}

// The soft file limit is raised to the hard one.
func TestRaiseFileLimit(t *testing.T) {
	cmd, out, stdin, stderr := helper(t, "raise", "64:4096")
	stdin.Close()
	line, _ := out.ReadString('\n')
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper: %v\n%s", err, stderr)
	}
	if strings.TrimSpace(line) != "limit=4096 err=<nil>" {
		t.Fatalf("RaiseFileLimit under a 64:4096 limit printed %q, want limit=4096", line)
	}
}

// Under a file limit of 64, far more connections than it allows: accept fails with "too
// many open files" for real, the server keeps running, and /healthz answers once the
// connections go (issue 9 #1: Fiber's Listener used to return, stopping everything).
func TestServesUnderASmallFileLimit(t *testing.T) {
	cmd, out, stdin, stderr := helper(t, "serve", "64:64")
	exited := make(chan error, 1)
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			stdin.Close()
			select {
			case err := <-exited:
				if err != nil {
					t.Errorf("helper: %v\n%s", err, stderr)
				}
			case <-time.After(20 * time.Second):
				_ = cmd.Process.Kill()
				t.Errorf("helper did not stop\n%s", stderr)
			}
		}
	}
	line, err := out.ReadString('\n')
	go func() { exited <- cmd.Wait() }()
	defer stop()
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "addr=")
	if err != nil || !ok {
		t.Fatalf("helper printed %q (%v)\n%s", line, err, stderr)
	}
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 150 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	poll.Until(t, "accept to run out of descriptors", func() bool { return strings.Contains(stderr.String(), "too many open files") })
	select {
	case err := <-exited:
		t.Fatalf("the server exited out of descriptors: %v\n%s", err, stderr)
	default:
	}
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	poll.Until(t, "/healthz to answer once the connections go", func() bool {
		resp, err := client.Get("http://" + addr + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	stop()
	if !strings.Contains(stderr.String(), "accept recovered") {
		t.Errorf("no recovery logged:\n%s", stderr)
	}
}
