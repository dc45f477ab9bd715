// Package pgtest gives tests a real PostgreSQL: the server named by MAILPULSE_TEST_POSTGRES
// (a connection string), or else a private server started for the test in its own
// directory, listening on a Unix socket only, and stopped when the test ends. When
// PostgreSQL is not installed it is installed with apt-get (as .ci/run does); when that is
// impossible the test fails and says why. It never skips.
package pgtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

var (
	once   sync.Once
	binDir string
	binErr string
	dbSeq  atomic.Int64
)

// binaries finds initdb and pg_ctl, installing PostgreSQL on first use when missing.
func binaries() (string, string) {
	once.Do(func() {
		find := func() string {
			matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
			if len(matches) > 0 {
				return filepath.Dir(matches[len(matches)-1])
			}
			return ""
		}
		if binDir = find(); binDir != "" {
			return
		}
		if os.Geteuid() != 0 {
			binErr = "PostgreSQL is not installed and this test is not root: run `apt-get install postgresql` (.ci/run does), or set MAILPULSE_TEST_POSTGRES"
			return
		}
		cmd := exec.Command("sh", "-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql")
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = "installing PostgreSQL failed: " + err.Error() + "\n" + string(out)
			return
		}
		if binDir = find(); binDir == "" {
			binErr = "PostgreSQL was installed but initdb is not in /usr/lib/postgresql/*/bin"
		}
	})
	return binDir, binErr
}

// Server returns a connection string to a PostgreSQL server for the test.
func Server(t *testing.T) string {
	t.Helper()
	if dsn := os.Getenv("MAILPULSE_TEST_POSTGRES"); dsn != "" {
		return dsn
	}
	return Start(t).DSN
}

// Instance is a private server that a test can stop and start again, to test what happens
// while the database is unavailable.
type Instance struct {
	DSN  string
	t    *testing.T
	run  func(name string, args ...string) *exec.Cmd
	data string
	opts string
	dir  string
}

// Stop stops the server (fast shutdown: open connections are cut).
func (p *Instance) Stop() {
	p.t.Helper()
	if out, err := p.run("pg_ctl", "-D", p.data, "-m", "fast", "-w", "stop").CombinedOutput(); err != nil {
		p.t.Fatalf("pg_ctl stop: %v\n%s", err, out)
	}
}

// Start starts a stopped server again, on the same data.
func (p *Instance) Start() {
	p.t.Helper()
	if out, err := p.run("pg_ctl", "-D", p.data, "-o", p.opts, "-l", filepath.Join(p.dir, "log"), "-w", "-t", "60", "start").CombinedOutput(); err != nil {
		p.t.Fatalf("pg_ctl start: %v\n%s", err, out)
	}
}

// Start starts a private server for the test, stopped when the test ends.
func Start(t *testing.T) *Instance {
	t.Helper()
	bin, msg := binaries()
	if bin == "" {
		t.Fatal(msg)
	}
	dir, err := os.MkdirTemp("", "mailpulse-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// The server refuses to run as root: run it as the postgres user, which must own its
	// directory.
	var run func(name string, args ...string) *exec.Cmd
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root needs the postgres user: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		run = func(name string, args ...string) *exec.Cmd {
			return exec.Command("runuser", append([]string{"-u", "postgres", "--", filepath.Join(bin, name)}, args...)...)
		}
	} else {
		run = func(name string, args ...string) *exec.Cmd { return exec.Command(filepath.Join(bin, name), args...) }
	}
	data := filepath.Join(dir, "data")
	if out, err := run("initdb", "-D", data, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	// Unix socket only (listen_addresses=''), in the test's directory; durability off: the
	// tests measure behaviour, not disks.
	opts := fmt.Sprintf("-c listen_addresses='' -c unix_socket_directories=%s -c fsync=off -c synchronous_commit=off -c full_page_writes=off", dir)
	if out, err := run("pg_ctl", "-D", data, "-o", opts, "-l", filepath.Join(dir, "log"), "-w", "-t", "60", "start").CombinedOutput(); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "log"))
		t.Fatalf("pg_ctl start: %v\n%s\n%s", err, out, log)
	}
	t.Cleanup(func() {
		// Stop it if it runs (a test may have stopped it).
		_ = run("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop").Run()
	})
	return &Instance{DSN: fmt.Sprintf("host=%s port=5432 user=postgres dbname=postgres sslmode=disable", dir), t: t, run: run, data: data, opts: opts, dir: dir}
}

// Database creates a fresh database on the server and returns its connection string.
func Database(t *testing.T, server string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, server)
	if err != nil {
		t.Fatalf("connect to PostgreSQL: %v", err)
	}
	defer conn.Close(ctx)
	name := fmt.Sprintf("mailpulse_test_%d_%d", os.Getpid(), dbSeq.Add(1))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create database: %v", err)
	}
	if strings.Contains(server, "dbname=") {
		return strings.Replace(server, "dbname=postgres", "dbname="+name, 1)
	}
	return server + " dbname=" + name
}
