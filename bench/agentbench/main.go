// Command agentbench measures the long-running agent against the test bed:
//
//   - reaction: env file written → first manifest request for the new
//     prefix at the registry (timestamps from the registry's own request
//     log), over N flips between two registries; the baseline is the same
//     interval for an ImagePull issued directly through the Engine API at
//     the moment of the write, measured in the same run.
//   - idle: CPU seconds and RSS of the agent over a window with every image
//     warm, beside the Docker daemon's own over the same window.
//
// It needs root and the Debian packages of the test bed (make deps), and a
// built bin/pull-agent (make build).
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/molecule-ai/pull-agent/agent"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "agentbench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("agentbench", flag.ContinueOnError)
	bin := fs.String("bin", "bin/pull-agent", "pull-agent binary")
	flips := fs.Int("flips", 20, "prefix flips to time")
	idle := fs.Duration("idle", 60*time.Second, "idle window")
	if err := fs.Parse(args); err != nil {
		return err
	}
	binAbs, err := filepath.Abs(*bin)
	if err != nil {
		return err
	}
	bed, err := testbed.Start(ctx, testbed.Options{})
	if err != nil {
		return err
	}
	defer bed.Stop()
	regs := map[string]*testbed.Registry{}
	for _, name := range []string{"a", "b"} {
		r, err := bed.StartRegistry(ctx, name, testbed.RegistryOptions{})
		if err != nil {
			return err
		}
		if _, err := bed.Seed(ctx, r, "molecule-ai", agent.KnownRuntimes(), testbed.SeedOptions{}); err != nil {
			return err
		}
		regs[name] = r
	}
	dir := filepath.Join(bed.Dir, "agent")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	envFile := filepath.Join(dir, "pull-agent.env")
	writeEnv := func(prefix string) error {
		tmp := envFile + ".tmp"
		if err := os.WriteFile(tmp, []byte(agent.KeyRegistry+"="+prefix+"\n"), 0o644); err != nil {
			return err
		}
		return os.Rename(tmp, envFile)
	}
	if err := writeEnv(regs["a"].Prefix("molecule-ai")); err != nil {
		return err
	}
	notify, err := listenNotify(filepath.Join(bed.Dir, "notify.sock"))
	if err != nil {
		return err
	}
	defer notify.Close()
	cmd := exec.CommandContext(ctx, binAbs, "run", "--env-file", envFile, "--log-level", "warn")
	cmd.Env = append(os.Environ(), "DOCKER_HOST="+bed.DockerHost, "NOTIFY_SOCKET="+notify.path)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	warm := func(prefix string) string { return "STATUS=9/9 images warm from " + prefix }
	if err := notify.wait(ctx, warm(regs["a"].Prefix("molecule-ai")), 2*time.Minute); err != nil {
		return err
	}

	// Reaction.
	engine, err := agent.NewDockerEngine(bed.DockerHost)
	if err != nil {
		return err
	}
	var agentLat, directLat []time.Duration
	for i := range *flips {
		name := "b"
		if i%2 == 1 {
			name = "a"
		}
		r := regs[name]
		notify.reset()
		t0 := time.Now()
		if err := writeEnv(r.Prefix("molecule-ai")); err != nil {
			return err
		}
		if err := notify.wait(ctx, warm(r.Prefix("molecule-ai")), time.Minute); err != nil {
			return err
		}
		first, err := firstManifestRequest(r.LogPath, t0)
		if err != nil {
			return err
		}
		agentLat = append(agentLat, first.Sub(t0))

		// Baseline: the daemon's own latency from an API call to the
		// registry's first manifest request.
		t1 := time.Now()
		rc, err := engine.ImagePull(ctx, agent.ImageRef(r.Prefix("molecule-ai"), "codex"), agent.PullOptions{})
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, rc)
		rc.Close()
		first, err = firstManifestRequest(r.LogPath, t1)
		if err != nil {
			return err
		}
		directLat = append(directLat, first.Sub(t1))
	}
	ap50, ap95 := pct(agentLat, 50), pct(agentLat, 95)
	dp50, dp95 := pct(directLat, 50), pct(directLat, 95)
	fmt.Fprintf(out, "reaction over %d flips (env file rename → first manifest request at the registry):\n", *flips)
	fmt.Fprintf(out, "  pull-agent run:          p50 %6.1f ms  p95 %6.1f ms  min %6.1f  max %6.1f\n", ms(ap50), ms(ap95), ms(slices.Min(agentLat)), ms(slices.Max(agentLat)))
	fmt.Fprintf(out, "  baseline, direct API:    p50 %6.1f ms  p95 %6.1f ms\n", ms(dp50), ms(dp95))
	fmt.Fprintf(out, "  ratio agent/baseline:    p50 %.1fx  p95 %.1fx  (the agent's debounce is 150 ms)\n", float64(ap50)/float64(dp50), float64(ap95)/float64(dp95))

	// Idle.
	dockerdPid, err := pidOf(bed.Dir, "dockerd")
	if err != nil {
		return err
	}
	time.Sleep(2 * time.Second)
	a0, d0 := cpu(cmd.Process.Pid), cpu(dockerdPid)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(*idle):
	}
	a1, d1 := cpu(cmd.Process.Pid), cpu(dockerdPid)
	aRSS, dRSS := rss(cmd.Process.Pid), rss(dockerdPid)
	fmt.Fprintf(out, "idle %s with 9 warm images:\n", *idle)
	fmt.Fprintf(out, "  pull-agent run:          cpu %.3f s  rss %.1f MiB\n", (a1 - a0).Seconds(), float64(aRSS)/(1<<20))
	fmt.Fprintf(out, "  baseline, idle dockerd:  cpu %.3f s  rss %.1f MiB\n", (d1 - d0).Seconds(), float64(dRSS)/(1<<20))
	if d1 > d0 {
		fmt.Fprintf(out, "  ratio agent/dockerd:     cpu %.2fx  rss %.2fx\n", float64(a1-a0)/float64(d1-d0), float64(aRSS)/float64(dRSS))
	}
	if st, err := os.Stat(binAbs); err == nil {
		fmt.Fprintf(out, "binary size: %.1f MB\n", float64(st.Size())/1e6)
	}
	return nil
}

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

func rss(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			kb, _ := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

func pidOf(dir, name string) (int, error) {
	data, err := os.ReadFile(filepath.Join(dir, "pids", name+".pid"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(data)))
}

type notifySock struct {
	path string
	conn *net.UnixConn
	mu   sync.Mutex
	msgs []string
}

func listenNotify(path string) (*notifySock, error) {
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	n := &notifySock{path: path, conn: c}
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := c.Read(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, strings.Split(strings.TrimSpace(string(buf[:k])), "\n")...)
			n.mu.Unlock()
		}
	}()
	return n, nil
}

func (n *notifySock) Close() error { return n.conn.Close() }

func (n *notifySock) reset() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.msgs = nil
}

func (n *notifySock) wait(ctx context.Context, msg string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		n.mu.Lock()
		found := slices.Contains(n.msgs, msg)
		n.mu.Unlock()
		if found {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(10 * time.Millisecond)
	}
	return errors.New("timed out waiting for " + msg)
}
