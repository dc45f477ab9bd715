// Package httpservertest holds what the tests of HTTP-serving packages share.
package httpservertest

import (
	"fmt"
	"net/http"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// IgnoreLingering lists, for goleak, the goroutines fasthttp keeps beyond a stopped server:
// its worker pool's cleaner sleeps out its idle period (10 s) before it notices the stop,
// and one process-wide goroutine refreshes the Date header every second. They hold
// nothing and belong to no test.
func IgnoreLingering() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*workerPool).Start.func2"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"),
	}
}

// VerifyTestMain runs the tests, closes the idle keep-alive connections of
// http.DefaultClient (their goroutines would otherwise count as leaks), and fails the run
// if any other goroutine is left: goleak.VerifyTestMain for packages that serve HTTP.
func VerifyTestMain(m *testing.M, opts ...goleak.Option) {
	code := m.Run()
	http.DefaultClient.CloseIdleConnections()
	if code == 0 {
		if err := goleak.Find(append(IgnoreLingering(), opts...)...); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: goroutines left after the tests: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}
