package pull

import (
	"sync"
	"testing"
	"time"

	"github.com/molecule-ai/pull-agent/agent/engine"
)

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func TestPullMonitor(t *testing.T) {
	to := PullTimeouts{Begin: 10 * time.Second, Stall: 5 * time.Second, Extract: 60 * time.Second}
	t.Run("nothing from the daemon", func(t *testing.T) {
		c := &fakeClock{t: time.Unix(0, 0)}
		m := newPullMonitor(c.now, to)
		c.add(9 * time.Second)
		if why := m.check(); why != "" {
			t.Fatalf("stalled early: %s", why)
		}
		c.add(2 * time.Second)
		if m.check() == "" {
			t.Fatal("no begin timeout")
		}
	})
	t.Run("bytes keep it alive, their absence stalls it", func(t *testing.T) {
		c := &fakeClock{t: time.Unix(0, 0)}
		m := newPullMonitor(c.now, to)
		for i := range 10 {
			c.add(4 * time.Second)
			m.message(engine.Progress{Phase: engine.PhaseDownloading, Current: int64(i+1) * 100})
			if why := m.check(); why != "" {
				t.Fatalf("stalled while bytes flow: %s", why)
			}
		}
		// Messages without new bytes do not count as progress.
		for range 2 {
			c.add(3 * time.Second)
			m.message(engine.Progress{Phase: engine.PhaseDownloading, Current: 1000})
		}
		if m.check() == "" {
			t.Fatal("6 s without new bytes is not a stall")
		}
	})
	t.Run("a long extraction is judged by its own timeout", func(t *testing.T) {
		c := &fakeClock{t: time.Unix(0, 0)}
		m := newPullMonitor(c.now, to)
		m.message(engine.Progress{Phase: engine.PhaseDownloading, Current: 100})
		m.message(engine.Progress{Phase: engine.PhaseExtracting, Current: 100})
		for range 10 {
			c.add(30 * time.Second)
			m.message(engine.Progress{Phase: engine.PhaseExtracting, Current: 100})
			if why := m.check(); why != "" {
				t.Fatalf("extraction judged as a stall: %s", why)
			}
		}
		c.add(61 * time.Second)
		if m.check() == "" {
			t.Fatal("a silent extraction never times out")
		}
	})
}
