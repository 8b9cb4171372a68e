package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/agent/pull"
	"github.com/molecule-ai/pull-agent/agent/state"
	"github.com/molecule-ai/pull-agent/auth"
	"github.com/molecule-ai/pull-agent/internal/safetext"
)

// RetryPolicy bounds the hot retries of transient failures (network,
// server, stalled, verify, unknown): exponential backoff with full jitter,
// delay = random in [0, min(Max, Initial·2^(n-1))] before try n+1. After
// Attempts failures in a row the image waits for the next refresh.
type RetryPolicy struct {
	Initial  time.Duration
	Max      time.Duration
	Attempts int
}

// Options configures an Agent.
type Options struct {
	// EnvFile is the env file to read and watch.
	EnvFile string
	// Getenv is the process environment.
	Getenv func(string) string
	// NewEngine connects to the Docker daemon at an endpoint.
	NewEngine func(config.DockerEndpoint) (engine.Engine, error)
	// NewAuthorizer builds the credential selection for a configuration.
	NewAuthorizer func(config.Config) (pull.Authorizer, error)
	Logger        *slog.Logger
	// Notifier receives sd_notify states; nil sends none.
	Notifier Notifier

	RefreshInterval time.Duration
	Concurrency     int
	Timeouts        pull.PullTimeouts
	Retry           RetryPolicy
	// RateLimit is the per-host backoff after a 429 when the registry's
	// message names no delay (the daemon drops Retry-After headers): equal
	// jitter, never below half of the doubling ceiling.
	RateLimit RetryPolicy
	// DaemonRetry is the backoff of pings while Docker is unreachable.
	DaemonRetry RetryPolicy
	// Debounce is how quiet the env file's directory must be before a
	// change is read.
	Debounce time.Duration
	// Version is reported in the state document.
	Version string
	// StateFile is where the state document is saved on every change;
	// empty saves nothing.
	StateFile string
	// PulledFile records what the agent pulled itself (the only images
	// MOLECULE_PRUNE_PREVIOUS may remove); empty keeps it in memory.
	PulledFile string
}

// DefaultOptions returns the defaults of every tunable.
func DefaultOptions() Options {
	return Options{
		EnvFile:         config.DefaultEnvFile,
		RefreshInterval: 15 * time.Minute,
		Concurrency:     pull.DefaultConcurrency,
		Timeouts:        pull.DefaultPullTimeouts(),
		Retry:           RetryPolicy{Initial: 5 * time.Second, Max: 5 * time.Minute, Attempts: 8},
		RateLimit:       RetryPolicy{Initial: 30 * time.Second, Max: 10 * time.Minute},
		DaemonRetry:     RetryPolicy{Initial: 500 * time.Millisecond, Max: 30 * time.Second},
		Debounce:        150 * time.Millisecond,
	}
}

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
}

