package agent

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/state"
)

const (
	spreadTo = "r.test/b"
	spread   = 10 * time.Minute
)

var spreadSeed = []byte("0123456789abcdef0123456789abcdef")

func spreadEnv(prefix string) string {
	return config.KeyRegistry + "=" + prefix + "\n" + config.KeyRuntimes + "=codex,hermes\n" + config.KeySpread + "=" + spread.String() + "\n"
}

// pullsOf counts the pulls of images under prefix.
func (e *scriptEngine) pullsOf(prefix string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, c := range e.pulls {
		if len(c.ref) > len(prefix) && c.ref[:len(prefix)+1] == prefix+"/" {
			n++
		}
	}
	return n
}

func withSpread(flipFile string) func(*Options) {
	return func(o *Options) { o.HostSeed, o.FlipFile = spreadSeed, flipFile }
}

// A prefix change waits for the host's delay within the spread: the old
// set stays warm, status says when, and the new set is pulled then.
func TestSpreadFlipWaitsForTheHostsDelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newScriptEngine(nil)
		s := startSched(t, e, spreadEnv(schedPrefix), nil, withSpread(""))
		defer s.stop()
		s.after(5 * time.Second)
		delay := spreadDelay(spreadSeed, spreadTo, spread)
		changed := time.Now()
		s.change(spreadEnv(spreadTo))
		doc := s.a.Document()
		if f := doc.Agent.Flip; f == nil || f.To != spreadTo || !f.At.Equal(changed.Add(delay).UTC()) {
			t.Fatalf("flip %+v, want to %s at %s", doc.Agent.Flip, spreadTo, changed.Add(delay))
		}
		if doc.Agent.Prefix != schedPrefix || doc.Agent.Warm != 2 || doc.Healthy() {
			t.Errorf("while the flip waits: prefix %s, %d warm, healthy %v; want the old set warm and not healthy", doc.Agent.Prefix, doc.Agent.Warm, doc.Healthy())
		}
		s.after(delay - time.Second)
		if n := e.pullsOf(spreadTo); n != 0 {
			t.Fatalf("%d pulls of the new set before the host's delay (%s)", n, delay)
		}
		s.after(2 * time.Second)
		doc = s.a.Document()
		if n := e.pullsOf(spreadTo); n != 2 || doc.Agent.Prefix != spreadTo || doc.Agent.Flip != nil || !doc.Healthy() {
			t.Errorf("after the delay: %d pulls of the new set, prefix %s, flip %+v, healthy %v", n, doc.Agent.Prefix, doc.Agent.Flip, doc.Healthy())
		}
	})
}

// The scheduled time survives a restart: the restarted agent keeps the
// old set until then, whatever seed it has now.
func TestSpreadFlipSurvivesARestart(t *testing.T) {
	flipFile := filepath.Join(t.TempDir(), "flip.json")
	synctest.Test(t, func(t *testing.T) {
		e := newScriptEngine(nil)
		s := startSched(t, e, spreadEnv(schedPrefix), nil, withSpread(flipFile))
		s.after(5 * time.Second)
		delay := spreadDelay(spreadSeed, spreadTo, spread)
		at := time.Now().Add(delay)
		s.change(spreadEnv(spreadTo))
		s.after(delay / 2)
		s.stop()
		s = startSched(t, e, spreadEnv(spreadTo), nil, func(o *Options) { o.HostSeed, o.FlipFile = []byte("another seed, another delay"), flipFile })
		defer s.stop()
		doc := s.a.Document()
		if f := doc.Agent.Flip; f == nil || !f.At.Equal(at.UTC()) || doc.Agent.Prefix != schedPrefix {
			t.Fatalf("after the restart: prefix %s, flip %+v; want %s until %s", doc.Agent.Prefix, f, schedPrefix, at)
		}
		s.after(time.Until(at) - time.Second)
		if n := e.pullsOf(spreadTo); n != 0 {
			t.Fatalf("%d pulls of the new set before the scheduled time", n)
		}
		s.after(2 * time.Second)
		if n := e.pullsOf(spreadTo); n != 2 {
			t.Errorf("%d pulls of the new set after the scheduled time, want 2", n)
		}
	})
}

// A flip back before the time cancels the flip; SIGHUP does not skip it.
func TestSpreadFlipBackCancelsAndReloadDoesNotSkip(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newScriptEngine(nil)
		s := startSched(t, e, spreadEnv(schedPrefix), nil, withSpread(""))
		defer s.stop()
		s.after(5 * time.Second)
		s.change(spreadEnv(spreadTo))
		s.a.Reload()
		s.after(time.Second)
		if doc := s.a.Document(); doc.Agent.Flip == nil || e.pullsOf(spreadTo) != 0 {
			t.Fatalf("after SIGHUP: flip %+v, %d pulls of the new set; want it still waiting", doc.Agent.Flip, e.pullsOf(spreadTo))
		}
		s.change(spreadEnv(schedPrefix))
		if doc := s.a.Document(); doc.Agent.Flip != nil || !doc.Healthy() {
			t.Errorf("after the flip back: flip %+v, healthy %v", doc.Agent.Flip, doc.Healthy())
		}
		s.after(spread)
		if n := e.pullsOf(spreadTo); n != 0 {
			t.Errorf("%d pulls of %s after a flip back", n, spreadTo)
		}
	})
}

// status --wait waits through a scheduled flip, until the new set is warm.
func TestSpreadStatusWaitWaitsThroughTheFlip(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newScriptEngine(nil)
		s := startSched(t, e, spreadEnv(schedPrefix), nil, withSpread(""))
		defer s.stop()
		s.after(5 * time.Second)
		delay := spreadDelay(spreadSeed, spreadTo, spread)
		start := time.Now()
		s.change(spreadEnv(spreadTo))
		doc, err := state.WaitHealthy(context.Background(), func(context.Context) (state.StateDoc, error) { return s.a.Document(), nil }, time.Hour)
		if waited := time.Since(start); err != nil || !doc.Healthy() || doc.Agent.Prefix != spreadTo || waited < delay {
			t.Errorf("waited %s (delay %s): prefix %s healthy %v, %v", waited, delay, doc.Agent.Prefix, doc.Healthy(), err)
		}
	})
}

// Hosts' delays spread uniformly over [0, spread); each host's is fixed.
func TestSpreadDelaysAreUniformAndStable(t *testing.T) {
	const hosts = 2000
	var buckets [10]int
	for i := range hosts {
		seed := []byte(fmt.Sprintf("machine-id-%032d", i))
		d := spreadDelay(seed, spreadTo, spread)
		if d < 0 || d >= spread {
			t.Fatalf("host %d: delay %s outside [0, %s)", i, d, spread)
		}
		if d != spreadDelay(seed, spreadTo, spread) {
			t.Fatalf("host %d: the delay changed between two draws", i)
		}
		buckets[d*10/spread]++
	}
	for i, n := range buckets {
		if n < hosts/10*7/10 || n > hosts/10*13/10 {
			t.Errorf("tenth %d of the spread has %d of %d hosts, want about %d: %v", i, n, hosts, hosts/10, buckets)
		}
	}
	if spreadDelay(spreadSeed, spreadTo, 0) != 0 {
		t.Error("no spread, yet a delay")
	}
}
