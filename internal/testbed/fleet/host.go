package fleet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/state"
	"github.com/molecule-ai/pull-agent/internal/safetext"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

// Host is one machine of the fleet: a daemon and, while started, an agent.
type Host struct {
	Index int
	Bed   *testbed.Bed

	dir   string
	bin   string
	agent *testbed.Process // nil while no agent runs
}

func (h *Host) envFile() string   { return filepath.Join(h.dir, "etc", "pull-agent.env") }
func (h *Host) stateDir() string  { return filepath.Join(h.dir, "state") }
func (h *Host) socket() string    { return filepath.Join(h.dir, "status.sock") }
func (h *Host) dockerDir() string { return filepath.Join(h.dir, "docker") }

// EnvFile is the content of a host's env file for prefix, with extra
// lines (such as MOLECULE_FLIP_SPREAD=20s) after it.
func EnvFile(prefix, extra string) string {
	return config.KeyRegistry + "=" + prefix + "\n" + extra
}

// WriteEnv replaces the host's env file by rename, as install.sh does.
func (h *Host) WriteEnv(content string) error {
	return writeAtomic(h.envFile(), content, 0o600)
}

// StartAgent writes config.json and env, and starts 'pull-agent run' with
// its own state directory, status socket and a minimal environment.
func (h *Host) StartAgent(dockerConfig, env string) error {
	for _, d := range []string{filepath.Dir(h.envFile()), h.dockerDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	if err := writeAtomic(filepath.Join(h.dockerDir(), "config.json"), dockerConfig, 0o600); err != nil {
		return err
	}
	if err := h.WriteEnv(env); err != nil {
		return err
	}
	// Each host has a host name and a machine ID of its own, as machines
	// do (whatever identity a per-host spread is drawn from): the agent
	// runs in a UTS and a mount namespace of its own.
	id := filepath.Join(h.dir, "machine-id")
	if err := os.WriteFile(id, []byte(fmt.Sprintf("%032x\n", 0xf1ee7000+h.Index)), 0o444); err != nil {
		return err
	}
	script := `hostname "$0" && mount --bind "$1" /etc/machine-id && shift && exec "$@"`
	cmd := exec.Command("unshare", "--uts", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script,
		fmt.Sprintf("fleet-h%d", h.Index), id, h.bin, "run", "--env-file", h.envFile(), "--state-dir", h.stateDir(),
		"--status-socket", h.socket(), "--debounce", "50ms", "--log-level", "info")
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + h.dir, "DOCKER_CONFIG=" + h.dockerDir(),
		"DOCKER_HOST=" + h.Bed.DockerHost, "AWS_EC2_METADATA_DISABLED=true"}
	p, err := testbed.StartProcess(cmd)
	if err != nil {
		return fmt.Errorf("host %d: %w", h.Index, err)
	}
	h.agent = p
	return nil
}

// StopAgent stops the host's agent, if one runs.
func (h *Host) StopAgent() {
	if h.agent == nil {
		return
	}
	if _, err := h.agent.Stop(syscall.SIGTERM, 20*time.Second); err != nil {
		h.agent.Kill()
	}
	h.agent = nil
}

// AgentOutput is the end of the agent's log, for failure messages.
func (h *Host) AgentOutput() string {
	if h.agent == nil {
		return ""
	}
	return safetext.Tail(h.agent.Output.String(), 4000)
}

// Status asks the host's agent for its state document.
func (h *Host) Status(ctx context.Context) (state.StateDoc, error) {
	if h.agent != nil && !h.agent.Running() {
		return state.StateDoc{}, fmt.Errorf("host %d: the agent exited: %v\n%s", h.Index, h.agent.Err(), h.AgentOutput())
	}
	return state.NewStatusClient(h.socket(), 2*time.Second).Status(ctx)
}

