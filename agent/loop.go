package agent

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/agent/pull"
	"github.com/molecule-ai/pull-agent/agent/state"
	"github.com/molecule-ai/pull-agent/internal/safetext"
)

// loop is the scheduler's state. It belongs to the goroutine of Run: no
// other goroutine reads or writes it, so it needs no lock. Goroutines it
// starts (pulls, pings, prunes) report back on its channels; readers see
// what it publishes (view.go).
type loop struct {
	a       *Agent
	opts    Options
	log     *slog.Logger
	clock   Clock
	done    chan pullDone
	queued  chan *imageState // a fresh pull named its first layer
	pingRes chan error
	pruned  chan []string
	// wg counts the goroutines the loop starts; shutdown waits for them.
	// Each gives up its result once Run's ctx is done, when the loop no
	// longer reads it.
	wg sync.WaitGroup

	// The running configuration and what is built from it.
	baseEnv func(string) string
	cfg     *config.Config // nil until a configuration was accepted
	cfgErr  error
	cfgAt   time.Time
	engine  engine.Engine // built once, from the first accepted configuration
	puller  *pull.Puller
	authz   pull.Authorizer
	images  []config.Image
	// described is each configured host's credential source, as the
	// configuration says (before any pull).
	described map[string]string
	// credsAt is when the credentials last changed (CredentialChanges).
	credsAt time.Time

	// The schedule.
	states        map[string]*imageState
	hosts         map[string]*hostState
	inflight      int
	inflightFresh int // pulls of images not yet warm (downloads)
	daemonUp      bool
	pinging       bool
	pingFails     int
	nextPing      time.Time
	refreshAt     time.Time
	flip          *flipPlan                // a prefix change waiting for its time
	hostInfo      map[string]state.HostDoc // what the last pull from each host used
	lastReconcile time.Time

	// What was last reported and saved.
	status    string
	lastSaved []byte
	saveRetry time.Time // when a failed state save is retried; zero when saving works

	// The images this agent pulled, for MOLECULE_PRUNE_PREVIOUS.
	pulled map[string]string // ref → image ID
	// fallbackTags are the primary names the agent tagged onto images
	// from a fallback prefix, by primary ref; kept with pulled.
	fallbackTags map[string]fallbackTag
	pulledDirty  bool     // pulled or fallbackTags changed since last written
	previous     []string // refs of the previous prefix, until pruned
	pruning      bool
}

// imageState is the loop's record of one configured image.
type imageState struct {
	ImageStatus
	fresh bool // the running pull is not a refresh of a warm image
	// queuing: the running fresh pull has not yet queued its layers in
	// the daemon; the next fresh pull waits for it (pull.QueueLead).
	queuing bool
	cancel  context.CancelCauseFunc
	obs     *pullObserver // of the running pull
	// primaryFailures counts the primary's failures in a row that a
	// fallback may cure (pull.FallbackCures).
	primaryFailures int
}

// hostState is a registry host's rate-limit cooldown.
type hostState struct {
	until   time.Time
	strikes int
}

// pullDone is a pull's result, sent back to the loop.
type pullDone struct {
	ref    string
	res    pull.PullResult
	st     *imageState
	remote digest.Digest // after a failed refresh: what the registry serves
	// fallback, when set, is the image served from a fallback prefix
	// after res failed.
	fallback *pull.FallbackResult
}

// imageID is the image the pull left under the image's name, or "".
func (d pullDone) imageID() string {
	switch {
	case d.res.Err == nil:
		return d.res.ImageID
	case d.fallback != nil && d.fallback.Err == nil:
		return d.fallback.ImageID
	}
	return ""
}

func newLoop(a *Agent) *loop {
	return &loop{
		a:         a,
		opts:      a.opts,
		log:       a.log,
		clock:     a.opts.Clock,
		done:      make(chan pullDone),
		queued:    make(chan *imageState),
		pingRes:   make(chan error, 1),
		pruned:    make(chan []string, 1),
		described: map[string]string{},
		states:    map[string]*imageState{},
		hosts:     map[string]*hostState{},
		hostInfo:  map[string]state.HostDoc{},
		pulled:    map[string]string{},

		fallbackTags: map[string]fallbackTag{},
	}
}

