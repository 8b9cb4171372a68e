package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/molecule-ai/pull-agent/agent"
	"github.com/molecule-ai/pull-agent/auth"
)

// runAgent is 'pull-agent run': the long-running agent.
func runAgent(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
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
	o.EnvFile = c.envFile
	o.Getenv = getenv
	o.Logger = log
	o.Notifier = agent.SystemdNotifier{}
	o.NewEngine = func(host string) (agent.Engine, error) { return agent.NewDockerEngine(host) }
	auth.RouteECRLogs(log)
	o.NewAuthorizer = func(cfg agent.Config) (agent.Authorizer, error) {
		return c.authorizer(cfg, getenv, log)
	}
	a, err := agent.New(o)
	if err != nil {
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				a.Reload()
			}
		}
	}()
	return a.Run(ctx)
}
