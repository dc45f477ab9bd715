// Package browsertest gives tests a real headless Chromium, driven with chromedp. A test
// that needs the browser gets it: when Chromium is missing, it is installed with apt-get
// (as .ci/run does); when that is impossible the test fails and says why. It never skips.
package browsertest

import (
	"context"
	"os"
	"os/exec"
	"sync"
	"testing"

	"github.com/chromedp/chromedp"
)

var (
	once    sync.Once
	path    string
	findErr string
)

// chromium finds the browser, installing it on first use when it is missing.
func chromium() (string, string) {
	once.Do(func() {
		for _, p := range []string{"chromium", "chromium-browser", "google-chrome"} {
			if found, err := exec.LookPath(p); err == nil {
				path = found
				return
			}
		}
		if os.Geteuid() != 0 {
			findErr = "Chromium is not installed and this test is not root: run `apt-get install chromium` (.ci/run does)"
			return
		}
		cmd := exec.Command("sh", "-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium")
		if out, err := cmd.CombinedOutput(); err != nil {
			findErr = "installing Chromium failed: " + err.Error() + "\n" + string(out)
			return
		}
		if found, err := exec.LookPath("chromium"); err == nil {
			path = found
			return
		}
		findErr = "Chromium was installed but is not on PATH"
	})
	return path, findErr
}

// New starts a headless Chromium for the test and returns a chromedp context on a blank
// tab; the browser is closed when the test ends.
func New(t *testing.T) context.Context {
	t.Helper()
	p, msg := chromium()
	if p == "" {
		t.Fatal(msg)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(p),
		chromedp.NoSandbox, // tests run as root in CI
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	bctx, cancelBrowser := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelBrowser(); cancelAlloc() })
	// Start the browser now, so a failure is reported here. (The first Run owns the
	// browser: its context must be the tab's, not a shorter one.)
	if err := chromedp.Run(bctx); err != nil {
		t.Fatalf("start Chromium %s: %v", p, err)
	}
	return bctx
}
