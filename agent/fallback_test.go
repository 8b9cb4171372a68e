package agent

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine/enginetest"
	"github.com/molecule-ai/pull-agent/agent/pull"
	"github.com/molecule-ai/pull-agent/agent/state"
)

const fbPrefix = "m.test/y"

func fbRef(rt string) string { return config.ImageRef(fbPrefix, rt) }

var fbEnv = config.KeyFallback + "=" + fbPrefix

// refusing answers the primary's pulls with err while refuse is set; the
// fallback serves everything.
func refusing(refuse *atomic.Bool, err error, only ...string) func(string, int) error {
	return func(r string, _ int) error {
		if !strings.HasPrefix(r, schedPrefix+"/") || !refuse.Load() {
			return nil
		}
		for _, rt := range only {
			if r == ref(rt) {
				return err
			}
		}
		if len(only) == 0 {
			return err
		}
		return nil
	}
}

var (
	err401     = errors.New("Error response from daemon: Head \"https://r.test/v2/x/workspace-template-codex/manifests/latest\": unauthorized: authentication required")
	errMissing = errors.New("Error response from daemon: manifest for r.test/x/workspace-template-hermes:latest not found: manifest unknown: manifest unknown")
	errDown    = errors.New("Error response from daemon: Get \"https://r.test/v2/\": dial tcp 10.0.0.1:443: connect: connection refused")
	errNoSpace = errors.New("failed to register layer: write /var/lib/docker/x: no space left on device")
)

// heldID is the image ID the script engine holds under ref, or "".
func (e *scriptEngine) heldID(ref string) digest.Digest {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.held[ref]
}

// A new host whose primary refuses every image warms them all from the
// fallback, each under the primary's name; once the primary serves again,
// its content takes the names back within one retry period.
func TestFallbackServesANewHostAndThePrimaryComesBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var refuse atomic.Bool
		refuse.Store(true)
		e := newScriptEngine(refusing(&refuse, err401))
		notes := &recordingNotifier{}
		s := startSched(t, e, envOf("hermes,codex,autogen", fbEnv), nil, func(o *Options) { o.Notifier = notes })
		defer s.stop()
		s.after(10 * time.Second)
		for _, rt := range []string{"hermes", "codex", "autogen"} {
			st := s.status(rt)
			if st.State != state.Warm || st.Source != state.SourceFallback(fbPrefix) || st.FallbackRef != fbRef(rt) {
				t.Errorf("%s: %s from %q (%s), want warm from the fallback", rt, st.State, st.Source, st.FallbackRef)
			}
			if st.LastClass != pull.ClassAuth || !strings.Contains(st.LastError, "unauthorized") {
				t.Errorf("%s: the primary's failure is %s %q, want the 401", rt, st.LastClass, st.LastError)
			}
			if got, want := e.heldID(ref(rt)), enginetest.DigestOf(fbRef(rt)); got != want {
				t.Errorf("%s: the primary name holds %s, want the fallback's %s", rt, got, want)
			}
		}
		doc := s.a.Document()
		if !doc.Healthy() || doc.Images[0].Source != "fallback "+fbPrefix || doc.Images[0].FallbackImage != fbRef("hermes") {
			t.Errorf("document: healthy %v, image %+v", doc.Healthy(), doc.Images[0])
		}
		if !notes.saw("3/3 images warm from " + schedPrefix + ", 3 from fallback") {
			t.Errorf("sd_notify STATUS never said 3 from fallback: %q", notes.all())
		}

		refuse.Store(false)
		s.after(s.a.opts.Retry.Max + time.Second)
		for _, rt := range []string{"hermes", "codex", "autogen"} {
			st := s.status(rt)
			if st.State != state.Warm || st.Source != state.SourcePrimary || st.FallbackRef != "" {
				t.Errorf("%s: %s from %q after the primary came back, want warm from the primary", rt, st.State, st.Source)
			}
			if got, want := e.heldID(ref(rt)), enginetest.DigestOf(ref(rt)); got != want {
				t.Errorf("%s: the primary name holds %s, want the primary's %s", rt, got, want)
			}
		}
		if !notes.saw("3/3 images warm from "+schedPrefix) || strings.Contains(notes.last(), "fallback") {
			t.Errorf("sd_notify STATUS after the primary came back: %q", notes.last())
		}
	})
}

// A primary missing only hermes: only hermes comes from the fallback.
func TestFallbackOnlyForWhatThePrimaryLacks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var refuse atomic.Bool
		refuse.Store(true)
		e := newScriptEngine(refusing(&refuse, errMissing, "hermes"))
		s := startSched(t, e, envOf("hermes,codex,autogen", fbEnv), nil, nil)
		defer s.stop()
		s.after(10 * time.Second)
		for rt, want := range map[string]string{"hermes": state.SourceFallback(fbPrefix), "codex": state.SourcePrimary, "autogen": state.SourcePrimary} {
			if st := s.status(rt); st.State != state.Warm || st.Source != want {
				t.Errorf("%s: %s from %q, want warm from %q", rt, st.State, st.Source, want)
			}
		}
		for _, rt := range []string{"codex", "autogen"} {
			if n := len(e.pullTimes(fbRef(rt), s.t0)); n != 0 {
				t.Errorf("%s pulled %d times from the fallback, want never", rt, n)
			}
		}
	})
}

