package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

var reqLine = regexp.MustCompile(`^time="([^"]+)".*http\.request\.method=(HEAD|GET).*http\.request\.uri="?(/v2/[^" ]+/manifests/[^" ]+)`)

// firstManifestRequest returns the time of the first manifest request in a
// registry log after t. The registry's request log lines carry nanosecond
// timestamps (its access log only seconds).
func firstManifestRequest(logPath string, after time.Time) (time.Time, error) {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		f, err := os.Open(logPath)
		if err != nil {
			return time.Time{}, err
		}
		var best time.Time
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			m := reqLine.FindStringSubmatch(sc.Text())
			if m == nil {
				continue
			}
			ts, err := time.Parse(time.RFC3339Nano, m[1])
			if err != nil || !ts.After(after) {
				continue
			}
			if best.IsZero() || ts.Before(best) {
				best = ts
			}
		}
		f.Close()
		if !best.IsZero() {
			return best, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Time{}, fmt.Errorf("no manifest request in %s after %s", logPath, after.Format(time.RFC3339Nano))
}

func pct(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(0, min(len(s)-1, i-1))]
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

// cpu is a process's user+system CPU time from /proc.
func cpu(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// reactionAndIdle runs the agent against two seeded registries: the
// reaction time over flips between them, then its footprint at rest.
func (e *env) reactionAndIdle(ctx context.Context, flips int, idle time.Duration) (Reaction, Idle, error) {
	regs, err := e.reactionRegistries(ctx)
	if err != nil {
		return Reaction{}, Idle{}, err
	}
	a, err := e.startReactionAgent(ctx, regs["a"].Prefix("molecule-ai"))
	if err != nil {
		return Reaction{}, Idle{}, err
	}
	defer a.stop()
	if err := a.waitWarm(ctx, regs["a"].Prefix("molecule-ai"), 2*time.Minute); err != nil {
		return Reaction{}, Idle{}, err
	}
	re, err := e.reaction(ctx, a, regs, flips)
	if err != nil {
		return Reaction{}, Idle{}, err
	}
	fmt.Fprintf(os.Stderr, "harness: reaction p50 %.1f ms p95 %.1f ms (direct %.1f / %.1f)\n", re.AgentP50, re.AgentP95, re.BaselineP50, re.BaselineP95)
	id, err := e.footprint(ctx, a.cmd.Process.Pid, idle)
	if err != nil {
		return re, Idle{}, err
	}
	fmt.Fprintf(os.Stderr, "harness: idle %.0f s: agent %.3f s CPU %.1f MiB, dockerd %.3f s %.1f MiB\n", id.Seconds, id.AgentCPU, id.AgentRSSMiB, id.DockerdCPU, id.DockerdRSS)
	return re, id, nil
}

// reactionRegistries starts registries "a" and "b", each seeded with
// every runtime's image under molecule-ai.
func (e *env) reactionRegistries(ctx context.Context) (map[string]*testbed.Registry, error) {
	regs := map[string]*testbed.Registry{}
	for _, name := range []string{"a", "b"} {
		r, err := e.bed.StartRegistry(ctx, "react-"+name, testbed.RegistryOptions{})
		if err != nil {
			return nil, err
		}
		if _, err := e.bed.Seed(ctx, r, "molecule-ai", config.KnownRuntimes(), testbed.SeedOptions{}); err != nil {
			return nil, err
		}
		regs[name] = r
	}
	return regs, nil
}

// reactionAgent is a 'pull-agent run' whose env file the harness
// rewrites and whose readiness it reads on its notify socket.
type reactionAgent struct {
	envFile string
	notify  *testbed.NotifySocket
	cmd     *exec.Cmd
}

// startReactionAgent starts 'pull-agent run' on an env file naming
// prefix; stop ends it.
func (e *env) startReactionAgent(ctx context.Context, prefix string) (*reactionAgent, error) {
	dir := filepath.Join(e.dir, "agent")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	a := &reactionAgent{envFile: filepath.Join(dir, "pull-agent.env")}
	if err := a.writeEnv(prefix); err != nil {
		return nil, err
	}
	notify, err := testbed.ListenNotify(filepath.Join(e.dir, "notify.sock"))
	if err != nil {
		return nil, err
	}
	a.notify = notify
	a.cmd = exec.CommandContext(ctx, e.bin, "run", "--env-file", a.envFile, "--log-level", "warn",
		"--state-dir", filepath.Join(dir, "state"), "--status-socket", filepath.Join(dir, "status.sock"))
	a.cmd.Env = append(os.Environ(), "DOCKER_HOST="+e.bed.DockerHost, "NOTIFY_SOCKET="+notify.Path)
	a.cmd.Stderr = os.Stderr
	if err := a.cmd.Start(); err != nil {
		notify.Close()
		return nil, err
	}
	return a, nil
}

// writeEnv replaces the env file, atomically, with one naming prefix.
func (a *reactionAgent) writeEnv(prefix string) error {
	tmp := a.envFile + ".tmp"
	if err := os.WriteFile(tmp, []byte(config.KeyRegistry+"="+prefix+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, a.envFile)
}

// waitWarm waits up to d for the agent to report every image warm from
// prefix.
func (a *reactionAgent) waitWarm(ctx context.Context, prefix string, d time.Duration) error {
	want := "STATUS=9/9 images warm from " + prefix
	return a.notify.Wait(ctx, want, d, func(m string) bool { return m == want })
}

// stop ends the agent and closes its notify socket.
func (a *reactionAgent) stop() {
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	_ = a.cmd.Wait()
	a.notify.Close()
}

// reaction flips the agent's prefix between the registries flips times
// and measures each flip from the env file's write to the first manifest
// request, against a direct API pull's own latency to that request.
func (e *env) reaction(ctx context.Context, a *reactionAgent, regs map[string]*testbed.Registry, flips int) (Reaction, error) {
	docker, err := engine.NewDockerEngine(config.DockerEndpoint{Host: e.bed.DockerHost})
	if err != nil {
		return Reaction{}, err
	}
	var agentLat, directLat []time.Duration
	for i := range flips {
		r := regs[[]string{"b", "a"}[i%2]]
		a.notify.Reset()
		t0 := time.Now()
		if err := a.writeEnv(r.Prefix("molecule-ai")); err != nil {
			return Reaction{}, err
		}
		if err := a.waitWarm(ctx, r.Prefix("molecule-ai"), time.Minute); err != nil {
			return Reaction{}, err
		}
		first, err := firstManifestRequest(r.LogPath, t0)
		if err != nil {
			return Reaction{}, err
		}
		agentLat = append(agentLat, first.Sub(t0))
		t1 := time.Now()
		rc, err := docker.ImagePull(ctx, config.ImageRef(r.Prefix("molecule-ai"), "codex"), engine.PullOptions{})
		if err != nil {
			return Reaction{}, err
		}
		_, _ = io.Copy(io.Discard, rc)
		rc.Close()
		if first, err = firstManifestRequest(r.LogPath, t1); err != nil {
			return Reaction{}, err
		}
		directLat = append(directLat, first.Sub(t1))
	}
	return Reaction{Flips: flips, AgentP50: ms(pct(agentLat, 50)), AgentP95: ms(pct(agentLat, 95)), BaselineP50: ms(pct(directLat, 50)), BaselineP95: ms(pct(directLat, 95))}, nil
}

// footprint measures the CPU time of the agent (pid) and of dockerd over
// idle, and both RSS at its end.
func (e *env) footprint(ctx context.Context, pid int, idle time.Duration) (Idle, error) {
	dockerdPid, err := e.bed.DockerdPID()
	if err != nil {
		return Idle{}, err
	}
	time.Sleep(2 * time.Second)
	a0, d0 := cpu(pid), cpu(dockerdPid)
	select {
	case <-ctx.Done():
		return Idle{}, ctx.Err()
	case <-time.After(idle):
	}
	a1, d1 := cpu(pid), cpu(dockerdPid)
	return Idle{Seconds: idle.Seconds(), AgentCPU: (a1 - a0).Seconds(), DockerdCPU: (d1 - d0).Seconds(),
		AgentRSSMiB: float64(testbed.RSS(pid)) / (1 << 20), DockerdRSS: float64(testbed.RSS(dockerdPid)) / (1 << 20)}, nil
}