// Snapshot is a copy of the agent's state.
type Snapshot struct {
	Config      *config.Config // nil until a configuration was accepted
	ConfigError string
	ConfigAt    time.Time
	DaemonUp    bool
	Images      []ImageStatus // in runtime order
	NextRefresh time.Time
	Cooldowns   map[string]time.Time // registry host → end of a rate-limit backoff
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

type imageState struct {
	ImageStatus
	fresh  bool // the running pull is not a refresh of a warm image
	due    bool
	cancel context.CancelCauseFunc
	puller *pull.Puller
}

type hostState struct {
	until   time.Time
	strikes int
}

type pullDone struct {
	ref    string
	res    pull.PullResult
	st     *imageState
	remote digest.Digest // after a failed refresh: what the registry serves
}

// Agent keeps the configured images warm: it watches the env file, pulls
// on start, on every effective change and at each refresh, retries by error
// class and reports to systemd.
type Agent struct {
	opts    Options
	log     *slog.Logger
	reload  chan struct{}
	done    chan pullDone
	pingRes chan error
	baseEnv func(string) string

	mu       sync.Mutex
	cfg      *config.Config
	cfgErr   error
	cfgAt    time.Time
	engine   engine.Engine
	puller   *pull.Puller
	images   []config.Image
	states   map[string]*imageState
	hosts    map[string]*hostState
	inflight int
	// inflightFresh counts pulls of images not yet warm (downloads).
	inflightFresh int
	daemonUp      bool
	pinging       bool
	pingFails     int
	nextPing      time.Time
	refreshAt     time.Time
	status        string
	// wg counts the goroutines the loop starts (pulls, pings, prunes);
	// shutdown waits for them. Each gives up its result once the ctx of
	// Run is done, when the loop no longer reads it.
	wg sync.WaitGroup

	started       time.Time
	authz         pull.Authorizer
	hostInfo      map[string]state.HostDoc
	lastReconcile time.Time
	lastSaved     []byte
	saveRetry     time.Time // when a failed state save is retried; zero when saving works
	metrics       *Metrics
	pruned        chan []string

	// Owned by the loop goroutine; no status request reads them.
	pulled      map[string]string // ref → image ID, pulled by this agent
	pulledDirty bool              // pulled changed since it was last written
	previous    []string          // refs of the previous prefix, until pruned
	pruning     bool
}

// New returns an Agent. Zero fields of opts take DefaultOptions' values.
func New(opts Options) (*Agent, error) {
	def := DefaultOptions()
	if opts.EnvFile == "" {
		opts.EnvFile = def.EnvFile
	}
	if opts.Getenv == nil {
		return nil, errors.New("agent: Getenv is required")
	}
	if opts.NewEngine == nil || opts.NewAuthorizer == nil || opts.Logger == nil {
		return nil, errors.New("agent: NewEngine, NewAuthorizer and Logger are required")
	}
	if opts.Notifier == nil {
		opts.Notifier = nopNotifier{}
	}
	if opts.RefreshInterval <= 0 {
		opts.RefreshInterval = def.RefreshInterval
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = def.Concurrency
	}
	if opts.Timeouts == (pull.PullTimeouts{}) {
		opts.Timeouts = def.Timeouts
	}
	if opts.Retry.Initial <= 0 {
		opts.Retry = def.Retry
	}
	if opts.RateLimit.Initial <= 0 {
		opts.RateLimit = def.RateLimit
	}
	if opts.DaemonRetry.Initial <= 0 {
		opts.DaemonRetry = def.DaemonRetry
	}
	if opts.Debounce <= 0 {
		opts.Debounce = def.Debounce
	}
	return &Agent{
		opts:     opts,
		log:      opts.Logger.With("component", "agent"),
		reload:   make(chan struct{}, 1),
		done:     make(chan pullDone),
		pingRes:  make(chan error, 1),
		states:   map[string]*imageState{},
		hosts:    map[string]*hostState{},
		hostInfo: map[string]state.HostDoc{},
		started:  time.Now(),
		metrics:  NewMetrics(),
		pulled:   map[string]string{},
		pruned:   make(chan []string, 1),
	}, nil
}

// Metrics returns the agent's Prometheus collectors.
func (a *Agent) Metrics() *Metrics { return a.metrics }

func (a *Agent) describeHost(host string) string {
	a.mu.Lock()
	authz := a.authz
	a.mu.Unlock()
	if d, ok := authz.(interface{ Describe(string) auth.Source }); ok {
		return string(d.Describe(host))
	}
	return ""
}

// Reload asks the agent to re-read the env file now and to retry images
// that wait for the next refresh (auth, not-found, disk). SIGHUP calls it.
func (a *Agent) Reload() {
	select {
	case a.reload <- struct{}{}:
	default:
	}
}

// Snapshot returns a copy of the agent's state.
func (a *Agent) Snapshot() Snapshot {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := Snapshot{ConfigAt: a.cfgAt, DaemonUp: a.daemonUp, NextRefresh: a.refreshAt, Cooldowns: map[string]time.Time{}}
	if a.cfg != nil {
		c := *a.cfg
		s.Config = &c
	}
	if a.cfgErr != nil {
		s.ConfigError = errText(a.cfgErr)
	}
	for _, img := range a.images {
		if st := a.states[img.Ref]; st != nil {
			is := st.ImageStatus
			is.InFlight = st.cancel != nil
			is.Due = st.due
			s.Images = append(s.Images, is)
		}
	}
	now := time.Now()
	for h, hs := range a.hosts {
		if hs.until.After(now) {
			s.Cooldowns[h] = hs.until
		}
	}
	return s
}

// Run runs the agent until ctx is done. It returns nil on a clean shutdown;
// an error only when it cannot start at all (no inotify). Every goroutine
// it starts has ended when it returns, but for pulls that ignore their
// cancellation for more than 8 s (see shutdown).
func (a *Agent) Run(ctx context.Context) error {
	w, err := NewWatcher(a.opts.EnvFile, a.opts.Debounce, a.opts.Logger)
	if err != nil {
		return err
	}
	if err := w.Start(); err != nil {
		return fmt.Errorf("watching %s: %w", a.opts.EnvFile, err)
	}
	wctx, stopWatch := context.WithCancel(ctx)
	var watching sync.WaitGroup
	watching.Go(func() { w.Run(wctx) })
	defer watching.Wait()
	defer stopWatch()

	if a.opts.StateFile != "" {
		// Temp files of a write cut short by a crash or kill -9.
		left, _ := filepath.Glob(filepath.Join(filepath.Dir(a.opts.StateFile), ".state-*.tmp"))
		for _, f := range left {
			_ = os.Remove(f)
		}
	}
	a.loadPulled()
	a.initialEnv()
	a.loadConfig(true, false)
	if a.engine != nil {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := a.engine.Ping(pctx)
		cancel()
		a.pinged(err)
	}
	a.mu.Lock() // the status socket is already serving Snapshot
	a.refreshAt = time.Now().Add(a.jitter(a.opts.RefreshInterval))
	a.mu.Unlock()
	a.notify("READY=1")
	a.log.Info("agent started", "env_file", a.opts.EnvFile, "refresh_interval", a.opts.RefreshInterval.String(), "concurrency", a.opts.Concurrency)

	var watchdog <-chan time.Time
	if wd := a.opts.Notifier.WatchdogInterval(); wd > 0 {
		t := time.NewTicker(wd / 2)
		defer t.Stop()
		watchdog = t.C
		a.notify("WATCHDOG=1")
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		a.savePulled()
		a.step(ctx)
		a.publishStatus()
		a.saveState()
		timer.Reset(time.Until(a.nextWake()))
		select {
		case <-ctx.Done():
			return a.shutdown()
		case <-w.Changes():
			a.loadConfig(false, false)
		case <-a.reload:
			a.log.Info("reload requested")
			a.loadConfig(false, true)
		case d := <-a.done:
			a.finished(ctx, d)
		case err := <-a.pingRes:
			a.pinging = false
			a.pinged(err)
		case refs := <-a.pruned:
			for _, r := range refs {
				delete(a.pulled, r)
			}
			a.pulledDirty = a.pulledDirty || len(refs) > 0
			a.pruning = false
		case <-timer.C:
		case <-watchdog:
			// Sent from the loop that does the work, so a wedged loop
			// stops the pings and systemd restarts the agent.
			a.notify("WATCHDOG=1")
		}
	}
}

func (a *Agent) notify(state string) {
	if err := a.opts.Notifier.Notify(state); err != nil {
		a.log.Warn("sd_notify failed", "state", state, "error", errText(err))
	}
}

// initialEnv drops from the process environment the keys copied there
// from the same env file at start (by an EnvironmentFile= a drop-in may
// add; the shipped unit has none): otherwise a key later removed from the
// file would fall back to its old value instead of the default.
func (a *Agent) initialEnv() {
	getenv := a.opts.Getenv
	vars, err := config.ReadEnvFile(a.opts.EnvFile)
	if err != nil {
		a.baseEnv = getenv
		return
	}
	fromFile := map[string]string{}
	for _, v := range vars {
		fromFile[v.Key] = v.Value
	}
	a.baseEnv = func(k string) string {
		if fv, ok := fromFile[k]; ok && getenv(k) == fv {
			return ""
		}
		return getenv(k)
	}
}

// loadConfig reads the env file and applies it if it is valid and differs
// from the running configuration. force also re-queues images waiting for
// the next refresh. The file is read and the configuration built without
// the lock, so that a status request never waits for the disk; the loop
// alone writes cfg, engine and baseEnv, so it reads them without the lock.
func (a *Agent) loadConfig(initial, force bool) {
	vars, err := config.ReadEnvFile(a.opts.EnvFile)
	switch {
	case err == nil:
	case config.IsNotExist(err) && a.cfg == nil:
		if initial {
			a.log.Info("env file absent; using the process environment and defaults", "env_file", a.opts.EnvFile)
		}
		vars = nil
	case config.IsNotExist(err):
		a.log.Warn("env file is gone; keeping the last good configuration", "env_file", a.opts.EnvFile, "prefix", a.cfg.Prefix)
		a.mu.Lock()
		defer a.mu.Unlock()
		a.cfgErr = fmt.Errorf("%s is gone; running on the last good configuration", a.opts.EnvFile)
		if force {
			a.requeueLocked(false)
		}
		return
	default:
		a.refuse(err, force)
		return
	}
	cfg, err := config.LoadConfig(a.opts.EnvFile, vars, a.baseEnv)
	if err == nil {
		config.WarnEnvFileMode(a.log, a.opts.EnvFile, vars)
		config.WarnUnusedKeys(a.log, a.opts.EnvFile, vars)
		_, err = cfg.Images()
	}
	if err != nil {
		a.refuse(err, force)
		return
	}
	if a.cfg != nil && reflect.DeepEqual(*a.cfg, cfg) {
		a.log.Debug("env file read; configuration unchanged")
		a.mu.Lock()
		defer a.mu.Unlock()
		a.cfgErr = nil
		if force {
			a.requeueLocked(false)
		}
		return
	}
	a.apply(cfg)
}

// refuse records a configuration that cannot be used; force also
// re-queues images waiting for the next refresh.
func (a *Agent) refuse(err error, force bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.refuseLocked(err)
	if force {
		a.requeueLocked(false)
	}
}

func (a *Agent) refuseLocked(err error) {
	a.cfgErr = err
	a.metrics.configLoad(false)
	if a.cfg == nil {
		a.log.Error("configuration refused; nothing to pull until the env file is fixed", "env_file", a.opts.EnvFile, "error", errText(err))
		return
	}
	a.log.Error("configuration refused; keeping the last good configuration", "env_file", a.opts.EnvFile, "error", errText(err), "prefix", a.cfg.Prefix)
}

// apply makes cfg the running configuration. The Docker client, the
// credential selection and the puller are built before the lock is taken:
// building them reads certificate files and looks at the Docker socket.
func (a *Agent) apply(cfg config.Config) {
	prev := a.cfg
	engine := a.engine
	if engine == nil {
		e, err := a.opts.NewEngine(cfg.DockerEndpoint())
		if err != nil {
			a.refuse(err, false)
			return
		}
		engine = e
	} else if prev != nil && cfg.DockerEndpoint() != prev.DockerEndpoint() {
		a.log.Warn("DOCKER_HOST, DOCKER_TLS_VERIFY or DOCKER_CERT_PATH changed; restart the agent to use it", "in_use", prev.DockerHost, "configured", cfg.DockerHost,
			"tls_verify_in_use", prev.DockerTLSVerify, "tls_verify_configured", cfg.DockerTLSVerify)
		cfg.DockerHost, cfg.DockerTLSVerify, cfg.DockerCertPath = prev.DockerHost, prev.DockerTLSVerify, prev.DockerCertPath
	}
	authz, err := a.opts.NewAuthorizer(cfg)
	var puller *pull.Puller
	if err == nil {
		puller, err = pull.NewPuller(engine, authz, a.opts.Logger, pull.OptionsFor(cfg, a.opts.Concurrency, a.opts.Timeouts))
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.engine = engine // kept even when the rest is refused: it is built once
	if err != nil {
		a.refuseLocked(err)
		return
	}
	a.cfgErr = nil
	images, _ := cfg.Images()
	a.cfg, a.puller, a.cfgAt, a.authz = &cfg, puller, time.Now(), authz
	a.hostInfo = map[string]state.HostDoc{}
	attrs := []any{"prefix", cfg.Prefix, "images", len(images), "platform", cfg.Platform, "env_file", a.opts.EnvFile}
	if prev != nil && prev.Prefix != cfg.Prefix {
		attrs = append(attrs, "previous_prefix", prev.Prefix)
		if old, err := prev.Images(); err == nil {
			a.previous = a.previous[:0]
			for _, img := range old {
				a.previous = append(a.previous, img.Ref)
			}
		}
	}
	a.log.Info("configuration loaded", attrs...)
	a.metrics.configLoad(true)

	want := map[string]bool{}
	for _, img := range images {
		want[img.Ref] = true
	}
	for ref, st := range a.states {
		if want[ref] {
			continue
		}
		if st.cancel != nil {
			st.cancel(errors.New("image left the configured set"))
			a.log.Info("pull cancelled: image left the configured set", "image", ref)
		}
		delete(a.states, ref)
	}
	platformChanged := prev != nil && prev.Platform != cfg.Platform
	for _, img := range images {
		st, ok := a.states[img.Ref]
		if !ok {
			a.states[img.Ref] = &imageState{ImageStatus: ImageStatus{Image: img, State: state.Pending, Alias: cfg.AliasRef(img.Runtime)}, due: true}
			continue
		}
		if alias := cfg.AliasRef(img.Runtime); alias != st.Alias {
			st.Alias, st.due = alias, true // tag anew
		}
		// Credentials or platform may have changed: what failed gets a
		// fresh try, and a new platform means new images.
		if st.State != state.Warm || platformChanged {
			st.due, st.Attempts, st.NextAttempt = true, 0, time.Time{}
		}
	}
	a.images = images
}

// requeueLocked makes every image that is not being pulled due now; with
// all=false only those not warm.
func (a *Agent) requeueLocked(all bool) {
	for _, st := range a.states {
		if st.cancel != nil {
			continue
		}
		if all || st.State != state.Warm {
			st.due, st.Attempts, st.NextAttempt = true, 0, time.Time{}
		}
	}
}

// step starts what is due: a refresh, a ping while Docker is down, pulls.
func (a *Agent) step(ctx context.Context) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	if !now.Before(a.refreshAt) {
		a.log.Info("refresh: re-pulling moving tags", "images", len(a.images))
		a.requeueLocked(true)
		a.refreshAt = now.Add(a.jitter(a.opts.RefreshInterval))
	}
	if a.engine == nil || a.puller == nil {
		return
	}
	if !a.daemonUp {
		if !a.pinging && !now.Before(a.nextPing) {
			a.pinging = true
			engine := a.engine
			a.wg.Add(1)
			go func() {
				defer a.wg.Done()
				pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				err := engine.Ping(pctx)
				select {
				case a.pingRes <- err:
				case <-ctx.Done():
				}
			}()
		}
		return
	}
	for _, img := range a.images {
		if a.inflight >= a.opts.Concurrency*pull.RefreshConcurrencyFactor {
			return
		}
		st := a.states[img.Ref]
		if st == nil || !st.due || st.cancel != nil || now.Before(st.NextAttempt) {
			continue
		}
		// A refresh of a warm image is a manifest HEAD unless its tag
		// moved: a wider limit; anything else keeps to Concurrency.
		if st.State != state.Warm && a.inflightFresh >= a.opts.Concurrency {
			continue
		}
		if hs := a.hosts[img.Host()]; hs != nil && now.Before(hs.until) {
			continue
		}
		a.startLocked(ctx, st)
	}
}

func (a *Agent) startLocked(ctx context.Context, st *imageState) {
	pctx, cancel := context.WithCancelCause(ctx)
	st.cancel, st.due, st.puller = cancel, false, a.puller
	st.LastAttempt = time.Now()
	if st.State != state.Warm {
		st.State = state.Pulling
	}
	st.Progress = engine.Progress{Phase: engine.PhaseResolving}
	a.inflight++
	st.fresh = st.State != state.Warm
	if st.fresh {
		a.inflightFresh++
	}
	img, puller, wasWarm, alias, engine := st.Image, st.puller, st.State == state.Warm || st.State == state.Stale, st.Alias, a.engine
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		defer cancel(nil)
		res, pulled := a.presentPin(pctx, img)
		if !pulled {
			res = puller.Pull(pctx, img, a)
		}
		if res.Err == nil && alias != "" {
			// The alias follows the image every time it is verified.
			if err := engine.ImageTag(pctx, res.ImageID, alias); err != nil {
				a.log.Warn("tagging the alias failed", "image", img.Ref, "alias", alias, "error", errText(err))
			}
		}
		d := pullDone{ref: img.Ref, res: res, st: st}
		if c := pull.ClassOf(res.Err); res.Err != nil && wasWarm && c != pull.ClassCanceled && c != pull.ClassDaemon {
			// Is the registry serving something newer than what we hold?
			if ri, err := puller.Remote(pctx, img); err == nil {
				d.remote = ri.Digest
			}
		}
		select {
		case a.done <- d:
		case <-ctx.Done(): // the loop has stopped reading
		}
	}()
}