// start reads what the agent keeps on disk and the configuration, pings
// the daemon once and tells systemd the agent is ready.
func (l *loop) start(ctx context.Context) {
	if l.opts.StateFile != "" {
		// Temp files of a write cut short by a crash or kill -9.
		left, _ := filepath.Glob(filepath.Join(filepath.Dir(l.opts.StateFile), ".state-*.tmp"))
		for _, f := range left {
			_ = os.Remove(f)
		}
	}
	l.loadPulled()
	l.initialEnv()
	l.loadConfig(true, false)
	if l.engine != nil {
		pctx, cancel := context.WithTimeout(ctx, pingTimeout)
		err := l.engine.Ping(pctx)
		cancel()
		l.pinged(err)
	}
	l.refreshAt = l.clock.Now().Add(l.jitter(l.opts.RefreshInterval))
	l.notify("READY=1")
	l.log.Info("agent started", "env_file", l.opts.EnvFile, "refresh_interval", l.opts.RefreshInterval.String(), "concurrency", l.opts.Concurrency)
}

// pingTimeout bounds one ping of the daemon.
const pingTimeout = 5 * time.Second

// shutdownGrace is how long shutdown waits for pulls to give up.
const shutdownGrace = 8 * time.Second

// shutdown waits for the goroutines the loop started: their ctx is done,
// so they stop and give up their results. A pull whose engine call ignores
// its cancellation is left behind after shutdownGrace, inside systemd's
// stop timeout, rather than hold the exit.
func (l *loop) shutdown() {
	l.notify("STOPPING=1")
	l.log.Info("shutting down; cancelling pulls in flight")
	finished := make(chan struct{})
	go func() { l.wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-l.clock.After(shutdownGrace):
		l.log.Warn("pulls still finishing after 8 s; exiting anyway")
		return
	}
	// The Docker client's idle connections each hold two goroutines.
	closeIdleConnections(l.engine)
}

func (l *loop) notify(state string) {
	if err := l.opts.Notifier.Notify(state); err != nil {
		l.log.Warn("sd_notify failed", "state", state, "error", errText(err))
	}
}

// pinged records a ping's answer: a daemon back up gets every image
// reconciled; one still down is pinged again after a backoff.
func (l *loop) pinged(err error) {
	if err == nil {
		if !l.daemonUp {
			l.log.Info("docker daemon reachable; reconciling every image")
		}
		l.daemonUp, l.pingFails = true, 0
		l.requeue(true)
		return
	}
	l.pingFails++
	delay := backoff(l.opts.DaemonRetry, l.pingFails, l.opts.Random)
	l.nextPing = l.clock.Now().Add(delay)
	if l.pingFails == 1 || l.pingFails%10 == 0 {
		l.log.Warn("docker daemon unreachable", "error", errText(err), "attempts", l.pingFails, "next_ping_s", delay.Seconds())
	}
	l.daemonUp = false
}

// nextWake is when the loop must look again without an event.
func (l *loop) nextWake() time.Time {
	now := l.clock.Now()
	wake := l.refreshAt
	if !l.saveRetry.IsZero() && l.saveRetry.Before(wake) {
		wake = l.saveRetry
	}
	if !l.daemonUp && !l.pinging && l.engine != nil && l.nextPing.Before(wake) {
		wake = l.nextPing
	}
	for _, st := range l.states {
		// A due image that step did not start waits for an event (a
		// pull ending or queuing its layers) or a wake of its own (a
		// host's cooldown, a ping, a queue lead): waking for it now
		// would spin the loop until then.
		if st.Due && st.cancel == nil && st.NextAttempt.After(now) && st.NextAttempt.Before(wake) {
			wake = st.NextAttempt
		}
		if lead := st.LastAttempt.Add(pull.QueueLead); st.queuing && lead.After(now) && lead.Before(wake) {
			wake = lead
		}
	}
	if l.flip != nil && l.flip.at.After(now) && l.flip.at.Before(wake) {
		wake = l.flip.at
	}
	for _, hs := range l.hosts {
		if hs.until.After(now) && hs.until.Before(wake) {
			wake = hs.until
		}
	}
	return wake
}

// jitter spreads d by ±10% so that a fleet of hosts does not refresh at
// once.
func (l *loop) jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.9 + 0.2*l.opts.Random()))
}

// maxErrorRunes bounds an error kept in the state and the log: a registry
// decides how long its messages are.
const maxErrorRunes = 512

// errText is err as stored and logged: one line, sanitised (no escape
// sequences, URL queries and credential parameters redacted) and bounded,
// whoever wrote it.
func errText(err error) string {
	return safetext.Line(err.Error(), maxErrorRunes)
}
