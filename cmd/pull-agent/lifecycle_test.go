package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/molecule-ai/pull-agent/agent"
	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/state"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

// 'pull-agent run' returns only once everything it started has stopped:
// the agent, the status server, the metrics server (with the connections
// of silent clients, which would otherwise live until their header
// timeout) and the SIGHUP handler. No Docker daemon is needed: the agent
// keeps pinging one that is not there.
func TestRunAgentStopsEverythingItStarted(t *testing.T) {
	// What lives as long as the process once used: the network poller and
	// the signal handler.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR2)
	signal.Stop(sig)
	if ln, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
		ln.Close()
	}
	before := agent.ProcessCounts()

	dir := t.TempDir()
	port, err := testbed.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	metrics := fmt.Sprintf("127.0.0.1:%d", port)
	status := filepath.Join(dir, "status.sock")
	envFile := writeFile(t, config.KeyRegistry+"=r.test/x\n"+config.KeyRuntimes+"=codex\n")
	env := map[string]string{"DOCKER_HOST": "unix://" + filepath.Join(dir, "no-docker.sock")}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"run", "--env-file", envFile, "--state-dir", filepath.Join(dir, "state"),
			"--status-socket", status, "--metrics-addr", metrics, "--log-level", "error"},
			func(k string) string { return env[k] }, io.Discard, io.Discard)
	}()

	up := func() bool {
		s, err1 := getOnce("unix", status, "/status")
		m, err2 := getOnce("tcp", metrics, "/metrics")
		return err1 == nil && err2 == nil && strings.Contains(s, `"schema_version"`) && strings.Contains(m, "pull_agent_")
	}
	testbed.WaitFor(t, "the status and metrics servers to answer", 10*time.Second, up)
	// Clients that connect and send nothing; the next answers show that
	// both servers accepted them.
	for _, a := range [][2]string{{"unix", status}, {"tcp", metrics}} {
		c, err := net.Dial(a[0], a[1])
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	if !up() {
		t.Fatal("the servers stopped answering")
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return within 15 s of its cancellation")
	}
	checkNothingOutlivedRun(t, before, status)
}

// getOnce asks addr for path on a new connection and returns the answer.
func getOnce(network, addr, path string) (string, error) {
	c, err := net.Dial(network, addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET "+path+" HTTP/1.0\r\n\r\n")
	b, err := io.ReadAll(c)
	return string(b), err
}

// checkNothingOutlivedRun fails t if more file descriptors (beyond the
// test's two silent clients) or goroutines are left than before run, or
// the status socket is.
func checkNothingOutlivedRun(t *testing.T, before state.Counts, status string) {
	t.Helper()
	// At once: every server connection is closed before run returns. The
	// test's two silent clients hold one descriptor each.
	if got := agent.ProcessCounts().FDs; got > before.FDs+2 {
		t.Errorf("%d file descriptors open once run returned, want %d (before) + 2 (the test's clients)", got, before.FDs)
	}
	if _, err := os.Lstat(status); err == nil {
		t.Error("the status socket is still there")
	}
	if !testbed.Poll(2*time.Second, func() bool { return runtime.NumGoroutine() <= before.Goroutines }) {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines outlived run, were %d:\n%s", runtime.NumGoroutine(), before.Goroutines, buf[:runtime.Stack(buf, true)])
	}
}
