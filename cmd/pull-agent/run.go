package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/molecule-ai/pull-agent/agent"
	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/agent/pull"
	"github.com/molecule-ai/pull-agent/agent/state"
	"github.com/molecule-ai/pull-agent/auth"
)

// runAgent is 'pull-agent run': the long-running agent.
func runAgent(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	rf, err := parseRunFlags(args, stderr)
	if err != nil {
		return err
	}
	log, err := rf.logger(stderr, getenv)
	if err != nil {
		return err
	}
	if err := state.PrepareStateDir(rf.stateDir); err != nil {
		return err
	}
	unlock, err := state.LockStateDir(rf.stateDir)
	if err != nil {
		return err
	}
	defer unlock()
	ln, err := agent.ListenStatus(rf.statusSocket)
	if err != nil {
		return err
	}
	defer os.Remove(rf.statusSocket)
	// Whatever ends runAgent stops every goroutine it started and waits
	// for them (deferred calls run last first): no server answers from a
	// removed socket or an unlocked state directory.
	var running sync.WaitGroup
	defer running.Wait()
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	changes, err := startWatcher(ctx, &running, rf.opts.EnvFile, rf.opts.Debounce, log)
	if err != nil {
		ln.Close()
		return err
	}
	o := wireOptions(rf, getenv, log)
	o.Changes = changes
	// Docker's config.json, where the credential selection reads it: a
	// fix of credentials re-tries auth failures at once. Without this
	// watcher they wait for SIGHUP or the refresh.
	dockerConfig := filepath.Join(auth.DockerConfigDir(getenv), "config.json")
	if o.CredentialChanges, err = startWatcher(ctx, &running, dockerConfig, rf.opts.Debounce, log); err != nil {
		log.Warn("not watching Docker's config.json; a credential fix takes effect at the next refresh or on SIGHUP", "file", dockerConfig, "error", err.Error())
	}
	a, err := agent.New(o)
	if err != nil {
		ln.Close()
		return err
	}
	running.Go(func() { a.Serve(ctx, ln, log) })
	if rf.metricsAddr != "" {
		mln, err := net.Listen("tcp", rf.metricsAddr)
		if err != nil {
			return usageErr(fmt.Errorf("--metrics-addr %q: %w", rf.metricsAddr, err))
		}
		running.Go(func() { serveMetrics(ctx, mln, a.Metrics().Handler(), agent.DefaultServerTimeouts(), log) })
	}
	reloadOnSignal(ctx, &running, a)
	return a.Run(ctx)
}

// runFlags are the flags of 'pull-agent run'.
type runFlags struct {
	common
	opts         agent.Options
	statusSocket string
	metricsAddr  string
	machineID    string
}

func parseRunFlags(args []string, stderr io.Writer) (runFlags, error) {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	setUsage(fs, stderr, "[--env-file F] [--refresh-interval D] [flags]", `
Keeps every image warm (the systemd service): watches the env file, pulls
on start and on every change, refreshes, retries by error class, serves
its state on the status socket and reports to systemd. A refused env file
(at start or later) does not stop it: the error is logged and shown by
'pull-agent status', the last good configuration, if any, stays in force,
and the agent waits for a good one.`)
	rf := runFlags{opts: agent.DefaultOptions()}
	rf.register(fs)
	o := &rf.opts
	fs.DurationVar(&o.RefreshInterval, "refresh-interval", o.RefreshInterval, "re-pull moving tags this often (±10% jitter)")
	fs.IntVar(&o.Concurrency, "concurrency", o.Concurrency, "how many images to pull at once")
	fs.DurationVar(&o.Timeouts.Begin, "pull-begin-timeout", o.Timeouts.Begin, "a pull fails as stalled when the daemon sends nothing for this long after it began")
	fs.DurationVar(&o.Timeouts.Stall, "pull-stall-timeout", o.Timeouts.Stall, "a pull fails as stalled when no new bytes arrive for this long")
	fs.DurationVar(&o.Timeouts.Extract, "pull-extract-timeout", o.Timeouts.Extract, "a pull fails as stalled when extraction reports nothing for this long")
	fs.DurationVar(&o.Timeouts.Overall, "pull-timeout", o.Timeouts.Overall, "deadline of one pull")
	fs.DurationVar(&o.Retry.Initial, "retry-initial", o.Retry.Initial, "first retry delay ceiling for transient failures (full jitter, doubling)")
	fs.DurationVar(&o.Retry.Max, "retry-max", o.Retry.Max, "largest retry delay ceiling")
	fs.IntVar(&o.Retry.Attempts, "retry-attempts", o.Retry.Attempts, "transient failures in a row before an image waits for the next refresh")
	fs.DurationVar(&o.Debounce, "debounce", o.Debounce, "quiet time after an env file event before it is read")
	fs.StringVar(&rf.statusSocket, "status-socket", defaultStatusSocket, "unix socket serving the live state (JSON) to 'pull-agent status'")
	fs.StringVar(&rf.metricsAddr, "metrics-addr", "", "serve Prometheus metrics on this TCP address (e.g. 127.0.0.1:9464); off when empty")
	fs.StringVar(&rf.machineID, "machine-id", "/etc/machine-id", "this host's identity, the seed of its delay within MOLECULE_FLIP_SPREAD (missing: a random seed kept in the state directory)")
	if err := parseFlags(fs, args); err != nil {
		return rf, err
	}
	switch {
	case o.RefreshInterval < 0 || o.Debounce < 0 || o.Retry.Initial < 0 || o.Retry.Max < 0:
		return rf, usageErr(fmt.Errorf("durations must not be negative"))
	case o.Concurrency < 1:
		return rf, usageErr(fmt.Errorf("--concurrency %d: must be 1 or more", o.Concurrency))
	case o.Retry.Attempts < 0:
		return rf, usageErr(fmt.Errorf("--retry-attempts %d: must be 0 or more", o.Retry.Attempts))
	case o.Retry.Max < o.Retry.Initial:
		return rf, usageErr(fmt.Errorf("--retry-max %s is below --retry-initial %s", o.Retry.Max, o.Retry.Initial))
	}
	rf.opts.EnvFile = rf.envFile
	return rf, nil
}