// warmAt reports whether doc shows every image warm from prefix with the
// digest set wants, and when the last of them was pulled.
func warmAt(doc state.StateDoc, prefix string, set map[string]testbed.Seeded) (time.Time, bool) {
	if doc.Agent.Prefix != prefix || len(doc.Images) != len(set) {
		return time.Time{}, false
	}
	var last time.Time
	for _, im := range doc.Images {
		s, ok := set[im.Runtime]
		if !ok || im.State != "warm" || im.Image != config.ImageRef(prefix, im.Runtime) ||
			im.LocalDigest != s.Digest.String() || im.LastSuccess == nil {
			return time.Time{}, false
		}
		if im.LastSuccess.After(last) {
			last = *im.LastSuccess
		}
	}
	return last, true
}

// Verify checks the host from outside the agent: 'pull-agent status
// --json' exits 0 (every image warm, configuration valid) and the daemon
// holds each image of set under prefix with the seeded digest.
func (h *Host) Verify(ctx context.Context, prefix string, set map[string]testbed.Seeded) error {
	cmd := exec.CommandContext(ctx, h.bin, "status", "--json", "--state-dir", h.stateDir(), "--status-socket", h.socket())
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("host %d: pull-agent status: %v\n%s", h.Index, err, safetext.Tail(string(out), 2000))
	}
	cli, err := client.NewClientWithOpts(client.WithHost(h.Bed.DockerHost), client.WithAPIVersionNegotiation())
	if err != nil {
		return err
	}
	defer cli.Close()
	for rt, s := range set {
		ref := config.ImageRef(prefix, rt)
		ins, err := cli.ImageInspect(ctx, ref)
		if err != nil {
			return fmt.Errorf("host %d: inspecting %s: %w", h.Index, ref, err)
		}
		want := strings.TrimSuffix(ref, ":latest") + "@" + s.Digest.String()
		if !slices.Contains(ins.RepoDigests, want) {
			return fmt.Errorf("host %d: %s has RepoDigests %v, want %s", h.Index, ref, ins.RepoDigests, want)
		}
	}
	return nil
}

// Wipe stops the agent, removes every image from the daemon and the
// agent's state: the host is cold again.
func (h *Host) Wipe(ctx context.Context) error {
	h.StopAgent()
	cli, err := client.NewClientWithOpts(client.WithHost(h.Bed.DockerHost), client.WithAPIVersionNegotiation())
	if err != nil {
		return err
	}
	defer cli.Close()
	imgs, err := cli.ImageList(ctx, image.ListOptions{All: true})
	if err != nil {
		return fmt.Errorf("host %d: listing images: %w", h.Index, err)
	}
	var errs []error
	for _, im := range imgs {
		if _, err := cli.ImageRemove(ctx, im.ID, image.RemoveOptions{Force: true, PruneChildren: true}); err != nil && !client.IsErrNotFound(err) {
			errs = append(errs, fmt.Errorf("host %d: removing %s: %w", h.Index, im.ID, err))
		}
	}
	errs = append(errs, os.RemoveAll(h.stateDir()))
	return errors.Join(errs...)
}

func writeAtomic(path, content string, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Check runs 'pull-agent check --prefix p --compare q --json' on the host,
// with its agent's env file and credentials, and returns what it printed; an
// exit other than 0 (some runtime not "same") is an error.
func (h *Host) Check(ctx context.Context, p, q string) (string, error) {
	cmd := exec.CommandContext(ctx, h.bin, "check", "--env-file", h.envFile(), "--state-dir", h.stateDir(),
		"--prefix", p, "--compare", q, "--json")
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + h.dir, "DOCKER_CONFIG=" + h.dockerDir(),
		"DOCKER_HOST=" + h.Bed.DockerHost, "AWS_EC2_METADATA_DISABLED=true"}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("host %d: pull-agent check --prefix %s --compare %s: %w\n%s%s",
			h.Index, p, q, err, safetext.Tail(string(out), 2000), safetext.Tail(stderr.String(), 2000))
	}
	return string(out), nil
}
