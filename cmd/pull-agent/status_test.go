package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/state"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

// statusOf runs 'pull-agent status' against the agent of p.
func (p *agentProcess) status(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	return runCLI(t, nil, append([]string{"status", "--status-socket", filepath.Join(p.dir, "status.sock"), "--state-dir", filepath.Join(p.dir, "state")}, args...)...)
}

func statusJSON(t *testing.T, p *agentProcess) (state.StateDoc, error) {
	t.Helper()
	_, out, errOut := p.status(t, "--json")
	doc, err := state.DecodeState("status --json", strings.NewReader(out))
	if err != nil {
		return doc, fmt.Errorf("%v: %s", err, errOut)
	}
	return doc, nil
}

// waitDoc returns the first 'status --json' document that satisfies cond;
// on a timeout the test fails with the last one seen.
func waitDoc(t *testing.T, p *agentProcess, what string, cond func(state.StateDoc) bool) state.StateDoc {
	t.Helper()
	var doc state.StateDoc
	var err error
	ok := false
	defer func() {
		if !ok {
			t.Logf("last status: %+v %v", doc, err)
		}
	}()
	testbed.WaitFor(t, what, 60*time.Second, func() bool {
		doc, err = statusJSON(t, p)
		return err == nil && cond(doc)
	})
	ok = true
	return doc
}