// wireOptions connects the agent to the state directory, systemd, the
// Docker daemon and the credential selection.
func wireOptions(rf runFlags, getenv func(string) string, log *slog.Logger) agent.Options {
	o := rf.opts
	o.StateFile = filepath.Join(rf.stateDir, state.StateFileName)
	o.PulledFile = filepath.Join(rf.stateDir, "pulled.json")
	o.FlipFile = filepath.Join(rf.stateDir, "flip.json")
	seed, err := agent.HostSeed(rf.machineID, filepath.Join(rf.stateDir, "host-seed"))
	if err != nil {
		log.Warn("no seed for the spread of flips; a random one for this run", "error", err.Error())
	}
	o.HostSeed = seed
	o.Version = version
	o.Getenv = getenv
	o.Logger = log
	o.Notifier = agent.SystemdNotifier{}
	o.NewEngine = func(ep config.DockerEndpoint) (engine.Engine, error) {
		e, err := engine.NewDockerEngine(ep)
		if err != nil {
			return nil, err
		}
		config.WarnDockerSocketOwner(log, ep.Host)
		return e, nil
	}
	auth.RouteECRLogs(log)
	o.NewAuthorizer = func(cfg config.Config) (pull.Authorizer, error) {
		return rf.authorizer(cfg, getenv, log)
	}
	return o
}

// startWatcher watches the file at path until ctx is done, in a goroutine
// of running, and returns its change notifications.
func startWatcher(ctx context.Context, running *sync.WaitGroup, path string, debounce time.Duration, log *slog.Logger) (<-chan struct{}, error) {
	w, err := agent.NewWatcher(path, debounce, log)
	if err != nil {
		return nil, err
	}
	if err := w.Start(); err != nil {
		return nil, fmt.Errorf("watching %s: %w", path, err)
	}
	running.Go(func() { w.Run(ctx) })
	return w.Changes(), nil
}

// reloadOnSignal has the agent reload on SIGHUP until ctx is done.
func reloadOnSignal(ctx context.Context, running *sync.WaitGroup, a *agent.Agent) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	running.Go(func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				a.Reload()
			}
		}
	})
}

// defaultStatusSocket is in the unit's RuntimeDirectory.
const defaultStatusSocket = "/run/pull-agent/status.sock"

// serveMetrics serves GET /metrics on ln until ctx is done, with the same
// client time limits as the status socket, and returns once it stopped.
func serveMetrics(ctx context.Context, ln net.Listener, metrics http.Handler, t agent.ServerTimeouts, log *slog.Logger) {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	if err := agent.ServeUntil(ctx, agent.NewHTTPServer(mux, t), ln, 0); err != nil {
		log.Error("metrics server stopped", "error", err.Error())
	}
}
