// Package poll waits in tests for a condition to hold, checking it again and again until a
// deadline: the way tests here synchronise with asynchronous work, instead of sleeping for
// a guessed time.
package poll

import (
	"testing"
	"time"
)

// Default bounds how long Until waits. It is generous because the race detector and a
// busy two-core machine slow everything down; a condition that holds returns at once.
const Default = 20 * time.Second

// interval is the pause between two checks: short enough not to slow tests, long enough
// not to burn a core that the code under test needs.
const interval = 10 * time.Millisecond

// Until checks cond until it returns true, and fails the test (naming what) if it has not
// within Default.
func Until(t testing.TB, what string, cond func() bool) {
	t.Helper()
	Within(t, Default, what, cond)
}

// Within is Until with its own deadline.
func Within(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if !Wait(d, cond) {
		t.Fatalf("gave up after %s waiting for %s", d, what)
	}
}

// Wait checks cond until it returns true or d has passed, and reports whether it held. It
// does not fail the test, for callers that must clean up or explain first.
func Wait(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval)
	}
}
