// Package httpservertest holds what the tests of HTTP-serving packages share.
package httpservertest

import "go.uber.org/goleak"

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
