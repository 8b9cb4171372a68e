package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/state"
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
	return startWrapped(t, nil, env, args...)
}

// startWrapped is startProcess with the agent run by wrapper (a command
// and its arguments, such as strace); Cmd is then the wrapper's process.
func startWrapped(t *testing.T, wrapper, env []string, args ...string) *agentProcess {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "pa-run-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	args = append([]string{"--status-socket", filepath.Join(dir, "status.sock"), "--state-dir", filepath.Join(dir, "state")}, args...)
	argv := append(slices.Clone(wrapper), append([]string{os.Args[0], "run"}, args...)...)
	cmd := exec.Command(argv[0], argv[1:]...)
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
	envFile := writeFile(t, config.KeyRegistry+"="+reg.Prefix("notify-a")+"\n"+config.KeyRuntimes+"=codex,hermes\n")
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
	if err := os.WriteFile(envFile, []byte(config.KeyRegistry+"="+reg.Prefix("notify-b")+"\n"+config.KeyRuntimes+"=codex,hermes\n"), 0o600); err != nil {
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

// Without NOTIFY_SOCKET (run by hand, or under a service manager that is
// not told to listen) the agent opens no datagram socket at all, so no
// sd_notify message leaves it, logs no failed attempt, and runs: through
// READY=1, STATUS= after a failed pull, and STOPPING=1 on SIGTERM, which
// is where the messages would have gone. strace sees every socket the
// agent creates.
func TestRunWithoutNotifySocketSendsNothingAndRuns(t *testing.T) {
	b := bed.Get(t)
	if _, err := exec.LookPath("strace"); err != nil {
		testbed.SkipOrFail(t, fmt.Errorf("strace not found: run 'make deps' (apt-get install strace): %w", err))
	}
	trace := filepath.Join(t.TempDir(), "strace.out")
	envFile := writeFile(t, config.KeyRegistry+"="+b.Registry("main").Prefix("nowhere")+"\n"+config.KeyRuntimes+"=codex\n")
	// Empty is unset for sd_notify, whatever the test process inherited.
	env := []string{"DOCKER_HOST=" + b.DockerHost, "NOTIFY_SOCKET="}
	p := startWrapped(t, []string{"strace", "-f", "-qq", "-e", "trace=socket", "-o", trace}, env, "--env-file", envFile)
	doc := waitDoc(t, p, "the pull of a missing image to fail", func(d state.StateDoc) bool {
		return len(d.Images) == 1 && d.Images[0].LastError != ""
	})
	if !p.Running() {
		t.Fatalf("the agent exited: %v", p.Err())
	}
	if err := syscall.Kill(doc.Agent.PID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
		if p.Err() != nil {
			t.Fatalf("exit after SIGTERM: %v", p.Err())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the agent did not exit within 20 s of SIGTERM")
	}
	data, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "socket(AF_UNIX, SOCK_STREAM") {
		t.Fatalf("the trace lacks the status socket: strace did not see the agent's sockets:\n%s", data)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.Contains(line, "socket(AF_UNIX, SOCK_DGRAM") {
			t.Errorf("the agent opened a datagram socket, as sd_notify does: %s", line)
		}
	}
	if out := p.Output.String(); !strings.Contains(out, `msg="agent started"`) || strings.Contains(out, "sd_notify") {
		t.Errorf("want the agent started and no sd_notify attempt in its log:\n%s", out)
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
	envFile := writeFile(t, config.KeyRegistry+"="+px.Prefix("sigterm")+"\n"+config.KeyRuntimes+"=codex\n")
	n := listenNotify(t)
	p := startProcess(t, []string{"NOTIFY_SOCKET=" + n.Path, "DOCKER_HOST=" + b.DockerHost}, "--env-file", envFile)
	waitNotify(t, n, "STATUS= with a pull in flight", 15*time.Second, func(m string) bool { return strings.Contains(m, "; pulling 1") })
	waitDoc(t, p, "bytes flowing", func(d state.StateDoc) bool {
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
	envFile := writeFile(t, config.KeyRegistry+"="+b.Registry("main").Prefix("lock")+"\n"+config.KeyRuntimes+"=codex\n")
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
