// Command testbedctl starts and stops a test bed that outlives it, for
// 'make testbed-up', 'make demo' and the benchmarks.
//
//	testbedctl up   [--dir D] [--base-size N] [--layer-size N]
//	                            start dockerd and two seeded registries
//	testbedctl down [--dir D]   stop everything under D and remove it
//
// 'up' writes D/testbed.env (shell variables) and D/pull-agent.env (an env
// file for pull-agent pointing at the bed).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "testbedctl:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: testbedctl up|down [--dir D]")
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "/tmp/pull-agent-testbed", "directory of the test bed")
	var seed testbed.SeedOptions
	fs.Int64Var(&seed.BaseSize, "base-size", 1<<20, "up: bytes of the base layer the seeded images share")
	fs.Int64Var(&seed.LayerSize, "layer-size", 256<<10, "up: bytes of each seeded image's own layer")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	switch args[0] {
	case "up":
		return up(ctx, *dir, seed, stdout)
	case "down":
		if err := testbed.StopDir(*dir); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "test bed at %s stopped and removed\n", *dir)
		return nil
	default:
		return fmt.Errorf("unknown command %q: use up or down", args[0])
	}
}

func up(ctx context.Context, dir string, seed testbed.SeedOptions, stdout io.Writer) (err error) {
	if _, err := os.Stat(filepath.Join(dir, "pids")); err == nil {
		return fmt.Errorf("a test bed already exists at %s: run 'make testbed-down' first", dir)
	}
	bed, err := testbed.Start(ctx, testbed.Options{Dir: dir, Detach: true, Logf: func(f string, a ...any) { fmt.Fprintf(stdout, f+"\n", a...) }})
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			bed.Stop()
		}
	}()
	runtimes := config.KnownRuntimes()
	env := []string{"DOCKER_HOST=" + bed.DockerHost, "TESTBED_DIR=" + dir}
	for _, name := range []string{"main", "mirror"} {
		r, err := bed.StartRegistry(ctx, name, testbed.RegistryOptions{})
		if err != nil {
			return err
		}
		if _, err := bed.Seed(ctx, r, "molecule-ai", runtimes, seed); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "seeded %d images under %s\n", len(runtimes), r.Prefix("molecule-ai"))
		env = append(env, "TESTBED_"+strings.ToUpper(name)+"="+r.Addr)
	}
	shell := "# source this file to talk to the test bed\n"
	for _, kv := range env {
		shell += "export " + kv + "\n"
	}
	if err := os.WriteFile(filepath.Join(dir, "testbed.env"), []byte(shell), 0o644); err != nil {
		return err
	}
	pa := fmt.Sprintf("# pull-agent settings for the test bed\nDOCKER_HOST=%s\n%s=%s\n", bed.DockerHost, config.KeyRegistry, bed.Registry("main").Prefix("molecule-ai"))
	if err := os.WriteFile(filepath.Join(dir, "pull-agent.env"), []byte(pa), 0o600); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "test bed up at %s; settings in %s/testbed.env and %s/pull-agent.env\n", dir, dir, dir)
	return nil
}