// presentPin reports a pinned image the daemon already holds as warm
// without asking the registry: a digest cannot move.
func (a *Agent) presentPin(ctx context.Context, img config.Image) (pull.PullResult, bool) {
	if img.Pin == "" {
		return pull.PullResult{}, false
	}
	info, err := a.engine.ImageInspect(ctx, img.Ref)
	if err != nil || !pull.HasRepoDigest(info.RepoDigests, img.Repository(), img.Pin) {
		return pull.PullResult{}, false
	}
	return pull.PullResult{Image: img, Digest: img.Pin, ImageID: info.ID, Size: info.Size, Started: time.Now(), UpToDate: true}, true
}

// PullStarted implements Observer.
func (a *Agent) PullStarted(img config.Image, src auth.Source) {
	a.mu.Lock()
	st := a.states[img.Ref]
	warm := st != nil && st.State == state.Warm
	a.mu.Unlock()
	lvl := slog.LevelInfo
	if warm {
		lvl = slog.LevelDebug // a refresh; only a change is worth a line
	}
	a.log.Log(context.Background(), lvl, "pull started", "runtime", img.Runtime, "image", img.Ref, "auth", string(src))
}

// PullProgress implements Observer.
func (a *Agent) PullProgress(img config.Image, p engine.Progress) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if st := a.states[img.Ref]; st != nil && st.cancel != nil {
		st.Progress = p
	}
}

