package testbed

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The bed's engine (PULL_AGENT_TEST_ENGINE) starts with the options the
// suites use, answers, and leaves no process and no mount behind after
// Stop: neither on the machine nor, for trixie's engines, a process still
// inside the private mount namespace.
func TestEngineStartsAndStopLeavesNothing(t *testing.T) {
	Require(t)
	tests := []struct {
		name string
		opts Options
	}{
		{"plain", Options{}},
		{"hosts and private network", Options{Hosts: map[string]string{"ghcr.io": "127.0.0.1"}, PrivateNetwork: true}},
		{"small data root and TLS", Options{DataRootSize: "64m", TLS: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			tt.opts.Logf = t.Logf
			b, err := Start(ctx, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			if b.Engine() != DefaultEngine() {
				t.Errorf("bed runs %s, the environment asks for %s", b.Engine(), DefaultEngine())
			}
			if _, err := b.DockerdPID(); err != nil {
				t.Errorf("no dockerd pidfile: %v", err)
			}
			if n := processesUsing(b.Dir); n == 0 {
				t.Fatalf("no process mentions %s while the bed runs: the check below would prove nothing", b.Dir)
			}
			if err := b.Stop(); err != nil {
				t.Fatal(err)
			}
			WaitFor(t, "every process of the bed to exit", 20*time.Second, func() bool { return processesUsing(b.Dir) == 0 })
			data, err := os.ReadFile("/proc/self/mounts")
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(data), b.Dir) {
				t.Errorf("a mount under %s survived Stop", b.Dir)
			}
			if _, err := os.Stat(b.Dir); !os.IsNotExist(err) {
				t.Errorf("%s still exists: %v", b.Dir, err)
			}
		})
	}
}

// processesUsing counts the live processes whose command line mentions
// dir (dockerd and containerd name their roots and sockets there).
func processesUsing(dir string) int {
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	n := 0
	for _, f := range cmdlines {
		data, err := os.ReadFile(f)
		if err != nil || !strings.Contains(string(data), dir) {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(f))); err == nil && alive(pid) {
			n++
		}
	}
	return n
}

// Options.StorageDriver reaches Debian 12's daemon: it reports the driver
// asked for rather than vfs.
func TestStorageDriverOption(t *testing.T) {
	Require(t)
	if DefaultEngine() != EngineDebian12 {
		t.Skipf("StorageDriver applies to %s only; this run is on %s", EngineDebian12, DefaultEngine())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b, err := Start(ctx, Options{Logf: t.Logf, StorageDriver: "overlay2"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Stop()
	out, err := DockerCLI(ctx, b.DockerHost, b.Dir, "info", "--format", "{{.Driver}}")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(out); got != "overlay2" {
		t.Errorf("daemon's storage driver: %q, want overlay2", got)
	}
}
