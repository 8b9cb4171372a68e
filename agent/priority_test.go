package agent

import (
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/molecule-ai/pull-agent/agent/pull"
)

// countingClock is the system clock (virtual in a bubble) that counts the
// loop's waits. Past limit it stops waking the loop, so that a loop that
// spins lets synctest.Wait return and the test fail instead of hang.
type countingClock struct {
	SystemClock
	limit int64
	waits atomic.Int64
}

func (c *countingClock) After(d time.Duration) <-chan time.Time {
	if c.waits.Add(1) > c.limit {
		return nil
	}
	return c.SystemClock.After(d)
}

// Downloads start in MOLECULE_RUNTIMES order, each once the one before has
// queued its layers in the daemon, at most Concurrency at once; the loop
// sleeps while images wait for a slot.
func TestSchedDownloadsStartInPriorityOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newScriptEngine(nil)
		resolve, download := 300*time.Millisecond, 10*time.Second
		e.phases = func(string) (time.Duration, time.Duration) { return resolve, download }
		clock := &countingClock{limit: 200}
		order := []string{"hermes", "codex", "autogen", "crewai", "openclaw"}
		s := startSched(t, e, envOf("hermes,codex,autogen,hermes,crewai,openclaw"), nil, func(o *Options) {
			o.Concurrency = 3
			o.Clock = clock
		})
		defer s.stop()
		s.after(time.Minute)
		// hermes, codex and autogen each 300 ms after the one before;
		// crewai when hermes ends (10.3 s), openclaw when codex ends
		// (10.6 s, crewai has queued by then).
		want := map[string]time.Duration{
			"hermes": 0, "codex": resolve, "autogen": 2 * resolve,
			"crewai": resolve + download, "openclaw": 2*resolve + download,
		}
		for _, rt := range order {
			got := e.pullTimes(ref(rt), s.t0)
			if len(got) != 1 || !near(got[0], want[rt]) {
				t.Errorf("%s pulled at %v, want once at %s", rt, got, want[rt])
			}
			if st := s.status(rt); st.State != "warm" {
				t.Errorf("%s is %s, want warm", rt, st.State)
			}
		}
		var listed []string
		for _, i := range s.a.Snapshot().Images {
			listed = append(listed, i.Image.Runtime)
		}
		if !slices.Equal(listed, order) {
			t.Errorf("status lists %v, want the priority order %v", listed, order)
		}
		if n := clock.waits.Load(); n > clock.limit {
			t.Errorf("the loop waited %d times in a one-minute warm-up of five images: it spins", n)
		}
	})
}

// A pull that does not get past resolving (a token server that does not
// answer) holds the next one back for pull.QueueLead only.
func TestSchedAStuckResolveHoldsTheNextForTheLeadOnly(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newScriptEngine(nil)
		e.phases = func(ref string) (time.Duration, time.Duration) {
			if ref == hermesRef {
				return time.Hour, time.Second
			}
			return 100 * time.Millisecond, time.Second
		}
		s := startSched(t, e, envOf("hermes,codex,autogen"), nil, nil)
		defer s.stop()
		s.after(10 * time.Second)
		for rt, want := range map[string]time.Duration{"hermes": 0, "codex": pull.QueueLead, "autogen": pull.QueueLead + 100*time.Millisecond} {
			if got := e.pullTimes(ref(rt), s.t0); len(got) != 1 || !near(got[0], want) {
				t.Errorf("%s pulled at %v, want once at %s", rt, got, want)
			}
		}
	})
}

// Refreshes of warm images are manifest checks: they start together.
func TestSchedRefreshesStartTogether(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newScriptEngine(nil)
		e.phases = func(string) (time.Duration, time.Duration) { return time.Second, time.Second }
		s := startSched(t, e, envOf("hermes,codex,autogen,crewai"), nil, nil)
		defer s.stop()
		s.after(2 * time.Hour) // one refresh (54–66 min with the jitter)
		var at []time.Duration
		for _, rt := range []string{"hermes", "codex", "autogen", "crewai"} {
			got := e.pullTimes(ref(rt), s.t0)
			if len(got) < 2 {
				t.Fatalf("%s pulled at %v, want a cold pull and a refresh", rt, got)
			}
			at = append(at, got[1])
		}
		for _, a := range at[1:] {
			if a != at[0] {
				t.Errorf("refreshes started at %v, want all at once", at)
				break
			}
		}
	})
}

var hermesRef = ref("hermes")

// Retries of images that fail before naming a layer (a credential helper
// that hangs until it is killed) do not hold the queue: an image behind
// them in priority order still gets its first pull.
func TestSchedFailingRetriesDoNotStarveTheNext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newScriptEngine(func(r string, _ int) error {
			if r == ref("autogen") {
				return nil
			}
			time.Sleep(time.Second)
			return errors.New("received unexpected HTTP status: 503 Service Unavailable")
		})
		s := startSched(t, e, envOf("hermes,codex,autogen"), nil, func(o *Options) {
			o.Retry = RetryPolicy{Initial: 200 * time.Millisecond, Max: 800 * time.Millisecond, Attempts: 100}
		})
		defer s.stop()
		s.after(30 * time.Second)
		got := e.pullTimes(ref("autogen"), s.t0)
		if len(got) != 1 || got[0] > 2*pull.QueueLead {
			t.Errorf("autogen pulled at %v, want once within %s while hermes and codex keep failing", got, 2*pull.QueueLead)
		}
		if st := s.status("autogen"); st.State != "warm" {
			t.Errorf("autogen is %s, want warm", st.State)
		}
		if n := len(e.pullTimes(hermesRef, s.t0)); n < 10 {
			t.Errorf("hermes pulled %d times in 30 s, want it retried throughout", n)
		}
	})
}