// PullFinished implements Observer; results are handled in the loop.
func (a *Agent) PullFinished(pull.PullResult) {}

func (a *Agent) finished(ctx context.Context, d pullDone) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.inflight--
	if d.st.fresh {
		a.inflightFresh--
	}
	st := a.states[d.ref]
	if st != d.st {
		return // the image left the set (or came back as a new entry)
	}
	st.cancel = nil
	r := d.res
	st.Duration, st.Bytes = r.Duration, r.Bytes
	now := time.Now()
	if r.Source != "" {
		a.hostInfo[r.Image.Host()] = state.HostDoc{Host: r.Image.Host(), CredentialSource: string(r.Source), TokenExpiresAt: tp(r.CredentialsExpire)}
	}
	a.metrics.observePull(r)
	defer a.checkConvergedLocked(now)
	log := a.log.With("runtime", r.Image.Runtime, "image", r.Image.Ref)
	if r.Err == nil {
		st.State, st.Digest, st.ImageID, st.Size, st.RemoteDigest = state.Warm, r.Digest, r.ImageID, r.Size, r.Digest
		st.LastSuccess, st.Attempts, st.LastError, st.LastClass, st.NextAttempt = now, 0, "", "", time.Time{}
		st.Progress = engine.Progress{Phase: engine.PhaseDone}
		if hs := a.hosts[r.Image.Host()]; hs != nil {
			hs.strikes = 0
		}
		if r.UpToDate {
			log.Debug("image up to date", "digest", r.Digest.String())
		} else {
			log.Info("image pulled", "digest", r.Digest.String(), "bytes", r.Bytes, "duration_s", r.Duration.Seconds())
		}
		if r.ImageID != "" && a.pulled[r.Image.Ref] != r.ImageID {
			a.pulled[r.Image.Ref] = r.ImageID
			a.pulledDirty = true // written by the loop, once the lock is released
		}
		a.maybePruneLocked(ctx)
		return
	}
	class := pull.ClassOf(r.Err)
	st.LastError, st.LastClass = errText(r.Err), class
	if d.remote != "" {
		st.RemoteDigest = d.remote
		if d.remote != st.Digest && st.Digest != "" {
			st.State = state.Stale
		}
	}
	if st.State != state.Warm && st.State != state.Stale {
		st.State = state.Failed
	}
	st.Progress = engine.Progress{Phase: engine.PhaseFailed}
	switch class {
	case pull.ClassCanceled:
		st.due = true
		if st.State == state.Failed {
			st.State = state.Pending
		}
	case pull.ClassDaemon:
		st.due = true
		if a.daemonUp {
			a.daemonUp = false
			a.pingFails = 0
			a.nextPing = now
			log.Warn("docker daemon unreachable; waiting for it", "error", st.LastError)
		}
	case pull.ClassRateLimited:
		host := r.Image.Host()
		hs := a.hosts[host]
		if hs == nil {
			hs = &hostState{}
			a.hosts[host] = hs
		}
		delay, fromHeader := retryAfter(st.LastError)
		if !fromHeader {
			// Pulls that were already running when the host refused the
			// first of them come back with 429 at the same moment: one
			// episode, one strike. Only a 429 after a cooldown ended
			// doubles it.
			if now.Before(hs.until) {
				delay = 0
			} else {
				hs.strikes++
				delay = equalJitter(a.opts.RateLimit, hs.strikes)
			}
		}
		if until := now.Add(delay); until.After(hs.until) {
			hs.until = until
		}
		st.due, st.NextAttempt = true, hs.until
		log.Warn("registry rate-limited the pull; backing off this host", "host", host, "delay_s", time.Until(hs.until).Seconds(), "retry_after", fromHeader)
	case pull.ClassAuth, pull.ClassNotFound, pull.ClassDisk:
		if errors.Is(r.Err, auth.ErrUnavailable) {
			a.retryLocked(st, class, now, log)
			return
		}
		st.Attempts++
		st.due = false
		log.Error("pull failed; next try at the next refresh, on a configuration change or on SIGHUP", "class", string(class), "error", st.LastError)
	default: // network, server, stalled, verify, unknown
		a.retryLocked(st, class, now, log)
	}
}

