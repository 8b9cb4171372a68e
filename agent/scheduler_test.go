package agent

import (
	"errors"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine/enginetest"
	"github.com/molecule-ai/pull-agent/agent/pull"
	"github.com/molecule-ai/pull-agent/agent/state"
)

// near reports whether got is within a millisecond of want.
func near(got, want time.Duration) bool {
	return got >= want-time.Millisecond && got <= want+time.Millisecond
}

// gaps are the delays between consecutive times.
func gaps(ts []time.Duration) []time.Duration {
	var out []time.Duration
	for i := 1; i < len(ts); i++ {
		out = append(out, ts[i]-ts[i-1])
	}
	return out
}

// A transient failure is retried after a delay drawn uniformly from
// [0, ceiling], the ceiling doubling from Retry.Initial up to Retry.Max;
// after Retry.Attempts retries the image waits for the next refresh.
func TestSchedBackoffFullJitterAndAttemptsLimit(t *testing.T) {
	ceilings := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second}
	for _, r := range []float64{0, 0.5, topOfRange} {
		synctest.Test(t, func(t *testing.T) {
			e := newScriptEngine(func(string, int) error { return errors.New("dial tcp 10.0.0.1:443: connection refused") })
			s := startSched(t, e, envOf("codex"), nil, func(o *Options) { o.Random = func() float64 { return r } })
			defer s.stop()
			s.after(10 * time.Minute)
			got := gaps(e.pullTimes(ref("codex"), s.t0))
			if len(got) != len(ceilings) {
				t.Fatalf("random %v: %d retries in 10 min (gaps %v), want %d (the attempts limit)", r, len(got), got, len(ceilings))
			}
			for i, g := range got {
				if !near(g, time.Duration(r*float64(ceilings[i]))) {
					t.Errorf("random %v: retry %d after %s, want %v × %s", r, i+1, g, r, ceilings[i])
				}
			}
			st := s.status("codex")
			if st.Due || st.State != state.Failed || st.LastClass != pull.ClassNetwork || st.Attempts != len(ceilings)+1 {
				t.Errorf("after the retries: due %v, state %s, class %s, attempts %d", st.Due, st.State, st.LastClass, st.Attempts)
			}
			// The refresh (at 1 h ± 10 %) starts a new round.
			s.after(time.Hour)
			all := e.pullTimes(ref("codex"), s.t0)
			if len(all) <= len(ceilings)+1 || all[len(ceilings)+1] < 54*time.Minute || all[len(ceilings)+1] > 66*time.Minute {
				t.Errorf("random %v: pulls at %v, want the 7th at the refresh, 54–66 min", r, all)
			}
		})
	}
}

// Pulls already running when a host first answers 429 all come back with
// 429: one strike for the burst. The cooldown is equal jitter over a
// doubling ceiling (RateLimit), and only a 429 after a cooldown ended
// doubles it. (Refreshes of warm images start together; downloads start
// one after another, so the burst is a refresh's.)
func TestSchedRateLimitOneStrikePerBurst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newScriptEngine(func(_ string, n int) error {
			if n == 1 || n == 2 {
				return errors.New("toomanyrequests: too many requests")
			}
			return nil
		})
		s := startSched(t, e, envOf("codex,crewai,hermes"), nil, func(o *Options) {
			o.Concurrency = 3
			o.RateLimit = RetryPolicy{Initial: 30 * time.Second, Max: 10 * time.Minute}
			o.Random = func() float64 { return 0 } // the floor: half the ceiling
		})
		defer s.stop()
		refresh := 54 * time.Minute // the refresh interval, jittered by Random 0: × 0.9
		s.after(refresh)
		if cd := s.a.Snapshot().Cooldowns["r.test"]; !near(cd.Sub(s.t0), refresh+15*time.Second) {
			t.Fatalf("cooldown until %s after the first burst, want %s (half of 30 s after it)", cd.Sub(s.t0), refresh+15*time.Second)
		}
		s.after(10 * time.Minute)
		for _, rt := range []string{"codex", "crewai", "hermes"} {
			// At the refresh: the burst; 15 s later: the second burst,
			// strike 2 (half of 60 s); 45 s: served. With a strike per
			// pull, the second cooldown would be strike 4's: 2 min.
			got := e.pullTimes(ref(rt), s.t0)
			want := []time.Duration{0, refresh, refresh + 15*time.Second, refresh + 45*time.Second}
			if len(got) != len(want) || !near(got[1], want[1]) || !near(got[2], want[2]) || !near(got[3], want[3]) {
				t.Errorf("%s pulled at %v, want %v", rt, got, want)
			}
			if st := s.status(rt); st.State != state.Warm {
				t.Errorf("%s %s, want warm", rt, st.State)
			}
		}
	})
}

