// Command fleet runs the fleet scenarios of docs/FLEET.md ('make fleet'):
// N hosts on this machine, each a Docker daemon with a pull-agent, one
// origin registry behind a shared link and a front door that answers 429
// above a request rate; each scenario from cold and at a flip, straight
// to the origin or through a pull-through cache, at once or with
// MOLECULE_FLIP_SPREAD. It writes the raw numbers (docs/fleet.json), the
// origin's bandwidth over time (docs/fleet-origin.png) and prints the
// table and the model's extrapolation.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/molecule-ai/pull-agent/internal/testbed"
	"github.com/molecule-ai/pull-agent/internal/testbed/fleet"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleet:", err)
		os.Exit(1)
	}
}

// settings are the harness's flags.
type settings struct {
	hosts     int
	bin       string
	linkMbit  int
	rate      float64
	burst     int
	spread    time.Duration
	baseKiB   int64
	layerKiB  int64
	jsonOut   string
	pngOut    string
	timeout   time.Duration
	scenarios string
}

func parse(args []string, stderr io.Writer) (settings, error) {
	var s settings
	fs := flag.NewFlagSet("fleet", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&s.hosts, "hosts", 8, "hosts (daemon + agent each)")
	fs.StringVar(&s.bin, "bin", "bin/pull-agent", "the pull-agent binary the hosts run")
	fs.IntVar(&s.linkMbit, "link-mbit", 200, "the origin's link, shared by all its connections, in Mbit/s")
	fs.Float64Var(&s.rate, "rate", 15, "the origin's rate limit: manifest and blob GETs a second (0: none)")
	fs.IntVar(&s.burst, "burst", 60, "the rate limit's burst")
	fs.DurationVar(&s.spread, "spread", 120*time.Second, "MOLECULE_FLIP_SPREAD of scenarios 2 and 4")
	fs.Int64Var(&s.baseKiB, "base-kib", 4096, "size of the base layer every image shares")
	fs.Int64Var(&s.layerKiB, "layer-kib", 2048, "size of each image's own layer")
	fs.StringVar(&s.jsonOut, "json", "docs/fleet.json", "where the raw numbers go")
	fs.StringVar(&s.pngOut, "png", "docs/fleet-origin.png", "where the plot of the origin's bandwidth goes")
	fs.DurationVar(&s.timeout, "phase-timeout", 2*time.Minute, "the longest a phase may take to warm the fleet (a spread flip: this plus the spread)")
	fs.StringVar(&s.scenarios, "scenarios", "1,2,3,4", "which scenarios to run")
	if err := fs.Parse(args); err != nil {
		return s, err
	}
	if s.hosts < 1 {
		return s, fmt.Errorf("--hosts %d: need at least one", s.hosts)
	}
	return s, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	s, err := parse(args, stderr)
	if err != nil {
		return err
	}
	if err := testbed.Available(); err != nil {
		return err
	}
	if err := testbed.SharedLinkAvailable(); err != nil && s.linkMbit > 0 {
		return err
	}
	agent, err := os.ReadFile(s.bin)
	if err != nil {
		return fmt.Errorf("the agent binary: %w (make build)", err)
	}
	spreadOK := bytes.Contains(agent, []byte(spreadKey))
	start := time.Now()
	logf := func(format string, a ...any) {
		fmt.Fprintf(stderr, "fleet %6.1fs: "+format+"\n", append([]any{time.Since(start).Seconds()}, a...)...)
	}
	f, err := fleet.Start(ctx, fleet.Options{
		Hosts: s.hosts, AgentBin: s.bin, LinkMbit: s.linkMbit, Namespaces: []string{nsA, nsB},
		Limit: testbed.RateLimit{PerSecond: s.rate, Burst: s.burst, RetryAfter: 10 * time.Second},
		Seed:  testbed.SeedOptions{BaseSize: s.baseKiB << 10, LayerSize: s.layerKiB << 10}, Logf: logf,
	})
	if err != nil {
		return err
	}
	defer f.Stop()
	rep, err := runScenarios(ctx, f, s, spreadOK, logf)
	rep.Seconds = time.Since(start).Seconds()
	if werr := writeReport(rep, s); werr != nil && err == nil {
		err = werr
	}
	printReport(stdout, rep)
	return err
}

func writeReport(rep Report, s settings) error {
	data, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(s.jsonOut, append(data, '\n'), 0o644); err != nil {
		return err
	}
	return drawChart(rep, s.pngOut)
}