// retryLocked schedules a bounded retry with backoff of a failure that
// should pass on its own.
func (a *Agent) retryLocked(st *imageState, class pull.ErrorClass, now time.Time, log *slog.Logger) {
	st.Attempts++
	if st.Attempts > a.opts.Retry.Attempts {
		st.due = false
		log.Error("pull failed; retries exhausted until the next refresh", "class", string(class), "attempts", st.Attempts, "error", st.LastError)
		return
	}
	delay := backoff(a.opts.Retry, st.Attempts)
	st.due, st.NextAttempt = true, now.Add(delay)
	log.Warn("pull failed; retry scheduled", "class", string(class), "attempt", st.Attempts, "delay_s", delay.Seconds(), "error", st.LastError)
}

// maybePruneLocked starts removing the previous prefix's images once
// every current image is warm, if configured. The removal runs until done
// or until ctx (Run's) is done.
func (a *Agent) maybePruneLocked(ctx context.Context) {
	if a.cfg == nil || !a.cfg.PrunePrevious || len(a.previous) == 0 || a.pruning {
		return
	}
	current := map[string]bool{}
	for _, img := range a.images {
		st := a.states[img.Ref]
		if st == nil || st.State != state.Warm {
			return
		}
		current[img.Ref] = true
		if st.Alias != "" {
			current[st.Alias] = true
		}
	}
	var candidates []string
	for _, ref := range a.previous {
		if current[ref] {
			continue // back in use, or an alias target
		}
		if _, mine := a.pulled[ref]; !mine {
			a.log.Info("not pruning an image the agent did not pull", "image", ref)
			continue
		}
		candidates = append(candidates, ref)
	}
	a.previous = nil
	if len(candidates) == 0 {
		return
	}
	a.pruning = true
	engine := a.engine
	a.wg.Go(func() {
		removed := a.prune(ctx, engine, candidates)
		select {
		case a.pruned <- removed:
		case <-ctx.Done():
		}
	})
}