// A host that holds its images from the primary keeps them when the
// primary starts refusing: no switch, the primary is all it asks.
func TestFallbackNeverSwitchesAWarmHost(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var refuse atomic.Bool
		e := newScriptEngine(refusing(&refuse, err401))
		s := startSched(t, e, envOf("hermes,codex", fbEnv), nil, nil)
		defer s.stop()
		s.after(5 * time.Second)
		refuse.Store(true)
		s.after(3 * time.Hour) // refreshes, all refused
		for _, rt := range []string{"hermes", "codex"} {
			if n := len(e.pullTimes(fbRef(rt), s.t0)); n != 0 {
				t.Errorf("%s pulled %d times from the fallback, want never", rt, n)
			}
			if got, want := e.heldID(ref(rt)), enginetest.DigestOf(ref(rt)); got != want {
				t.Errorf("%s: the primary name holds %s, want the primary's own %s", rt, got, want)
			}
			if n := len(e.pullTimes(ref(rt), s.t0)); n < 3 {
				t.Errorf("%s: the primary was asked %d times in 3 h, want each refresh", rt, n)
			}
		}
	})
}

// Which failures fall back, and when: a refusal at once, a registry down
// after three tries, a full disk never.
func TestFallbackOnlyForFailuresAnotherRegistryCures(t *testing.T) {
	for _, tt := range []struct {
		name   string
		err    error
		within time.Duration
		want   bool
	}{
		{"auth at once", err401, 100 * time.Millisecond, true},
		{"not found at once", errMissing, 100 * time.Millisecond, true},
		{"network not at once", errDown, 100 * time.Millisecond, false},
		{"network after three tries", errDown, 30 * time.Second, true},
		{"disk never", errNoSpace, 10 * time.Minute, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var refuse atomic.Bool
				refuse.Store(true)
				e := newScriptEngine(refusing(&refuse, tt.err))
				s := startSched(t, e, envOf("codex", fbEnv), nil, nil)
				defer s.stop()
				s.after(tt.within)
				if got := len(e.pullTimes(fbRef("codex"), s.t0)) > 0; got != tt.want {
					t.Errorf("fallback pulled: %v, want %v (primary pulled %d times)", got, tt.want, len(e.pullTimes(ref("codex"), s.t0)))
				}
			})
		})
	}
}

// A pinned runtime takes from a fallback only the pinned manifest.
func TestFallbackServesAPinByItsDigest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var refuse atomic.Bool
		refuse.Store(true)
		pin := digest.FromString("the pinned codex")
		e := newScriptEngine(refusing(&refuse, err401))
		s := startSched(t, e, envOf("codex", fbEnv, config.KeyPins+"=codex="+pin.String()), nil, nil)
		defer s.stop()
		s.after(5 * time.Second)
		st := s.status("codex")
		if st.State != state.Warm || st.Source != state.SourceFallback(fbPrefix) || st.Digest != pin {
			t.Fatalf("codex: %s from %q digest %s, want warm from the fallback with the pin", st.State, st.Source, st.Digest)
		}
		if want := fbPrefix + "/workspace-template-codex@" + pin.String(); st.FallbackRef != want {
			t.Errorf("pulled %s from the fallback, want %s", st.FallbackRef, want)
		}
	})
}

// recordingNotifier keeps what the agent tells systemd.
type recordingNotifier struct {
	mu    sync.Mutex
	notes []string
}

func (n *recordingNotifier) Notify(s string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.notes = append(n.notes, s)
	return nil
}

func (n *recordingNotifier) WatchdogInterval() time.Duration { return 0 }

func (n *recordingNotifier) all() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.notes)
}

// saw reports whether a STATUS= line said exactly status.
func (n *recordingNotifier) saw(status string) bool {
	return slices.Contains(n.all(), "STATUS="+status)
}

// last is the last STATUS= line.
func (n *recordingNotifier) last() string {
	all := n.all()
	for i := len(all) - 1; i >= 0; i-- {
		if strings.HasPrefix(all[i], "STATUS=") {
			return all[i]
		}
	}
	return ""
}

// An agent restarted while a fallback serves keeps serving it: the tag it
// gave the primary name is recorded, so the name is not taken for the
// primary's own content.
func TestFallbackSurvivesARestart(t *testing.T) {
	pulled := filepath.Join(t.TempDir(), "pulled.json")
	synctest.Test(t, func(t *testing.T) {
		var refuse atomic.Bool
		refuse.Store(true)
		e := newScriptEngine(refusing(&refuse, err401))
		withFile := func(o *Options) { o.PulledFile = pulled }
		s := startSched(t, e, envOf("codex", fbEnv), nil, withFile)
		s.after(5 * time.Second)
		s.stop()
		if st := s.status("codex"); st.Source != state.SourceFallback(fbPrefix) {
			t.Fatalf("before the restart: codex from %q", st.Source)
		}
		s = startSched(t, e, envOf("codex", fbEnv), nil, withFile)
		defer s.stop()
		s.after(5 * time.Second)
		if st := s.status("codex"); st.State != state.Warm || st.Source != state.SourceFallback(fbPrefix) {
			t.Errorf("after the restart: codex %s from %q (%s), want warm from the fallback", st.State, st.Source, st.LastError)
		}
	})
}
