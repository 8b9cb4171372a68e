package pull

import (
	"context"
	"fmt"
	"github.com/molecule-ai/pull-agent/agent/engine"
	"sync"
	"time"
)

// pullMonitor watches one pull's stream and cancels the pull when it stops
// making progress: no first message within Begin, no new bytes within Stall
// while resolving or downloading, no message within Extract while
// extracting.
type pullMonitor struct {
	now func() time.Time
	t   PullTimeouts

	mu        sync.Mutex
	start     time.Time
	started   bool // a first message arrived
	phase     engine.Phase
	bytes     int64
	lastBytes time.Time // last time bytes grew (or the phase changed)
	lastMsg   time.Time
}

func newPullMonitor(now func() time.Time, t PullTimeouts) *pullMonitor {
	n := now()
	return &pullMonitor{now: now, t: t, start: n, lastBytes: n, lastMsg: n, phase: engine.PhaseResolving}
}

// message records a stream message and the progress after it.
func (m *pullMonitor) message(p engine.Progress) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := m.now()
	m.started = true
	m.lastMsg = n
	if p.Current > m.bytes || p.Phase != m.phase {
		m.bytes, m.phase, m.lastBytes = p.Current, p.Phase, n
	}
}

// check returns why the pull is stalled, or "".
func (m *pullMonitor) check() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := m.now()
	switch {
	case !m.started:
		if m.t.Begin > 0 && n.Sub(m.start) > m.t.Begin {
			return fmt.Sprintf("the daemon sent nothing for %s after the pull began", m.t.Begin)
		}
	case m.phase == engine.PhaseExtracting:
		if m.t.Extract > 0 && n.Sub(m.lastMsg) > m.t.Extract {
			return fmt.Sprintf("extraction sent nothing for %s", m.t.Extract)
		}
	default:
		if m.t.Stall > 0 && n.Sub(m.lastBytes) > m.t.Stall {
			return fmt.Sprintf("no new bytes for %s (%d downloaded)", m.t.Stall, m.bytes)
		}
	}
	return ""
}

// watch checks the pull periodically until stop is called, cancelling it
// with a *stallError when check says so.
func (m *pullMonitor) watch(ctx context.Context, cancel context.CancelCauseFunc) (stop func()) {
	shortest := time.Duration(0)
	for _, d := range []time.Duration{m.t.Begin, m.t.Stall, m.t.Extract} {
		if d > 0 && (shortest == 0 || d < shortest) {
			shortest = d
		}
	}
	if shortest == 0 {
		return func() {}
	}
	tick := min(max(shortest/10, 10*time.Millisecond), time.Second)
	done := make(chan struct{})
	var once sync.Once
	go func() {
		t := time.NewTicker(tick)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				if why := m.check(); why != "" {
					cancel(&stallError{What: why})
					return
				}
			}
		}
	}()
	return func() { once.Do(func() { close(done) }) }
}
