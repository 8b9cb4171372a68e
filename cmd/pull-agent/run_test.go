package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/molecule-ai/pull-agent/agent"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

// listenNotify opens a NOTIFY_SOCKET for the test.
func listenNotify(t *testing.T) *testbed.NotifySocket {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "pa-notify-") // short: socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	n, err := testbed.ListenNotify(filepath.Join(dir, "notify.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// waitNotify fails the test unless a message satisfying cond arrives.
func waitNotify(t *testing.T, n *testbed.NotifySocket, what string, timeout time.Duration, cond func(string) bool) {
	t.Helper()
	if err := n.Wait(context.Background(), what, timeout, cond); err != nil {
		t.Fatal(err)
	}
}

// agentProcess runs this test binary as 'pull-agent run' (see TestMain).
type agentProcess struct {
	*testbed.Process
	dir string // holds status.sock and state/
}

func startProcess(t *testing.T, env []string, args ...string) *agentProcess {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "pa-run-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	args = append([]string{"--status-socket", filepath.Join(dir, "status.sock"), "--state-dir", filepath.Join(dir, "state")}, args...)
	cmd := exec.Command(os.Args[0], append([]string{"run"}, args...)...)
	cmd.Env = append(os.Environ(), append([]string{"PULL_AGENT_TEST_MAIN=1"}, env...)...)
	proc, err := testbed.StartProcess(cmd)
	if err != nil {
		t.Fatal(err)
	}
	p := &agentProcess{Process: proc, dir: dir}
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("agent stderr:\n%s", p.Output.String())
		}
	})
	return p
}

// terminate sends SIGTERM and returns how long the process took to exit
// and its exit error.
func (p *agentProcess) terminate(t *testing.T) (time.Duration, error) {
	t.Helper()
	took, err := p.Stop(syscall.SIGTERM, 20*time.Second)
	if took == 0 && err != nil {
		t.Fatal(err)
	}
	return took, err
}