// A delay the registry names in its 429 message is the cooldown.
func TestSchedRateLimitHonoursTheNamedDelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newScriptEngine(func(_ string, n int) error {
			if n == 0 {
				return errors.New(`toomanyrequests: {"Retry-After": "42"}`)
			}
			return nil
		})
		s := startSched(t, e, envOf("codex"), nil, nil)
		defer s.stop()
		if cd := s.a.Snapshot().Cooldowns["r.test"]; !near(cd.Sub(s.t0), 42*time.Second) {
			t.Fatalf("cooldown until %s, want 42 s", cd.Sub(s.t0))
		}
		s.after(time.Minute)
		if got := e.pullTimes(ref("codex"), s.t0); len(got) != 2 || !near(got[1], 42*time.Second) {
			t.Errorf("pulled at %v, want [0 42s]", got)
		}
	})
}

// Warm images are re-pulled every RefreshInterval ± 10 %.
func TestSchedRefreshEveryIntervalWithinTenPercent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		draws := []float64{0, topOfRange, 0.5, 0.25}
		e := newScriptEngine(nil)
		s := startSched(t, e, envOf("codex"), nil, func(o *Options) {
			o.Random = func() float64 { r := draws[0]; draws = append(draws[1:], r); return r }
		})
		defer s.stop()
		s.after(4 * time.Hour)
		got := gaps(e.pullTimes(ref("codex"), s.t0))
		want := []time.Duration{54 * time.Minute, 66 * time.Minute, 60 * time.Minute, 57 * time.Minute}
		if len(got) < len(want) {
			t.Fatalf("refreshes after %v, want %v", got, want)
		}
		for i, w := range want {
			if !near(got[i], w) {
				t.Errorf("refresh %d after %s, want %s", i+1, got[i], w)
			}
		}
	})
}

// Credentials that are temporarily unavailable (ecr-login cannot reach
// its endpoint) are retried with backoff; a registry that refuses them
// is not asked again until the next refresh or a reload.
func TestSchedUnavailableCredentialsRetriedRefusedWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newScriptEngine(func(ref string, _ int) error {
			if ref == config.ImageRef(schedPrefix, "hermes") {
				return errors.New("unauthorized: authentication required")
			}
			return nil
		})
		authz := scriptAuth{unavailableUntil: time.Now().Add(3 * time.Second)}
		s := startSched(t, e, envOf("codex,hermes"), authz, nil)
		defer s.stop()
		if st := s.status("codex"); st.LastClass != pull.ClassAuth || !st.Due {
			t.Fatalf("with credentials unavailable: class %s, due %v; want auth, due for a retry", st.LastClass, st.Due)
		}
		s.after(30 * time.Minute)
		if st := s.status("codex"); st.State != state.Warm {
			t.Errorf("codex %s once credentials came back, want warm", st.State)
		}
		if got := e.pullTimes(ref("codex"), s.t0); len(got) != 1 || got[0] < 3*time.Second {
			t.Errorf("codex pulled at %v, want once, after 3 s", got)
		}
		hermes := e.pullTimes(ref("hermes"), s.t0)
		if st := s.status("hermes"); len(hermes) != 1 || st.Due || st.LastClass != pull.ClassAuth {
			t.Errorf("refused: pulled at %v, due %v, class %s; want one pull, not due", hermes, st.Due, st.LastClass)
		}
		s.a.Reload()
		synctest.Wait()
		if got := e.pullTimes(ref("hermes"), s.t0); len(got) != 2 {
			t.Errorf("after Reload: hermes pulled at %v, want a second pull", got)
		}
	})
}