func TestStatusThroughTheAgentsLife(t *testing.T) {
	b := bed.Get(t)
	reg := b.Registry("main")
	ctx := context.Background()
	if _, err := b.Seed(ctx, reg, "status", []string{"codex"}, testbed.SeedOptions{LayerSize: 8 << 20}); err != nil {
		t.Fatal(err)
	}
	px, err := testbed.NewTCPProxy("status", reg.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(px.Close)
	if err := px.Throttle(256); err != nil {
		t.Fatal(err)
	}
	envFile := writeFile(t, config.KeyRegistry+"="+px.Prefix("status")+"\n"+config.KeyRuntimes+"=codex\n")
	metricsPort, err := testbed.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	p := startProcess(t, []string{"DOCKER_HOST=" + b.DockerHost}, "--env-file", envFile, "--metrics-addr", fmt.Sprintf("127.0.0.1:%d", metricsPort))

	doc := waitDoc(t, p, "a pull in progress", func(d state.StateDoc) bool {
		return len(d.Images) == 1 && d.Images[0].State == state.Pulling && d.Images[0].Progress != nil && d.Images[0].Progress.Bytes > 0
	})
	t.Logf("pulling: %+v", *doc.Images[0].Progress)
	if code, out, _ := p.status(t); code != statusDegraded || !strings.Contains(out, "pulling") {
		t.Errorf("while pulling: exit %d\n%s", code, out)
	}

	px.Clear()
	code, out, errOut := p.status(t, "--wait", "--timeout", "60s")
	if code != exitOK || !strings.Contains(out, "running, all warm") {
		t.Fatalf("--wait: exit %d\n%s%s", code, out, errOut)
	}
	if code, out, errOut := p.status(t, "--quiet"); code != exitOK || out != "" || errOut != "" {
		t.Errorf("--quiet: exit %d %q %q", code, out, errOut)
	}

	checkMetricsAfterOnePull(t, metricsPort)

	// The leak-check counts on the status socket.
	counts, err := state.NewStatusClient(filepath.Join(p.dir, "status.sock"), 5*time.Second).Counts(ctx, false)
	if err != nil || counts.Goroutines < 1 || counts.FDs < 3 {
		t.Errorf("/debug/counts: %+v %v", counts, err)
	}

	// JSON against the golden file, volatile fields normalised.
	_, out, _ = p.status(t, "--json")
	golden(t, "status-warm.json", normalise(out, reg.Addr, px.Addr))

	// One image missing from the registry: exit 1, named, not-found.
	if err := os.WriteFile(envFile, []byte(config.KeyRegistry+"="+reg.Prefix("status")+"\n"+config.KeyRuntimes+"=codex,hermes\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitDoc(t, p, "hermes failed", func(d state.StateDoc) bool {
		return len(d.Images) == 2 && d.Images[1].State == state.Failed
	})
	code, out, _ = p.status(t)
	if code != statusDegraded || !regexp.MustCompile(`hermes\s+failed .*\[not-found\]`).MatchString(out) {
		t.Errorf("one image missing: exit %d\n%s", code, out)
	}

	// A bad env file: exit 1, the error shown, the last good configuration kept.
	if err := os.WriteFile(envFile, []byte(config.KeyRegistry+"=https://nope\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitDoc(t, p, "config error", func(d state.StateDoc) bool { return d.Agent.ConfigError != "" })
	code, out, _ = p.status(t)
	if code != statusDegraded || !strings.Contains(out, "config error:   "+envFile+":1: MOLECULE_IMAGE_REGISTRY=\"https://nope\"") || !strings.Contains(out, "prefix:         "+reg.Prefix("status")) {
		t.Errorf("bad env file: exit %d\n%s", code, out)
	}

	checkStatusOnceStopped(t, p)
}

// checkMetricsAfterOnePull reads the agent's metrics on port: one image
// warm, one pull and one configuration load, and a reconcile timestamp.
func checkMetricsAfterOnePull(t *testing.T, port int) {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`pull_agent_images{state="warm"} 1`,
		`pull_agent_pulls_total{class="",result="success"} 1`,
		`pull_agent_config_loads_total{result="applied"} 1`,
		`pull_agent_pull_duration_seconds_count 1`,
		`pull_agent_last_reconcile_timestamp_seconds 1.`,
	} {
		if !bytes.Contains(metrics, []byte(want)) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// checkStatusOnceStopped stops the agent of p; status then exits 2 with
// the saved state and its age, and --wait does not wait for it.
func checkStatusOnceStopped(t *testing.T, p *agentProcess) {
	t.Helper()
	if _, err := p.terminate(t); err != nil {
		t.Fatal(err)
	}
	code, out, _ := p.status(t)
	if code != statusDown || !strings.Contains(out, "NOT RUNNING") || !strings.Contains(out, "saved state from") || !strings.Contains(out, "hermes") {
		t.Errorf("agent stopped: exit %d\n%s", code, out)
	}
	if code, _, _ := p.status(t, "--wait", "--timeout", "1s"); code != statusDown {
		t.Errorf("--wait with the agent down: exit %d, want 2", code)
	}
}

var volatile = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`"\d{4}-\d\d-\d\dT[0-9:.]+Z"`), `"TIME"`},
	{regexp.MustCompile(`sha256:[0-9a-f]{64}`), `sha256:DIGEST`},
	{regexp.MustCompile(`"pid": \d+`), `"pid": 1`},
	{regexp.MustCompile(`"version": "[^"]*"`), `"version": "VERSION"`},
	{regexp.MustCompile(`"env_file": "[^"]*"`), `"env_file": "ENV_FILE"`},
	{regexp.MustCompile(`"(last_duration_s)": [0-9.e-]+`), `"$1": 1`},
	{regexp.MustCompile(`"(last_bytes|size_bytes)": \d+`), `"$1": 1`},
}

func normalise(s string, addrs ...string) string {
	for i, a := range addrs {
		s = strings.ReplaceAll(s, a, fmt.Sprintf("REGISTRY%d", i))
	}
	for _, v := range volatile {
		s = v.re.ReplaceAllString(s, v.with)
	}
	return s
}

func TestStatusHumanGolden(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *time.Time { t := now.Add(d); return &t }
	doc := state.StateDoc{
		SchemaVersion: state.SchemaVersion, WrittenAt: now,
		Agent: state.AgentDoc{Version: "v1.2.3", PID: 4242, StartedAt: now.Add(-time.Hour), EnvFile: "/etc/pull-agent/pull-agent.env",
			Prefix: "123456789012.dkr.ecr.us-east-2.amazonaws.com/molecule-ai", Fallbacks: []string{"123456789012.dkr.ecr.us-west-2.amazonaws.com/molecule-ai"}, ConfigLoadedAt: at(-time.Hour), ConfigOK: false,
			ConfigError: `/etc/pull-agent/pull-agent.env:3: MOLECULE_IMAGE_REGISTRY="https://x": a prefix has no URL scheme`,
			DockerUp:    true, LastReconcile: at(-2 * time.Minute), NextRefresh: at(13 * time.Minute), Warm: 2, Total: 5},
		Hosts: []state.HostDoc{{Host: "123456789012.dkr.ecr.us-east-2.amazonaws.com", CredentialSource: "ecr-login (instance role; token expires 2026-11-27T23:00:00Z)", CooldownUntil: at(time.Minute)}},
		Images: []state.ImageDoc{
			{Runtime: "autogen", State: "warm", Source: "primary", LocalDigest: "sha256:" + strings.Repeat("a", 64), SizeBytes: 4_500_000_000, LastSuccess: at(-2 * time.Minute)},
			{Runtime: "claude-code", State: "pulling", Progress: &state.ProgressDoc{Phase: "downloading", Bytes: 300, TotalBytes: 1000}},
			{Runtime: "codex", State: "failed", LastErrorClass: "not-found", LastError: "manifest unknown"},
			{Runtime: "hermes", State: "warm", Source: "fallback 123456789012.dkr.ecr.us-west-2.amazonaws.com/molecule-ai", LocalDigest: "sha256:" + strings.Repeat("d", 64), SizeBytes: 4_000_000_000, LastSuccess: at(-time.Minute), LastErrorClass: "auth", LastError: "pulling x: unauthorized: authentication required"},
			{Runtime: "crewai", State: "stale", LocalDigest: "sha256:" + strings.Repeat("b", 64), RemoteDigest: "sha256:" + strings.Repeat("c", 64), SizeBytes: 5_000_000_000, LastSuccess: at(-20 * time.Hour), LastErrorClass: "network", LastError: "connection refused"},
		},
	}
	var live, down bytes.Buffer
	printHuman(&live, doc, true, nil, false, now)
	golden(t, "status-live.txt", live.String())
	printHuman(&down, doc, false, fmt.Errorf("no status socket at /run/pull-agent/status.sock"), false, now.Add(90*time.Second))
	golden(t, "status-down.txt", down.String())
	var colored bytes.Buffer
	printHuman(&colored, doc, true, nil, true, now)
	if !strings.Contains(colored.String(), "\x1b[") || strings.Contains(live.String(), "\x1b[") {
		t.Error("colour must appear only when asked for")
	}
}

func TestStatusWithoutAnAgent(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "status.sock")
	run := func() (int, string, string) {
		return runCLI(t, nil, "status", "--status-socket", sock, "--state-dir", dir)
	}
	if code, _, errOut := run(); code != statusNoState || !strings.Contains(errOut, "no saved state") {
		t.Errorf("nothing saved: exit %d %s", code, errOut)
	}
	for name, content := range map[string]string{
		"corrupt":         `{"schema_version": 1, "agent": {`,
		"foreign":         `{"hello": "world"}`,
		"future schema":   `{"schema_version": 99}`,
		"not json at all": "\x00\x01\x02",
	} {
		if err := os.WriteFile(filepath.Join(dir, state.StateFileName), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		code, out, errOut := run()
		if code != statusNoState || strings.Count(errOut, "\n") > 1 || !strings.Contains(errOut, "saved state unusable") {
			t.Errorf("%s: exit %d, stdout %q, stderr %q", name, code, out, errOut)
		}
	}
	// A socket that accepts and never answers: an answer within ~1 s.
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // hold it open, say nothing
		}
	}()
	start := time.Now()
	code, _, errOut := run()
	if code != statusNoState || !strings.Contains(errOut, "did not answer within 1 s") {
		t.Errorf("silent socket: exit %d %s", code, errOut)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("status took %s against a silent socket", d)
	}
	if code, _, errOut := runCLI(t, nil, "status", "--bogus"); code != exitUsage {
		t.Errorf("usage: exit %d %s", code, errOut)
	}
}

