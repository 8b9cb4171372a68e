package agent

import (
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/agent/pull"
	"github.com/molecule-ai/pull-agent/agent/state"
)

// ImageStatus is what the agent knows of one image.
type ImageStatus struct {
	Image       config.Image
	State       string
	Digest      digest.Digest
	ImageID     string
	Size        int64
	Progress    engine.Progress
	Attempts    int // failures in a row
	LastAttempt time.Time
	LastSuccess time.Time
	LastError   string
	LastClass   pull.ErrorClass
	NextAttempt time.Time
	Duration    time.Duration
	Bytes       int64
	// InFlight is true while a pull (or a pin check) runs.
	InFlight bool
	// Due is true while the image waits for a (re)try.
	Due bool
	// RemoteDigest is what the registry serves, when known.
	RemoteDigest digest.Digest
	// Alias is the alias name given to the image, when configured.
	Alias string
	// Source is where the content under the image's name came from:
	// state.SourcePrimary or state.SourceFallback(prefix); empty before
	// the first success. FallbackRef is the reference pulled from it.
	Source      string
	FallbackRef string
}

// fromFallback reports whether the content under the image's name came
// from a fallback prefix.
func (i ImageStatus) fromFallback() bool { return i.Source != "" && i.Source != state.SourcePrimary }

// Snapshot is a copy of the agent's state.
type Snapshot struct {
	Config      *config.Config // nil until a configuration was accepted
	ConfigError string
	ConfigAt    time.Time
	DaemonUp    bool
	Images      []ImageStatus // in runtime order
	NextRefresh time.Time
	Cooldowns   map[string]time.Time // registry host → end of a rate-limit backoff
	// Flip is a prefix change waiting for its time (MOLECULE_FLIP_SPREAD).
	Flip *FlipStatus
}

// FlipStatus is a scheduled flip.
type FlipStatus struct {
	From, To string
	At       time.Time
}

// Warm counts the images in state warm.
func (s Snapshot) Warm() int {
	n := 0
	for _, i := range s.Images {
		if i.State == state.Warm {
			n++
		}
	}
	return n
}

// view is what the loop last published. Nothing in it is written after
// it is stored: readers share it without a lock. Pulls in flight report
// progress through their observers, read at each request.
type view struct {
	snap          Snapshot
	progress      []*pullObserver // per image of snap.Images; nil when not in flight
	hosts         map[string]state.HostDoc
	lastReconcile time.Time
	engine        engine.Engine
}

// publish stores a new view of the loop's state and tells systemd about
// it when its one-line summary changed.
func (l *loop) publish() {
	now := l.clock.Now()
	v := &view{
		snap:          Snapshot{ConfigAt: l.cfgAt, DaemonUp: l.daemonUp, NextRefresh: l.refreshAt, Cooldowns: map[string]time.Time{}},
		hosts:         map[string]state.HostDoc{},
		lastReconcile: l.lastReconcile,
		engine:        l.engine,
	}
	if l.cfg != nil {
		c := *l.cfg
		v.snap.Config = &c
	}
	if l.cfgErr != nil {
		v.snap.ConfigError = errText(l.cfgErr)
	}
	if l.flip != nil {
		v.snap.Flip = &FlipStatus{From: l.flip.from, To: l.flip.cfg.Prefix, At: l.flip.at}
	}
	for _, img := range l.images {
		if st := l.states[img.Ref]; st != nil {
			is := st.ImageStatus
			is.InFlight = st.cancel != nil
			v.snap.Images = append(v.snap.Images, is)
			v.progress = append(v.progress, st.obs)
		}
	}
	for h, src := range l.described {
		v.hosts[h] = state.HostDoc{Host: h, CredentialSource: src}
	}
	maps.Copy(v.hosts, l.hostInfo)
	for h, hs := range l.hosts {
		if hs.until.After(now) {
			v.snap.Cooldowns[h] = hs.until
		}
	}
	l.a.view.Store(v)
	l.notifyStatus(v.snap)
}

// notifyStatus sends systemd a one-line summary when it changed.
func (l *loop) notifyStatus(s Snapshot) {
	pulling, fallback := 0, 0
	for _, i := range s.Images {
		if i.InFlight {
			pulling++
		}
		if i.State == state.Warm && i.fromFallback() {
			fallback++
		}
	}
	text := fmt.Sprintf("%d/%d images warm", s.Warm(), len(s.Images))
	if s.Config != nil {
		text += " from " + s.Config.Prefix
	}
	if fallback > 0 {
		text += fmt.Sprintf(", %d from fallback", fallback)
	}
	if pulling > 0 {
		text += fmt.Sprintf("; pulling %d", pulling)
	}
	if !s.DaemonUp {
		text += "; docker unreachable"
	}
	if s.ConfigError != "" {
		text += "; config error (see log)"
	}
	if s.Flip != nil {
		text += "; flip to " + s.Flip.To + " at " + s.Flip.At.UTC().Format(time.RFC3339)
	}
	if text != l.status {
		l.status = text
		l.notify("STATUS=" + text)
	}
}

// snapshot is a copy of v's snapshot with the current progress of pulls
// in flight.
func (v *view) snapshot() Snapshot {
	s := v.snap
	s.Images = slices.Clone(v.snap.Images)
	s.Cooldowns = maps.Clone(v.snap.Cooldowns)
	for i, o := range v.progress {
		if o != nil {
			s.Images[i].Progress = *o.progress.Load()
		}
	}
	return s
}

// Snapshot returns a copy of the agent's state, as last published.
func (a *Agent) Snapshot() Snapshot {
	return a.view.Load().snapshot()
}

// closeIdleConnections drops the Docker client's idle connections, where
// the engine has them.
func closeIdleConnections(e engine.Engine) {
	if c, ok := e.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}