// prune removes refs no container uses and returns the ones removed.
func (a *Agent) prune(ctx context.Context, engine engine.Engine, refs []string) []string {
	inUse, err := engine.ContainerImageIDs(ctx)
	if err != nil {
		a.log.Warn("not pruning: cannot list containers", "error", errText(err))
		return nil
	}
	var removed []string
	var freed int64
	for _, ref := range refs {
		info, err := engine.ImageInspect(ctx, ref)
		if err != nil {
			continue
		}
		if inUse[info.ID] {
			a.log.Info("not pruning an image a container uses", "image", ref, "image_id", info.ID)
			continue
		}
		res, err := engine.ImageRemove(ctx, ref)
		if err != nil {
			a.log.Warn("pruning failed", "image", ref, "error", errText(err))
			continue
		}
		removed = append(removed, ref)
		for _, d := range res.Deleted {
			if d == info.ID {
				freed += info.Size
			}
		}
	}
	a.log.Info("previous prefix pruned", "images_removed", len(removed), "bytes_freed", freed)
	return removed
}

func (a *Agent) loadPulled() {
	if a.opts.PulledFile == "" {
		return
	}
	data, err := os.ReadFile(a.opts.PulledFile)
	if err != nil {
		return
	}
	var rec struct {
		Pulled map[string]string `json:"pulled"`
	}
	if err := json.Unmarshal(data, &rec); err != nil {
		a.log.Warn("ignoring an unreadable record of pulled images", "file", a.opts.PulledFile, "error", errText(err))
		return
	}
	for k, v := range rec.Pulled {
		a.pulled[k] = v
	}
}