func TestRunNotifiesSystemdAndRereadsOnSIGHUP(t *testing.T) {
	b := bed.Get(t)
	reg := b.Registry("main")
	rts := []string{"codex", "hermes"}
	ctx := context.Background()
	if _, err := b.Seed(ctx, reg, "notify-a", rts, testbed.SeedOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Seed(ctx, reg, "notify-b", rts, testbed.SeedOptions{}); err != nil {
		t.Fatal(err)
	}
	envFile := writeFile(t, agent.KeyRegistry+"="+reg.Prefix("notify-a")+"\n"+agent.KeyRuntimes+"=codex,hermes\n")
	n := listenNotify(t)
	p := startProcess(t, []string{"NOTIFY_SOCKET=" + n.Path, "WATCHDOG_USEC=400000", "DOCKER_HOST=" + b.DockerHost},
		"--env-file", envFile, "--debounce", "1m", "--log-format", "json")

	waitNotify(t, n, "READY=1", 15*time.Second, func(m string) bool { return m == "READY=1" })
	waitNotify(t, n, "STATUS= with every image warm from A", 30*time.Second, func(m string) bool {
		return m == "STATUS=2/2 images warm from "+reg.Prefix("notify-a")
	})
	// WATCHDOG_USEC=0.4 s: one WATCHDOG=1 every 0.2 s, so three more
	// within a second.
	before := n.Count("WATCHDOG=1")
	testbed.WaitFor(t, "three more WATCHDOG=1", time.Second, func() bool { return n.Count("WATCHDOG=1") >= before+3 })

	// The debounce is a minute: only SIGHUP makes the agent read the file now.
	if err := os.WriteFile(envFile, []byte(agent.KeyRegistry+"="+reg.Prefix("notify-b")+"\n"+agent.KeyRuntimes+"=codex,hermes\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.Cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitNotify(t, n, "STATUS= with every image warm from B after SIGHUP", 15*time.Second, func(m string) bool {
		return m == "STATUS=2/2 images warm from "+reg.Prefix("notify-b")
	})

	took, err := p.terminate(t)
	if err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	waitNotify(t, n, "STOPPING=1", time.Second, func(m string) bool { return m == "STOPPING=1" })
	t.Logf("exited %s after SIGTERM", took.Round(time.Millisecond))
	if !strings.Contains(p.Output.String(), `"msg":"configuration loaded"`) {
		t.Errorf("--log-format json did not give JSON lines:\n%s", p.Output.String())
	}
}

func TestRunWithoutNotifySocketSendsNothingAndRuns(t *testing.T) {
	b := bed.Get(t)
	envFile := writeFile(t, agent.KeyRegistry+"="+b.Registry("main").Prefix("nowhere")+"\n"+agent.KeyRuntimes+"=codex\n")
	env := []string{"DOCKER_HOST=" + b.DockerHost}
	p := startProcess(t, env, "--env-file", envFile)
	time.Sleep(1500 * time.Millisecond)
	select {
	case <-p.Done():
		t.Fatalf("the agent exited without NOTIFY_SOCKET: %v\n%s", p.Err(), p.Output.String())
	default:
	}
	if _, err := p.terminate(t); err != nil {
		t.Fatalf("exit: %v", err)
	}
}

func TestRunSIGTERMDuringPullExitsZero(t *testing.T) {
	b := bed.Get(t)
	reg := b.Registry("main")
	if _, err := b.Seed(context.Background(), reg, "sigterm", []string{"codex"}, testbed.SeedOptions{LayerSize: 16 << 20}); err != nil {
		t.Fatal(err)
	}
	px, err := testbed.NewTCPProxy("sigterm", reg.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(px.Close)
	if err := px.Throttle(256); err != nil { // 16 MiB at 256 KB/s: a minute
		t.Fatal(err)
	}
	envFile := writeFile(t, agent.KeyRegistry+"="+px.Prefix("sigterm")+"\n"+agent.KeyRuntimes+"=codex\n")
	n := listenNotify(t)
	p := startProcess(t, []string{"NOTIFY_SOCKET=" + n.Path, "DOCKER_HOST=" + b.DockerHost}, "--env-file", envFile)
	waitNotify(t, n, "STATUS= with a pull in flight", 15*time.Second, func(m string) bool { return strings.Contains(m, "; pulling 1") })
	waitDoc(t, p, "bytes flowing", func(d agent.StateDoc) bool {
		return len(d.Images) == 1 && d.Images[0].Progress != nil && d.Images[0].Progress.Bytes > 0
	})
	took, err := p.terminate(t)
	if err != nil {
		t.Fatalf("exit after SIGTERM during a pull: %v\n%s", err, p.Output.String())
	}
	if took > 10*time.Second {
		t.Errorf("exit took %s, want under 10 s", took)
	}
	t.Logf("exited 0 %s after SIGTERM mid-pull", took.Round(time.Millisecond))
}

func TestASecondAgentOnTheSameStateDirRefuses(t *testing.T) {
	b := bed.Get(t)
	envFile := writeFile(t, agent.KeyRegistry+"="+b.Registry("main").Prefix("lock")+"\n"+agent.KeyRuntimes+"=codex\n")
	first := startProcess(t, []string{"DOCKER_HOST=" + b.DockerHost}, "--env-file", envFile)
	testbed.WaitFor(t, "the first agent's status socket", 10*time.Second, func() bool {
		_, err := os.Stat(filepath.Join(first.dir, "status.sock"))
		return err == nil
	})
	second := startProcess(t, []string{"DOCKER_HOST=" + b.DockerHost}, "--env-file", envFile, "--state-dir", filepath.Join(first.dir, "state"))
	select {
	case <-second.Done():
		if err := second.Err(); err == nil || !strings.Contains(second.Output.String(), "another pull-agent (pid "+strconv.Itoa(first.Cmd.Process.Pid)+") is running with the state directory") {
			t.Fatalf("second agent: %v\n%s", second.Err(), second.Output.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the second agent did not refuse")
	}
	if _, err := first.terminate(t); err != nil {
		t.Fatalf("the first agent: %v", err)
	}
}
