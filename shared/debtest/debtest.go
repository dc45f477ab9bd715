// Package debtest finds the command-line tools tests run for real (promtool, curl…), from
// Debian's packages. When a tool is missing and the test runs as root (as .ci/run does), its
// package is installed with apt-get; otherwise the test fails and says what to install. It
// never skips.
package debtest

import (
	"os"
	"os/exec"
	"sync"
	"testing"
)

var (
	mu    sync.Mutex
	found = map[string]string{} // command -> path, or "" after a failed install
	why   = map[string]string{}
)

// Command returns the path of name, installing the Debian package pkg that provides it when
// it is missing.
func Command(t testing.TB, name, pkg string) string {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if p, ok := found[name]; ok {
		if p == "" {
			t.Fatal(why[name])
		}
		return p
	}
	p, msg := locate(name, pkg)
	found[name], why[name] = p, msg
	if p == "" {
		t.Fatal(msg)
	}
	return p
}

func locate(name, pkg string) (string, string) {
	if p, err := exec.LookPath(name); err == nil {
		return p, ""
	}
	if os.Geteuid() != 0 {
		return "", name + " is not installed and this test is not root: run `apt-get install " + pkg + "` (.ci/run does)"
	}
	cmd := exec.Command("sh", "-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "+pkg)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", "installing " + pkg + " failed: " + err.Error() + "\n" + string(out)
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, ""
	}
	return "", pkg + " was installed but " + name + " is not on PATH"
}