// kill -9 while the agent writes its state again and again must leave a
// state.json that parses.
func TestStateFileSurvivesKill9(t *testing.T) {
	b := bed.Get(t)
	reg := b.Registry("main")
	rts := []string{"autogen", "codex", "crewai"}
	for _, ns := range []string{"kill-a", "kill-b"} {
		if _, err := b.Seed(context.Background(), reg, ns, rts, testbed.SeedOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 8 {
		envFile := writeFile(t, config.KeyRegistry+"="+reg.Prefix("kill-a")+"\n"+config.KeyRuntimes+"=autogen,codex,crewai\n")
		p := startProcess(t, []string{"DOCKER_HOST=" + b.DockerHost}, "--env-file", envFile, "--debounce", "10ms")
		// A kill before the first save leaves no state by design; on a
		// loaded machine the start alone can outlast the flip window.
		testbed.WaitFor(t, "the agent's first state save", 30*time.Second, func() bool {
			_, err := os.Stat(filepath.Join(p.dir, "state", state.StateFileName))
			return err == nil
		})
		// Flip between two prefixes as fast as the agent reacts: every
		// flip rewrites the state several times.
		stop := time.After(time.Duration(300+rand.IntN(1200)) * time.Millisecond)
	flips:
		for n := 0; ; n++ {
			ns := []string{"kill-a", "kill-b"}[n%2]
			_ = os.WriteFile(envFile, []byte(config.KeyRegistry+"="+reg.Prefix(ns)+"\n"+config.KeyRuntimes+"=autogen,codex,crewai\n"), 0o600)
			select {
			case <-stop:
				break flips
			case <-time.After(30 * time.Millisecond):
			}
		}
		if err := p.Cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-p.Done()
		path := filepath.Join(p.dir, "state", state.StateFileName)
		doc, err := state.ReadStateFile(path)
		if err != nil {
			data, _ := os.ReadFile(path)
			t.Fatalf("round %d: state.json after kill -9: %v\n%s", i, err, data)
		}
		if doc.Agent.PID != p.Cmd.Process.Pid {
			t.Fatalf("round %d: state from pid %d, want %d", i, doc.Agent.PID, p.Cmd.Process.Pid)
		}
		leftovers, _ := filepath.Glob(filepath.Join(p.dir, "state", ".state-*.tmp"))
		t.Logf("round %d: valid state (%d images, %d warm), %d temp files left by the kill", i, len(doc.Images), doc.Agent.Warm, len(leftovers))
		if i == 7 && len(leftovers) == 0 {
			// Make sure the next start has one to clean.
			_ = os.WriteFile(filepath.Join(p.dir, "state", ".state-123.tmp"), []byte("{"), 0o600)
		}
		if i == 7 {
			again := startProcess(t, []string{"DOCKER_HOST=" + b.DockerHost}, "--env-file", envFile, "--state-dir", filepath.Join(p.dir, "state"))
			testbed.WaitFor(t, "the restarted agent to remove the temp files", 10*time.Second, func() bool {
				left, _ := filepath.Glob(filepath.Join(p.dir, "state", ".state-*.tmp"))
				return len(left) == 0
			})
			again.terminate(t)
		}
	}
}