// savePulled writes the record of pulled images when it changed. Only the
// loop calls it, so writes never overlap, and it holds no lock while the
// file is written and synced.
func (a *Agent) savePulled() {
	if !a.pulledDirty {
		return
	}
	a.pulledDirty = false
	if a.opts.PulledFile == "" {
		return
	}
	data, _ := json.MarshalIndent(struct {
		Pulled map[string]string `json:"pulled"`
	}{a.pulled}, "", "  ")
	if err := state.WriteFileAtomic(a.opts.PulledFile, append(data, '\n'), 0o644); err != nil {
		a.log.Warn("recording pulled images failed", "file", a.opts.PulledFile, "error", errText(err))
	}
}

// checkConvergedLocked records a finished reconcile: nothing in flight and
// nothing due now.
func (a *Agent) checkConvergedLocked(now time.Time) {
	if a.inflight > 0 {
		return
	}
	for _, st := range a.states {
		if st.due && !now.Before(st.NextAttempt) {
			return
		}
	}
	a.lastReconcile = now
	a.metrics.reconciled(now)
}

// saveState writes the state document when it changed (progress aside).
func (a *Agent) saveState() {
	doc := a.Document()
	a.metrics.setState(doc)
	if a.opts.StateFile == "" {
		return
	}
	key := doc
	key.WrittenAt = time.Time{}
	key.Images = append([]state.ImageDoc(nil), doc.Images...)
	for i := range key.Images {
		key.Images[i].Progress = nil
	}
	b, _ := json.Marshal(key)
	if bytes.Equal(b, a.lastSaved) {
		return
	}
	if err := state.WriteStateFile(a.opts.StateFile, doc); err != nil {
		// Said once, not at every change; retried until it works.
		if a.saveRetry.IsZero() {
			a.log.Warn("saving state failed; the live status is unaffected; retrying every few seconds", "state_file", a.opts.StateFile, "error", errText(err))
		}
		a.saveRetry = time.Now().Add(stateSaveRetry)
		return
	}
	if !a.saveRetry.IsZero() {
		a.log.Info("saving state works again", "state_file", a.opts.StateFile)
		a.saveRetry = time.Time{}
	}
	a.lastSaved = b
}

