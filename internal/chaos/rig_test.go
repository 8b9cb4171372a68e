package chaos

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/agent/state"
	"github.com/molecule-ai/pull-agent/internal/safetext"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

func encodeAuth(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// rig is one row's agent and its files: env file, config.json, state
// directory and status socket, all under dir.
type rig struct {
	t          *testing.T
	w          *world
	dir        string
	envFile    string
	stateDir   string
	socket     string
	dockerHost string
	env        []string // extra environment of the agent
	envExtra   string   // extra lines of the env file
	args       []string // extra flags of 'run'
	// noDAC runs the agent without CAP_DAC_OVERRIDE and
	// CAP_DAC_READ_SEARCH, so that file modes bind it as they bind a
	// non-root service (the tests run as root).
	noDAC bool
	// fallback gives main's prefixes the fallback registry's namespace
	// of the same name as MOLECULE_IMAGE_FALLBACK_REGISTRY.
	fallback bool

	proc  *agentProc
	procs []*agentProc // every process of the row, for the secret check

	// want is the prefix the row ends on and its digests.
	want    string
	digests map[string]string
	// warmIDs are the image IDs that were warm before the fault.
	warmIDs  map[string]string
	baseline state.Counts
	// outputs are other texts the row produced (status output, errors).
	outputs []string
	// hosts are the registry hosts whose requests the rig checks for
	// credentials meant for another host.
	hosts []hostCreds
	// helperDump is where a credential helper wrote its environment, if
	// the row had one do so; it is searched for secrets too.
	helperDump string
}

// agentProc is one 'pull-agent run' process.
type agentProc struct{ *testbed.Process }

func newRig(t *testing.T, w *world) *rig {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "pa-row-") // short: socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	r := &rig{t: t, w: w, dir: dir, dockerHost: w.bed.DockerHost,
		envFile:  filepath.Join(dir, "etc", "pull-agent", "env"),
		stateDir: filepath.Join(dir, "state"),
		socket:   filepath.Join(dir, "status.sock"),
		hosts:    w.hosts(),
	}
	if err := os.MkdirAll(filepath.Dir(r.envFile), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "docker"), 0o700); err != nil {
		t.Fatal(err)
	}
	r.writeDockerConfig(w.dockerConfig())
	t.Cleanup(func() {
		for _, p := range r.procs {
			p.Kill()
		}
		if t.Failed() {
			for i, p := range r.procs {
				t.Logf("agent %d stderr (last 6000 characters):\n%s", i, safetext.Tail(p.Output.String(), 6000))
			}
		}
	})
	return r
}

func (r *rig) writeDockerConfig(s string) {
	r.t.Helper()
	writeAtomic(r.t, filepath.Join(r.dir, "docker", "config.json"), s, 0o600)
}

// writeEnv replaces the env file by rename, as editors and install.sh do.
func (r *rig) writeEnv(content string) {
	r.t.Helper()
	writeAtomic(r.t, r.envFile, content, 0o600)
}

