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
	regs := map[string]*testbed.Registry{}
	for _, name := range []string{"a", "b"} {
		r, err := e.bed.StartRegistry(ctx, "react-"+name, testbed.RegistryOptions{})
		if err != nil {
			return Reaction{}, Idle{}, err
		}
		if _, err := e.bed.Seed(ctx, r, "molecule-ai", config.KnownRuntimes(), testbed.SeedOptions{}); err != nil {
			return Reaction{}, Idle{}, err
		}
		regs[name] = r
	}
	dir := filepath.Join(e.dir, "agent")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Reaction{}, Idle{}, err
	}
	envFile := filepath.Join(dir, "pull-agent.env")
	writeEnv := func(prefix string) error {
		tmp := envFile + ".tmp"
		if err := os.WriteFile(tmp, []byte(config.KeyRegistry+"="+prefix+"\n"), 0o644); err != nil {
			return err
		}
		return os.Rename(tmp, envFile)
	}
	if err := writeEnv(regs["a"].Prefix("molecule-ai")); err != nil {
		return Reaction{}, Idle{}, err
	}
	notify, err := testbed.ListenNotify(filepath.Join(e.dir, "notify.sock"))
	if err != nil {
		return Reaction{}, Idle{}, err
	}
	defer notify.Close()
	cmd := exec.CommandContext(ctx, e.bin, "run", "--env-file", envFile, "--log-level", "warn",
		"--state-dir", filepath.Join(dir, "state"), "--status-socket", filepath.Join(dir, "status.sock"))
	cmd.Env = append(os.Environ(), "DOCKER_HOST="+e.bed.DockerHost, "NOTIFY_SOCKET="+notify.Path)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return Reaction{}, Idle{}, err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	waitWarm := func(prefix string, d time.Duration) error {
		want := "STATUS=9/9 images warm from " + prefix
		return notify.Wait(ctx, want, d, func(m string) bool { return m == want })
	}
	if err := waitWarm(regs["a"].Prefix("molecule-ai"), 2*time.Minute); err != nil {
		return Reaction{}, Idle{}, err
	}
	docker, err := engine.NewDockerEngine(config.DockerEndpoint{Host: e.bed.DockerHost})
	if err != nil {
		return Reaction{}, Idle{}, err
	}
	var agentLat, directLat []time.Duration
	for i := range flips {
		r := regs[[]string{"b", "a"}[i%2]]
		notify.Reset()
		t0 := time.Now()
		if err := writeEnv(r.Prefix("molecule-ai")); err != nil {
			return Reaction{}, Idle{}, err
		}
		if err := waitWarm(r.Prefix("molecule-ai"), time.Minute); err != nil {
			return Reaction{}, Idle{}, err
		}
		first, err := firstManifestRequest(r.LogPath, t0)
		if err != nil {
			return Reaction{}, Idle{}, err
		}
		agentLat = append(agentLat, first.Sub(t0))
		t1 := time.Now()
		rc, err := docker.ImagePull(ctx, config.ImageRef(r.Prefix("molecule-ai"), "codex"), engine.PullOptions{})
		if err != nil {
			return Reaction{}, Idle{}, err
		}
		_, _ = io.Copy(io.Discard, rc)
		rc.Close()
		if first, err = firstManifestRequest(r.LogPath, t1); err != nil {
			return Reaction{}, Idle{}, err
		}
		directLat = append(directLat, first.Sub(t1))
	}
	re := Reaction{Flips: flips, AgentP50: ms(pct(agentLat, 50)), AgentP95: ms(pct(agentLat, 95)), BaselineP50: ms(pct(directLat, 50)), BaselineP95: ms(pct(directLat, 95))}
	fmt.Fprintf(os.Stderr, "harness: reaction p50 %.1f ms p95 %.1f ms (direct %.1f / %.1f)\n", re.AgentP50, re.AgentP95, re.BaselineP50, re.BaselineP95)

	dockerdPid, err := e.bed.DockerdPID()
	if err != nil {
		return re, Idle{}, err
	}
	time.Sleep(2 * time.Second)
	a0, d0 := cpu(cmd.Process.Pid), cpu(dockerdPid)
	select {
	case <-ctx.Done():
		return re, Idle{}, ctx.Err()
	case <-time.After(idle):
	}
	a1, d1 := cpu(cmd.Process.Pid), cpu(dockerdPid)
	id := Idle{Seconds: idle.Seconds(), AgentCPU: (a1 - a0).Seconds(), DockerdCPU: (d1 - d0).Seconds(),
		AgentRSSMiB: float64(testbed.RSS(cmd.Process.Pid)) / (1 << 20), DockerdRSS: float64(testbed.RSS(dockerdPid)) / (1 << 20)}
	fmt.Fprintf(os.Stderr, "harness: idle %.0f s: agent %.3f s CPU %.1f MiB, dockerd %.3f s %.1f MiB\n", id.Seconds, id.AgentCPU, id.AgentRSSMiB, id.DockerdCPU, id.DockerdRSS)
	return re, id, nil
}
