package testbed

import (
	"testing"
	"time"
)

// WaitFor returns as soon as cond holds, polling it (every few ms at first,
// then every 50 ms), and fails t with what it was waiting for when cond
// does not hold within timeout. cond runs on the test's goroutine, so it
// may call t.Fatal itself (to stop early when waiting has become
// pointless, such as when the process under test exited).
func WaitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	if !Poll(timeout, cond) {
		t.Fatalf("timed out after %s waiting for %s", timeout, what)
	}
}

// Poll is WaitFor for a caller that has more to say on a timeout: it
// reports whether cond held within timeout.
func Poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for pause := 2 * time.Millisecond; !cond(); pause = min(2*pause, 50*time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pause)
	}
	return true
}