// A missing image and a full disk are not retried until the next refresh.
func TestSchedNotFoundAndDiskFullAreNotHotLooped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newScriptEngine(func(ref string, _ int) error {
			switch ref {
			case config.ImageRef(schedPrefix, "codex"):
				return errors.New("manifest unknown: manifest unknown")
			case config.ImageRef(schedPrefix, "hermes"):
				return errors.New("write /var/lib/docker/tmp/x: no space left on device")
			}
			return nil
		})
		s := startSched(t, e, envOf("codex,hermes"), nil, nil)
		defer s.stop()
		s.after(50 * time.Minute)
		for rt, class := range map[string]pull.ErrorClass{"codex": pull.ClassNotFound, "hermes": pull.ClassDisk} {
			st := s.status(rt)
			if got := e.pullTimes(ref(rt), s.t0); len(got) != 1 || st.Due || st.LastClass != class || st.State != state.Failed {
				t.Errorf("%s: pulled at %v, due %v, class %s, state %s; want once, not due, %s, failed", rt, got, st.Due, st.LastClass, st.State, class)
			}
		}
		s.after(20 * time.Minute) // the refresh, at 1 h
		for _, rt := range []string{"codex", "hermes"} {
			if got := e.pullTimes(ref(rt), s.t0); len(got) != 2 || !near(got[1], time.Hour) {
				t.Errorf("%s pulled at %v, want again at the refresh (1 h)", rt, got)
			}
		}
	})
}

// A pull whose image leaves the configured set is cancelled, with the
// reason; the image is no longer reported, and pulling resumes when it
// comes back.
func TestSchedReconcileCancelsPullsThatLeftTheSet(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newScriptEngine(func(ref string, n int) error {
			if ref == config.ImageRef(schedPrefix, "hermes") && n == 0 {
				return errHang
			}
			return nil
		})
		s := startSched(t, e, envOf("codex,hermes"), nil, func(o *Options) { o.Concurrency = 1 })
		defer s.stop()
		if st := s.status("hermes"); !st.InFlight {
			t.Fatalf("hermes %s, not in flight", st.State)
		}
		s.change(envOf("codex"))
		e.mu.Lock()
		cause := e.causes[ref("hermes")]
		e.mu.Unlock()
		if cause == nil || cause.Error() != "image left the configured set" {
			t.Fatalf("hermes's pull ended with cause %v, want it cancelled as having left the set", cause)
		}
		if imgs := s.a.Snapshot().Images; len(imgs) != 1 || imgs[0].Image.Runtime != "codex" {
			t.Fatalf("images %v after hermes left", imgs)
		}
		// The cancelled pull gave its slot back (Concurrency 1).
		s.change(envOf("codex,hermes"))
		if st := s.status("hermes"); st.State != state.Warm || len(e.pullTimes(ref("hermes"), s.t0)) != 2 {
			t.Errorf("hermes %s after it came back, pulls %v", st.State, e.pullTimes(ref("hermes"), s.t0))
		}
	})
}

// A pinned image the daemon holds is never sent to the daemon again: not
// at a refresh, not after a restart.
func TestSchedPinnedImagesAreNeverPulledAgain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pin := digest.FromString("pinned")
		env := envOf("codex", config.KeyPins+"=codex="+pin.String())
		pinned := schedPrefix + "/workspace-template-codex@" + pin.String()
		e := newScriptEngine(nil)
		s := startSched(t, e, env, nil, nil)
		s.after(5 * time.Hour)
		s.stop()
		s = startSched(t, e, env, nil, nil)
		defer s.stop()
		s.after(2 * time.Hour)
		if got := e.pullTimes(pinned, s.t0); len(got) != 1 {
			t.Errorf("the pinned image was pulled %d times, want once", len(got))
		}
		if st := s.status("codex"); st.State != state.Warm || st.Digest != pin {
			t.Errorf("pinned image %s %s, want warm with the pin", st.State, st.Digest)
		}
		if len(e.remotes) != 0 {
			t.Errorf("the registry was asked about pinned images %d times", len(e.remotes))
		}
	})
}

