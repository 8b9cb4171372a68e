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

	"github.com/molecule-ai/pull-agent/agent"
	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/agent/pull"
	"github.com/molecule-ai/pull-agent/agent/state"
	"github.com/molecule-ai/pull-agent/auth"
)

// runAgent is 'pull-agent run': the long-running agent.
func runAgent(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	setUsage(fs, stderr, "[--env-file F] [--refresh-interval D] [flags]", `
Keeps every image warm (the systemd service): watches the env file, pulls
on start and on every change, refreshes, retries by error class, serves
its state on the status socket and reports to systemd. A refused env file
(at start or later) does not stop it: the error is logged and shown by
'pull-agent status', the last good configuration, if any, stays in force,
and the agent waits for a good one.`)
	var c common
	c.register(fs)
	o := agent.DefaultOptions()
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
	statusSocket := fs.String("status-socket", defaultStatusSocket, "unix socket serving the live state (JSON) to 'pull-agent status'")
	metricsAddr := fs.String("metrics-addr", "", "serve Prometheus metrics on this TCP address (e.g. 127.0.0.1:9464); off when empty")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	switch {
	case o.RefreshInterval < 0 || o.Debounce < 0 || o.Retry.Initial < 0 || o.Retry.Max < 0:
		return usageErr(fmt.Errorf("durations must not be negative"))
	case o.Concurrency < 1:
		return usageErr(fmt.Errorf("--concurrency %d: must be 1 or more", o.Concurrency))
	case o.Retry.Attempts < 0:
		return usageErr(fmt.Errorf("--retry-attempts %d: must be 0 or more", o.Retry.Attempts))
	case o.Retry.Max < o.Retry.Initial:
		return usageErr(fmt.Errorf("--retry-max %s is below --retry-initial %s", o.Retry.Max, o.Retry.Initial))
	}
	log, err := c.logger(stderr)
	if err != nil {
		return err
	}
	if err := state.PrepareStateDir(c.stateDir); err != nil {
		return err
	}
	unlock, err := state.LockStateDir(c.stateDir)
	if err != nil {
		return err
	}
	defer unlock()
	o.EnvFile = c.envFile
	o.StateFile = filepath.Join(c.stateDir, state.StateFileName)
	o.PulledFile = filepath.Join(c.stateDir, "pulled.json")
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
		return c.authorizer(cfg, getenv, log)
	}
	a, err := agent.New(o)
	if err != nil {
		return err
	}
	ln, err := agent.ListenStatus(*statusSocket)
	if err != nil {
		return err
	}
	defer os.Remove(*statusSocket)
	// Whatever ends runAgent stops every goroutine it started and waits
	// for them (deferred calls run last first): no server answers from a
	// removed socket or an unlocked state directory.
	var running sync.WaitGroup
	defer running.Wait()
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	running.Go(func() { a.Serve(ctx, ln, log) })
	if *metricsAddr != "" {
		mln, err := net.Listen("tcp", *metricsAddr)
		if err != nil {
			return usageErr(fmt.Errorf("--metrics-addr %q: %w", *metricsAddr, err))
		}
		running.Go(func() { serveMetrics(ctx, mln, a.Metrics().Handler(), agent.DefaultServerTimeouts(), log) })
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	running.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				a.Reload()
			}
		}
	})
	return a.Run(ctx)
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
