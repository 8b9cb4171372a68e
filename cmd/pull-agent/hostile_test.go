package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/state"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

// registryMessage is what a malicious or compromised registry answers:
// its words, then a window title, cursor-up and erase-line to overwrite
// an earlier line with "all warm", a hyperlink, a clipboard write, a C1
// CSI that clears the screen, and a pre-signed URL whose query carries a
// token.
const registryMessage = "access to this mirror is revoked" +
	"\x1b]0;owned\x07\x1b[1A\x1b[2K\rall warm\x1b]8;;http://evil.test/\x1b\\click\x1b]8;;\x1b\\" +
	"\x1b]52;c;cm0gLXJmIH4=\x07\u009b2J see https://bucket.s3.amazonaws.com/blobs/x?X-Amz-Security-Token=tok-s3cret&X-Amz-Signature=sig-s3cret"

// runCommand runs this test binary as 'pull-agent ARGS' and returns its
// exit code, stdout and stderr. With tty, it runs on a pseudo-terminal
// (util-linux script), so that pull draws its live display and status
// paints; stdout then holds everything the terminal received.
func runCommand(t *testing.T, env []string, tty bool, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var cmd *exec.Cmd
	if tty {
		line := os.Args[0]
		for _, a := range args {
			line += " '" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		cmd = exec.CommandContext(ctx, "script", "-qefc", line, "/dev/null")
		env = append(env, "TERM=xterm-256color")
	} else {
		cmd = exec.CommandContext(ctx, os.Args[0], args...)
	}
	cmd.Env = append(os.Environ(), append([]string{"PULL_AGENT_TEST_MAIN=1", "NO_COLOR="}, env...)...)
	var out, errb testbed.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, out.String(), errb.String()
}

// The process-level proof that a registry's words reach operators as
// text: pull (plain and on a terminal), run + status (human, terminal,
// JSON) and check, against a registry whose error carries escapes and a
// pre-signed URL. No ESC byte or C1 control anywhere, the URL's token
// nowhere (log, state file, socket, output), and "revoked" still shown.
func TestHostileRegistryTextReachesNoTerminal(t *testing.T) {
	b := bed.Get(t)
	reg := b.Registry("main")
	ctx := context.Background()
	rts := []string{"codex", "hermes"}
	if _, err := b.Seed(ctx, reg, "hostile", rts, testbed.SeedOptions{}); err != nil {
		t.Fatal(err)
	}
	proxy, err := testbed.NewHTTPProxy(reg.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	body, _ := json.Marshal(map[string]any{"errors": []map[string]string{{"code": "DENIED", "message": registryMessage}}})
	proxy.SetFault(&testbed.Fault{Match: "/manifests/", Status: 403, Body: string(body)})

	envFile := writeFile(t, fmt.Sprintf("%s=%s\n%s=%s\n%s=-1\n", config.KeyRegistry, proxy.Prefix("hostile"), config.KeyRuntimes, strings.Join(rts, ","), config.KeyDiskMargin))
	env := []string{config.KeyDockerHost + "=" + b.DockerHost}
	outputs := map[string]string{}
	record := func(name string, code int, stdout, stderr string) {
		outputs[name+" stdout"], outputs[name+" stderr"] = stdout, stderr
		t.Logf("%s: exit %d\nstdout:\n%s\nstderr:\n%s", name, code, stdout, stderr)
	}

	code, out, errOut := runCommand(t, env, false, "pull", "--env-file", envFile)
	record("pull", code, out, errOut)
	if code != exitFailed {
		t.Errorf("pull: exit %d, want %d", code, exitFailed)
	}
	code, out, errOut = runCommand(t, env, true, "pull", "--env-file", envFile)
	record("pull on a terminal", code, out, errOut)

	p := startProcess(t, env, "--env-file", envFile)
	waitDoc(t, p, "the agent to record the registry's refusal", func(doc state.StateDoc) bool {
		return len(doc.Images) == len(rts) && doc.Images[0].LastError != "" && doc.Images[1].LastError != ""
	})
	statusArgs := []string{"status", "--status-socket", filepath.Join(p.dir, "status.sock"), "--state-dir", filepath.Join(p.dir, "state")}
	code, out, errOut = runCommand(t, env, false, statusArgs...)
	record("status", code, out, errOut)
	code, out, errOut = runCommand(t, env, true, statusArgs...)
	record("status on a terminal", code, out, errOut)
	code, out, errOut = runCommand(t, env, false, append(statusArgs, "--json")...)
	record("status --json", code, out, errOut)
	code, out, errOut = runCommand(t, env, false, "check", "--env-file", envFile)
	record("check", code, out, errOut)
	code, out, errOut = runCommand(t, env, false, "check", "--env-file", envFile, "--json")
	record("check --json", code, out, errOut)
	if _, err := p.terminate(t); err != nil {
		t.Errorf("agent exit: %v", err)
	}
	state, err := os.ReadFile(filepath.Join(p.dir, "state", state.StateFileName))
	if err != nil {
		t.Fatal(err)
	}
	outputs["state.json"] = string(state)
	outputs["agent log"] = p.Output.String()

	words := []string{"pull stderr", "status stdout", "check stdout", "state.json", "agent log"}
	if b.ContainerdStore() {
		// The containerd image store asks for a manifest with HEAD and
		// reports a refusal by its status line alone ("403 Forbidden"):
		// the registry's words never reach its pull error, which the agent
		// classes auth. check asks through the daemon's distribution
		// endpoint, which reads them.
		// status cuts the line before its end, but shows the class.
		shown := map[string]string{"pull stderr": "403 Forbidden", "state.json": "403 Forbidden", "agent log": "403 Forbidden", "status stdout": "[auth]"}
		for name, want := range shown {
			if !strings.Contains(outputs[name], want) {
				t.Errorf("%s does not show %q", name, want)
			}
		}
		words = []string{"check stdout"}
	}
	checkNoRegistryEscapes(t, outputs, words)
}

// checkNoRegistryEscapes fails t for each output (by name) that holds the
// token of registryMessage's URL or one of its escape sequences, or, among
// those named in words, no longer shows its words.
func checkNoRegistryEscapes(t *testing.T, outputs map[string]string, words []string) {
	t.Helper()
	for name, text := range outputs {
		for _, bad := range []string{"tok-s3cret", "sig-s3cret", "X-Amz-Security-Token=tok", "\\u001b", "\\u0007", "\\u009b", "\u009b", "cm0gLXJmIH4="} {
			if strings.Contains(text, bad) {
				t.Errorf("%s holds %q", name, bad)
			}
		}
		if strings.Contains(name, "terminal") {
			// The terminal output holds the agent's own colours and the
			// live display's cursor movement; nothing the registry sent.
			for _, bad := range []string{"]0;", "]8;", "]52;", "all warm\x1b", "\x1b[2J"} {
				if strings.Contains(text, bad) {
					t.Errorf("%s holds the registry's escape sequence %q", name, bad)
				}
			}
			continue
		}
		if strings.ContainsRune(text, 0x1b) || strings.ContainsRune(text, 0x07) {
			t.Errorf("%s holds an ESC or BEL byte:\n%q", name, text)
		}
	}
	for _, name := range words {
		if !strings.Contains(outputs[name], "revoked") {
			t.Errorf("%s no longer shows the registry's words", name)
		}
	}
}