// stateSaveRetry is how soon a failed state save is tried again.
const stateSaveRetry = 5 * time.Second

func (a *Agent) pinged(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err == nil {
		if !a.daemonUp {
			a.log.Info("docker daemon reachable; reconciling every image")
		}
		a.daemonUp, a.pingFails = true, 0
		a.requeueLocked(true)
		return
	}
	a.pingFails++
	delay := backoff(a.opts.DaemonRetry, a.pingFails)
	a.nextPing = time.Now().Add(delay)
	if a.pingFails == 1 || a.pingFails%10 == 0 {
		a.log.Warn("docker daemon unreachable", "error", errText(err), "attempts", a.pingFails, "next_ping_s", delay.Seconds())
	}
	a.daemonUp = false
}

// nextWake is when the loop must look again without an event.
func (a *Agent) nextWake() time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	wake := a.refreshAt
	if !a.saveRetry.IsZero() && a.saveRetry.Before(wake) {
		wake = a.saveRetry
	}
	if !a.daemonUp && !a.pinging && a.engine != nil && a.nextPing.Before(wake) {
		wake = a.nextPing
	}
	for _, st := range a.states {
		if st.due && st.cancel == nil && st.NextAttempt.Before(wake) {
			wake = st.NextAttempt
		}
	}
	for _, hs := range a.hosts {
		if hs.until.After(time.Now()) && hs.until.Before(wake) {
			wake = hs.until
		}
	}
	return wake
}

func (a *Agent) publishStatus() {
	s := a.Snapshot()
	pulling := 0
	for _, i := range s.Images {
		if i.InFlight {
			pulling++
		}
	}
	text := fmt.Sprintf("%d/%d images warm", s.Warm(), len(s.Images))
	if s.Config != nil {
		text += " from " + s.Config.Prefix
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
	if text != a.status {
		a.status = text
		a.notify("STATUS=" + text)
	}
}

// shutdown waits for the goroutines the loop started: their ctx is done,
// so they stop and give up their results. A pull whose engine call ignores
// its cancellation is left behind after 8 s, inside systemd's stop
// timeout, rather than hold the exit.
func (a *Agent) shutdown() error {
	a.notify("STOPPING=1")
	a.log.Info("shutting down; cancelling pulls in flight")
	finished := make(chan struct{})
	go func() { a.wg.Wait(); close(finished) }()
	timer := time.NewTimer(8 * time.Second)
	defer timer.Stop()
	select {
	case <-finished:
	case <-timer.C:
		a.log.Warn("pulls still finishing after 8 s; exiting anyway")
		return nil
	}
	// The Docker client's idle connections each hold two goroutines.
	a.closeIdleConnections()
	return nil
}

// jitter spreads d by ±10% so that a fleet of hosts does not refresh at
// once.
func (a *Agent) jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.9 + 0.2*rand.Float64()))
}

// backoff is the delay before try n+1: full jitter over an exponential cap.
func backoff(p RetryPolicy, n int) time.Duration {
	ceil := p.Initial
	for i := 1; i < n && ceil < p.Max; i++ {
		ceil *= 2
	}
	ceil = min(ceil, p.Max)
	if ceil <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(int64(ceil) + 1))
}

// equalJitter is half the doubling ceiling plus a random part of the other
// half: spread out, but never a near-immediate retry.
func equalJitter(p RetryPolicy, n int) time.Duration {
	ceil := p.Initial
	for i := 1; i < n && ceil < p.Max; i++ {
		ceil *= 2
	}
	ceil = min(ceil, p.Max)
	return ceil/2 + time.Duration(rand.Int64N(int64(ceil/2)+1))
}

var retryAfterRE = regexp.MustCompile(`(?i)retry[- ]after[":= ]+(\d+)`)

// retryAfter finds a Retry-After delay in seconds in a registry's message,
// where registries put it; the daemon does not pass the header on.
func retryAfter(msg string) (time.Duration, bool) {
	m := retryAfterRE.FindStringSubmatch(msg)
	if m == nil {
		return 0, false
	}
	n, err := strconv.Atoi(m[1])
	if err != nil || n <= 0 || n > 3600 {
		return 0, false
	}
	return time.Duration(n) * time.Second, true
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
