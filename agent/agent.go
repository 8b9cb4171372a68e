package agent

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/agent/pull"
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

// Clock is where the agent reads the time and waits. Tests run the agent
// in a testing/synctest bubble, where SystemClock's time is virtual.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

// SystemClock is the time package's clock.
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// After returns time.After(d).
func (SystemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Options configures an Agent.
type Options struct {
	// EnvFile is the env file to read.
	EnvFile string
	// Changes delivers a value whenever the env file may have changed (a
	// Watcher's Changes); nil reads it only at start and on Reload.
	Changes <-chan struct{}
	// CredentialChanges delivers a value whenever the credentials may have
	// changed (a Watcher of Docker's config.json): images whose last pull
	// failed on auth are tried again at once. nil: only Reload, a
	// configuration change or the refresh retries them.
	CredentialChanges <-chan struct{}
	// Getenv is the process environment.
	Getenv func(string) string
	// NewEngine connects to the Docker daemon at an endpoint.
	NewEngine func(config.DockerEndpoint) (engine.Engine, error)
	// NewAuthorizer builds the credential selection for a configuration.
	NewAuthorizer func(config.Config) (pull.Authorizer, error)
	Logger        *slog.Logger
	// Notifier receives sd_notify states; nil sends none.
	Notifier Notifier
	// Clock is the time; nil is SystemClock.
	Clock Clock
	// Random returns a number in [0, 1) for the jitter of retries and
	// refreshes; nil is math/rand/v2's Float64.
	Random func() float64

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
	// change is read (by the Watcher cmd builds).
	Debounce time.Duration
	// Version is reported in the state document.
	Version string
	// StateFile is where the state document is saved on every change;
	// empty saves nothing.
	StateFile string
	// PulledFile records what the agent pulled itself (the only images
	// MOLECULE_PRUNE_PREVIOUS may remove); empty keeps it in memory.
	PulledFile string
	// FlipFile keeps a flip scheduled by MOLECULE_FLIP_SPREAD across a
	// restart; empty keeps it in memory.
	FlipFile string
	// HostSeed fixes this host's delay within MOLECULE_FLIP_SPREAD (see
	// HostSeed); nil is a random seed per run.
	HostSeed []byte
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

// Agent keeps the configured images warm: it reads the env file on every
// change, pulls on start, on every effective change and at each refresh,
// retries by error class and reports to systemd.
//
// Its fields are set by New and never written again. The scheduler's
// state lives in a loop that belongs to Run's goroutine; readers (the
// status socket, metrics, sd_notify) see the immutable view the loop
// publishes after each change.
type Agent struct {
	opts    Options
	log     *slog.Logger
	reload  chan struct{}
	metrics *Metrics
	started time.Time
	view    atomic.Pointer[view]
}

// New returns an Agent. Zero fields of opts take DefaultOptions' values.
func New(opts Options) (*Agent, error) {
	if opts.Getenv == nil {
		return nil, errors.New("agent: Getenv is required")
	}
	if opts.NewEngine == nil || opts.NewAuthorizer == nil || opts.Logger == nil {
		return nil, errors.New("agent: NewEngine, NewAuthorizer and Logger are required")
	}
	opts = withDefaults(opts)
	a := &Agent{
		opts:    opts,
		log:     opts.Logger.With("component", "agent"),
		reload:  make(chan struct{}, 1),
		metrics: NewMetrics(),
		started: opts.Clock.Now(),
	}
	a.view.Store(&view{})
	return a, nil
}

// withDefaults fills the zero fields of opts.
func withDefaults(opts Options) Options {
	def := DefaultOptions()
	if opts.EnvFile == "" {
		opts.EnvFile = def.EnvFile
	}
	if opts.Notifier == nil {
		opts.Notifier = nopNotifier{}
	}
	if opts.Clock == nil {
		opts.Clock = SystemClock{}
	}
	if opts.Random == nil {
		opts.Random = rand.Float64
	}
	if opts.HostSeed == nil {
		opts.HostSeed = []byte(strconv.FormatUint(rand.Uint64(), 16))
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
	return opts
}

// Metrics returns the agent's Prometheus collectors.
func (a *Agent) Metrics() *Metrics { return a.metrics }

// Reload asks the agent to re-read the env file now and to retry images
// that wait for the next refresh (auth, not-found, disk). SIGHUP calls it.
func (a *Agent) Reload() {
	select {
	case a.reload <- struct{}{}:
	default:
	}
}

// Run runs the agent until ctx is done and returns nil. Every goroutine
// it starts has ended when it returns, but for pulls that ignore their
// cancellation for more than 8 s (see shutdown). Run is called once.
func (a *Agent) Run(ctx context.Context) error {
	l := newLoop(a)
	l.start(ctx)
	var watchdog <-chan time.Time
	if wd := a.opts.Notifier.WatchdogInterval(); wd > 0 {
		t := time.NewTicker(wd / 2)
		defer t.Stop()
		watchdog = t.C
		l.notify("WATCHDOG=1")
	}
	for {
		l.savePulled()
		l.step(ctx)
		l.publish()
		l.saveState()
		select {
		case <-ctx.Done():
			l.shutdown()
			return nil
		case <-a.opts.Changes:
			l.loadConfig(false, false)
		case <-a.opts.CredentialChanges:
			l.credentialsChanged()
		case <-a.reload:
			a.log.Info("reload requested")
			l.loadConfig(false, true)
		case d := <-l.done:
			l.finished(ctx, d)
		case st := <-l.queued:
			st.queuing = false
		case err := <-l.pingRes:
			l.pinging = false
			l.pinged(err)
		case refs := <-l.pruned:
			l.prunedRefs(refs)
		case <-l.clock.After(l.nextWake().Sub(l.clock.Now())):
		case <-watchdog:
			// Sent from the loop that does the work, so a wedged loop
			// stops the pings and systemd restarts the agent.
			l.notify("WATCHDOG=1")
		}
	}
}
