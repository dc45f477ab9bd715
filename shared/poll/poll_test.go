package poll

import (
	"sync/atomic"
	"testing"
	"time"
)

func TestWaitReturnsOnceTheConditionHolds(t *testing.T) {
	var n atomic.Int32
	go func() {
		for i := 0; i < 3; i++ {
			n.Add(1)
		}
	}()
	if !Wait(5*time.Second, func() bool { return n.Load() == 3 }) {
		t.Fatalf("Wait = false, want true once the counter reaches 3")
	}
}

func TestWaitGivesUp(t *testing.T) {
	if Wait(30*time.Millisecond, func() bool { return false }) {
		t.Fatalf("Wait = true for a condition that never holds")
	}
}