func writeAtomic(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(tmp, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// flip points the agent at prefix (whose images have digests).
func (r *rig) flip(prefix string, digests map[string]string) {
	r.t.Helper()
	r.want, r.digests = prefix, digests
	r.writeEnv(r.envFor(prefix))
}

// envFor is the rig's env file for prefix.
func (r *rig) envFor(prefix string) string {
	s := r.w.envFile(prefix) + r.envExtra
	if r.fallback {
		s += r.w.fallbackLine(prefix)
	}
	return s
}

// start starts 'pull-agent run' for the rig.
func (r *rig) start() *agentProc {
	r.t.Helper()
	p := r.spawn(r.stateDir, r.socket)
	r.proc = p
	return p
}

func (r *rig) spawn(stateDir, socket string) *agentProc {
	r.t.Helper()
	args := append([]string{"run", "--env-file", r.envFile, "--state-dir", stateDir, "--status-socket", socket,
		"--debounce", "50ms", "--retry-initial", "200ms", "--retry-max", "1s", "--retry-attempts", "1000",
		"--pull-stall-timeout", "2s", "--pull-begin-timeout", "10s", "--helper-timeout", "1s"}, r.args...)
	name := r.w.bin
	if r.noDAC {
		args = append([]string{"--bounding-set", "-dac_override,-dac_read_search", "--", r.w.bin}, args...)
		name = "setpriv"
	}
	cmd := exec.Command(name, args...)
	cmd.Env = r.environ()
	proc, err := testbed.StartProcess(cmd)
	if err != nil {
		r.t.Fatal(err)
	}
	p := &agentProc{proc}
	r.procs = append(r.procs, p)
	return p
}

// environ is the environment the rig's agent and commands run with.
func (r *rig) environ() []string {
	return append([]string{
		"PATH=" + r.w.helpers + ":" + os.Getenv("PATH"),
		"DOCKER_HOST=" + r.dockerHost,
		"DOCKER_CONFIG=" + filepath.Join(r.dir, "docker"),
		"AWS_ENDPOINT_URL_ECR=" + r.w.ecrAPI.URL,
		"AWS_ACCESS_KEY_ID=AKIDCHAOSCHAOS",
		"AWS_SECRET_ACCESS_KEY=" + r.w.awsKey,
		"AWS_EC2_METADATA_DISABLED=true",
		"AWS_CONFIG_FILE=" + filepath.Join(r.dir, "no-aws-config"),
		"AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(r.dir, "no-aws-credentials"),
		"AWS_MAX_ATTEMPTS=1",
		"GORACE=halt_on_error=1",
	}, r.env...)
}

// command runs 'pull-agent ARGS' as an operator would beside the rig's
// agent, keeps its output for the secret and escape checks, and returns
// it.
func (r *rig) command(args ...string) string {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, r.w.bin, args...)
	cmd.Env = r.environ()
	out, _ := cmd.CombinedOutput() // the exit code is the command's business
	r.outputs = append(r.outputs, string(out))
	return string(out)
}

// stop sends sig, which ends the agent, and returns how long the exit
// took.
func (p *agentProc) stop(t *testing.T, sig syscall.Signal) time.Duration {
	t.Helper()
	took, err := p.Stop(sig, 20*time.Second)
	if took == 0 && err != nil {
		t.Fatal(err)
	}
	return took
}

// get asks the agent on its status socket for path and decodes the answer
// into v as sent (not sanitised: what the agent sends is kept for the
// secret and escape checks).
func (r *rig) get(path string, v any) error {
	body, err := state.NewStatusClient(r.socket, 2*time.Second).Get(context.Background(), path)
	if err != nil {
		return err
	}
	r.outputs = append(r.outputs, string(body))
	if len(r.outputs) > 50 {
		r.outputs = r.outputs[len(r.outputs)-50:]
	}
	return json.Unmarshal(body, v)
}

func (r *rig) doc() (state.StateDoc, error) {
	var d state.StateDoc
	err := r.get("/status", &d)
	return d, err
}

func (r *rig) counts() (state.Counts, error) {
	var c state.Counts
	err := r.get("/debug/counts?close_idle", &c)
	return c, err
}

// waitFor polls the live state until cond holds, the agent exits or the
// timeout passes; it returns how long it waited.
func (r *rig) waitFor(what string, timeout time.Duration, cond func(state.StateDoc) bool) time.Duration {
	r.t.Helper()
	start := time.Now()
	var last state.StateDoc
	var lastErr error
	ok := false
	defer func() {
		if !ok {
			r.t.Logf("last state (error %v):\n%s", lastErr, describe(last))
		}
	}()
	testbed.WaitFor(r.t, what, timeout, func() bool {
		if r.proc != nil && !r.proc.Running() {
			r.t.Fatalf("waiting for %s: the agent exited: %v", what, r.proc.Err())
		}
		last, lastErr = r.doc()
		return lastErr == nil && cond(last)
	})
	ok = true
	return time.Since(start)
}

func describe(d state.StateDoc) string {
	var b strings.Builder
	fmt.Fprintf(&b, "prefix %q config_ok %v %q docker_up %v %d/%d warm\n", d.Agent.Prefix, d.Agent.ConfigOK, d.Agent.ConfigError, d.Agent.DockerUp, d.Agent.Warm, d.Agent.Total)
	for _, i := range d.Images {
		fmt.Fprintf(&b, "  %s %s attempts %d %s %s\n", i.Image, i.State, i.Attempts, i.LastErrorClass, i.LastError)
	}
	for _, h := range d.Hosts {
		fmt.Fprintf(&b, "  host %s %s cooldown %v\n", h.Host, h.CredentialSource, h.CooldownUntil)
	}
	return b.String()
}

// converged reports whether every image of the rig's prefix is warm with
// the digest the registry serves.
func (r *rig) converged(d state.StateDoc) bool {
	if d.Agent.Prefix != r.want || !d.Healthy() || len(d.Images) != len(r.digests) {
		return false
	}
	for _, i := range d.Images {
		if i.LocalDigest != r.digests[i.Runtime] {
			return false
		}
	}
	return true
}

// warmUp starts the agent on a fresh prefix, waits for every image to be
// warm and records the baseline: image IDs and process counts.
func (r *rig) warmUp(src source) {
	r.t.Helper()
	prefix, ds := r.w.seed(r.t, src, testbed.SeedOptions{})
	r.flip(prefix, ds)
	r.start()
	r.waitFor("the first prefix warm", 60*time.Second, r.converged)
	r.recordWarm()
	// Let connections made while warming settle before counting.
	time.Sleep(300 * time.Millisecond)
	c, err := r.counts()
	if err != nil {
		r.t.Fatal(err)
	}
	r.baseline = c
}

func (r *rig) recordWarm() {
	r.t.Helper()
	d, err := r.doc()
	if err != nil {
		r.t.Fatal(err)
	}
	r.warmIDs = map[string]string{}
	for _, i := range d.Images {
		r.warmIDs[i.Image] = i.ImageID
	}
}

// failing waits until every image of the rig's prefix has failed at least
// once with one of classes, and returns how long that took.
func (r *rig) failing(timeout time.Duration, classes ...string) time.Duration {
	r.t.Helper()
	return r.waitFor("pulls failing with "+strings.Join(classes, " or "), timeout, func(d state.StateDoc) bool {
		if d.Agent.Prefix != r.want || len(d.Images) == 0 {
			return false
		}
		for _, i := range d.Images {
			ok := false
			for _, c := range classes {
				ok = ok || i.LastErrorClass == c
			}
			if !ok || i.State == state.Warm {
				return false
			}
		}
		return true
	})
}

// pulling waits for a pull of the rig's prefix to be moving bytes.
func (r *rig) pulling() {
	r.t.Helper()
	r.waitFor("a pull moving bytes", 30*time.Second, func(d state.StateDoc) bool {
		for _, i := range d.Images {
			if d.Agent.Prefix == r.want && i.Progress != nil && i.Progress.Bytes > 0 {
				return true
			}
		}
		return false
	})
}

// configRefused waits until the agent reports the env file refused with
// a message containing want, keeping the previous prefix.
func (r *rig) configRefused(keep, want string) time.Duration {
	r.t.Helper()
	return r.waitFor("the env file refused with "+want, 15*time.Second, func(d state.StateDoc) bool {
		return !d.Agent.ConfigOK && strings.Contains(d.Agent.ConfigError, want) && d.Agent.Prefix == keep
	})
}

// outcome is what the invariants measured for the matrix.
type outcome struct {
	converge time.Duration
	// baseline is the count before the fault, counts after the row.
	baseline, counts state.Counts
}

// invariants checks what must hold after every row once its fault is
// removed.
func (r *rig) invariants() outcome {
	t := r.t
	t.Helper()
	o := outcome{baseline: r.baseline}
	if r.proc == nil || !r.proc.Running() {
		t.Fatalf("the agent is not running at the end of the row: %v", r.proc.Err())
	}
	o.converge = r.waitFor("every image of the final prefix warm and verified", 90*time.Second, r.converged)

	engine, err := engine.NewDockerEngine(config.DockerEndpoint{Host: r.dockerHost})
	if err != nil {
		t.Fatal(err)
	}
	defer engine.Close()
	for ref, id := range r.warmIDs {
		if _, err := engine.ImageInspect(context.Background(), id); err != nil {
			t.Errorf("%s (%s) was warm before the fault and is gone: %v", ref, id, err)
		}
	}

	// The state file parses and, a moment after convergence, says so.
	var doc state.StateDoc
	testbed.Poll(5*time.Second, func() bool {
		doc, err = state.ReadStateFile(filepath.Join(r.stateDir, state.StateFileName))
		return err == nil && doc.Agent.PID == r.proc.Cmd.Process.Pid && r.converged(doc)
	})
	switch {
	case err != nil:
		t.Errorf("the state file does not parse: %v", err)
	case doc.Agent.PID != r.proc.Cmd.Process.Pid:
		t.Errorf("the state file is from pid %d, not the running agent %d", doc.Agent.PID, r.proc.Cmd.Process.Pid)
	case !r.converged(doc):
		t.Errorf("the state file does not show the converged state:\n%s", describe(doc))
	}
	if leftovers, _ := filepath.Glob(filepath.Join(r.stateDir, "*.tmp*")); len(leftovers) > 0 {
		t.Errorf("temporary files left in the state directory: %v", leftovers)
	}

	out, err := exec.Command(r.w.bin, "status", "--status-socket", r.socket, "--state-dir", r.stateDir).CombinedOutput()
	if err != nil {
		t.Errorf("pull-agent status after convergence: %v\n%s", err, out)
	}
	r.outputs = append(r.outputs, string(out))
	// What an operator runs beside the agent says nothing secret and
	// sends no escape sequence either.
	r.command("check", "--env-file", r.envFile, "--state-dir", r.stateDir)
	r.command("pull", "--env-file", r.envFile, "--state-dir", r.stateDir)
	r.noSecrets()
	r.credentialsPerHost()

	// Counts: idle connections close and timed-out clients go; give
	// them a few seconds to come back to the baseline.
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := r.counts()
		if err != nil {
			t.Fatal(err)
		}
		o.counts = c
		if c.Goroutines <= r.baseline.Goroutines && c.FDs <= r.baseline.FDs {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("leak: %d goroutines and %d fds, %d and %d before the fault", c.Goroutines, c.FDs, r.baseline.Goroutines, r.baseline.FDs)
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	for _, p := range r.procs {
		if s := p.Output.String(); strings.Contains(s, "panic:") || strings.Contains(s, "WARNING: DATA RACE") {
			t.Errorf("a panic or data race in the agent's output:\n%s", safetext.Tail(s, 4000))
		}
	}
	return o
}

// noSecrets fails the row if any secret is in anything the agent or a
// command wrote, if a credential helper's environment held a secret or a
// setting of the env file, or if any of those texts holds an escape
// sequence (raw, or JSON-escaped in a document).
func (r *rig) noSecrets() {
	r.t.Helper()
	texts := append([]string(nil), r.outputs...)
	for _, p := range r.procs {
		texts = append(texts, p.Output.String())
	}
	if b, err := os.ReadFile(filepath.Join(r.stateDir, state.StateFileName)); err == nil {
		texts = append(texts, string(b))
	}
	for _, s := range r.w.secrets() {
		for _, text := range texts {
			if strings.Contains(text, s) {
				r.t.Errorf("secret %.12s… appears in the agent's output", s)
				break
			}
		}
	}
	for _, text := range texts {
		for _, esc := range []string{"\x1b", "\u009b", "\u009d", "\x07", `\u001b`, `\u0007`, `\u009b`, `\x1b`} {
			if strings.Contains(text, esc) {
				r.t.Errorf("an escape sequence (%q) reached the output:\n%s", esc, safetext.Tail(text, 2000))
				break
			}
		}
	}
	if r.helperDump != "" {
		dump, err := os.ReadFile(r.helperDump)
		if err != nil {
			r.t.Errorf("the credential helper's environment dump: %v", err)
		}
		for _, s := range r.w.secrets() {
			// The AWS key is for helpers such as ecr-login: AWS_* is
			// passed on by design.
			if s != r.w.awsKey && strings.Contains(string(dump), s) {
				r.t.Errorf("secret %.12s… is in a credential helper's environment", s)
			}
		}
		for _, line := range strings.Split(string(dump), "\n") {
			k, _, _ := strings.Cut(line, "=")
			if strings.HasPrefix(k, "GHCR_") || strings.HasPrefix(k, "MOLECULE_") || k == "DOCKER_HOST" {
				r.t.Errorf("a credential helper got %s from the agent's environment", k)
			}
		}
	}
}

// ready waits for the agent to serve its status socket.
func (r *rig) ready() {
	r.t.Helper()
	testbed.WaitFor(r.t, "the agent to serve its status socket", 15*time.Second, func() bool {
		if _, err := r.doc(); err == nil {
			return true
		}
		if !r.proc.Running() {
			r.t.Fatalf("the agent exited: %v\n%s", r.proc.Err(), r.proc.Output.String())
		}
		return false
	})
}

// count counts lines of the agent's log containing s.
func (p *agentProc) count(s string) int {
	return strings.Count(p.Output.String(), s)
}