// A warm image whose refresh fails is stale when the registry serves
// another digest, and stays warm when it serves the one held.
func TestSchedStaleDetection(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newScriptEngine(func(_ string, n int) error {
			if n > 0 {
				return errors.New("received unexpected HTTP status: 503 Service Unavailable")
			}
			return nil
		})
		s := startSched(t, e, envOf("codex,hermes"), nil, nil)
		defer s.stop()
		held := s.status("codex").Digest
		moved := digest.FromString("moved")
		e.mu.Lock()
		e.served[enginetest.RepoOf(ref("codex"))] = moved
		e.mu.Unlock()
		s.after(time.Hour) // the refresh fails for both
		if st := s.status("codex"); st.State != state.Stale || st.RemoteDigest != moved || st.Digest != held {
			t.Errorf("codex: %s, remote %s, local %s; want stale, remote %s, local %s", st.State, st.RemoteDigest, st.Digest, moved, held)
		}
		if st := s.status("hermes"); st.State != state.Warm || st.LastClass != pull.ClassServer {
			t.Errorf("hermes: %s (%s), want warm: the registry still serves what it holds", st.State, st.LastClass)
		}
	})
}

// With MOLECULE_PRUNE_PREVIOUS, the previous prefix's images are removed
// once every image of the new one is warm, not before.
func TestSchedPruneAfterWarmUp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		e := newScriptEngine(func(r string, _ int) error {
			if r == config.ImageRef("r.test/y", "hermes") {
				<-release
			}
			return nil
		})
		s := startSched(t, e, envOf("codex,hermes", config.KeyPrune+"=true"), nil, nil)
		defer s.stop()
		s.change(config.KeyRegistry + "=r.test/y\n" + config.KeyRuntimes + "=codex,hermes\n" + config.KeyPrune + "=true\n")
		if st := s.status("codex"); st.State != state.Warm || st.Image.Ref != config.ImageRef("r.test/y", "codex") {
			t.Fatalf("codex on the new prefix %s", st.State)
		}
		if len(e.removed) != 0 {
			t.Fatalf("removed %v while hermes was still pulling", e.removed)
		}
		close(release)
		synctest.Wait()
		want := []string{ref("codex"), ref("hermes")}
		slices.Sort(e.removed)
		if !slices.Equal(e.removed, want) {
			t.Errorf("removed %v, want %v", e.removed, want)
		}
	})
}

// A change of the credentials (Docker's config.json) tries again at once
// the images whose last pull failed on auth, and only those; a pull that
// failed on auth with the credentials of before the change is tried again
// at once too, though it ended after the change.
func TestSchedCredentialChangeRetriesAuthFailures(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		denied := errors.New("unauthorized: authentication required")
		e := newScriptEngine(func(r string, n int) error {
			switch {
			case r == ref("codex") && n == 0:
				return denied
			case r == ref("hermes"):
				return errors.New("manifest unknown: manifest unknown")
			case r == ref("autogen") && n == 0:
				time.Sleep(10 * time.Second) // in flight when the credentials change
				return denied
			}
			return nil
		})
		creds := make(chan struct{}, 1)
		s := startSched(t, e, envOf("codex,hermes,autogen"), nil, func(o *Options) { o.CredentialChanges = creds })
		defer s.stop()
		s.after(2 * time.Second)
		if st := s.status("codex"); st.LastClass != pull.ClassAuth || st.Due || len(e.pullTimes(ref("codex"), s.t0)) != 1 {
			t.Fatalf("before the change: codex class %s, due %v, pulls %v; want one auth failure, waiting", st.LastClass, st.Due, e.pullTimes(ref("codex"), s.t0))
		}
		creds <- struct{}{}
		synctest.Wait()
		if got := e.pullTimes(ref("codex"), s.t0); len(got) != 2 || got[1] != 2*time.Second {
			t.Errorf("codex pulled at %v, want again at once on the change (2s)", got)
		}
		if st := s.status("codex"); st.State != state.Warm {
			t.Errorf("codex %s after the change, want warm", st.State)
		}
		s.after(10 * time.Second)
		if got := e.pullTimes(ref("autogen"), s.t0); len(got) != 2 || got[1] != 10*time.Second {
			t.Errorf("autogen pulled at %v, want again as soon as its old-credentials pull failed (10s)", got)
		}
		if got := e.pullTimes(ref("hermes"), s.t0); len(got) != 1 {
			t.Errorf("hermes (not found) pulled at %v, want once: a credential change does not retry it", got)
		}
		creds <- struct{}{}
		synctest.Wait()
		if got := e.pullTimes(ref("codex"), s.t0); len(got) != 2 {
			t.Errorf("a warm image was pulled again on a credential change: %v", got)
		}
	})
}
