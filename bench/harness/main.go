// Command harness benchmarks pull-agent against the ways hosts are warmed
// today, on the test bed (a real dockerd and registry) through a shaped
// link, in one run, and writes docs/BENCHMARKS.md and docs/benchmarks.json.
//
//	go run ./bench/harness [--profile wan|lan] [--runs 3] [--idle 60s]
//
// It needs root, the test bed's Debian packages (make deps) and a built
// bin/pull-agent (make build); make bench does all three.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/state"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "harness:", err)
		os.Exit(1)
	}
}

// Results is the machine-readable output.
type Results struct {
	Date     string               `json:"date"`
	Machine  string               `json:"machine"`
	Profile  string               `json:"profile"`
	Command  string               `json:"command"`
	Workload string               `json:"workload"`
	Cold     map[string][]float64 `json:"cold_seconds"`
	Steady   map[string]Steady    `json:"steady_state"`
	Reaction Reaction             `json:"reaction"`
	Idle     Idle                 `json:"idle"`
	Scaling  []Scale              `json:"scaling"`
	Binary   int64                `json:"binary_bytes"`
}

// Steady is one contender's refresh of warm images.
type Steady struct {
	Seconds          float64        `json:"seconds"`
	RequestsPerImage float64        `json:"requests_per_image"`
	BlobGets         int            `json:"blob_gets"`
	Requests         map[string]int `json:"requests"`
}

// Reaction is env-file write → first manifest request.
type Reaction struct {
	AgentP50, AgentP95, BaselineP50, BaselineP95 float64 // ms
	Flips                                        int
}

// Idle is the agent's footprint with every image warm.
type Idle struct {
	Seconds                 float64
	AgentCPU, DockerdCPU    float64
	AgentRSSMiB, DockerdRSS float64
}

// Scale is one image count.
type Scale struct {
	Images           int     `json:"images"`
	ColdSeconds      float64 `json:"cold_seconds"`
	RefreshSeconds   float64 `json:"refresh_seconds"`
	RefreshRequests  int     `json:"refresh_requests"`
	RequestsPerImage float64 `json:"refresh_requests_per_image"`
}

type env struct {
	bin, docker string
	bed         *testbed.Bed
	reg         *testbed.Registry
	proxy       *testbed.TCPProxy
	dir         string
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("harness", flag.ContinueOnError)
	profile := fs.String("profile", "wan", "link between daemon and registry: wan (20 ms each way, 200 Mbit/s per connection) or lan (unshaped)")
	runs := fs.Int("runs", 3, "runs of each contender (interleaved)")
	idle := fs.Duration("idle", 60*time.Second, "idle window for the footprint")
	flips := fs.Int("flips", 20, "prefix flips for the reaction time")
	bin := fs.String("bin", "bin/pull-agent", "pull-agent binary")
	cache := fs.String("cache", "/var/cache/pull-agent-bench", "where generated layers are kept between runs")
	doc := fs.String("doc", "docs/BENCHMARKS.md", "markdown output")
	jsonOut := fs.String("json", "docs/benchmarks.json", "JSON output")
	rerender := fs.Bool("render", false, "only rewrite the markdown from the JSON of an earlier run")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *rerender {
		data, err := os.ReadFile(*jsonOut)
		if err != nil {
			return err
		}
		var r Results
		if err := json.Unmarshal(data, &r); err != nil {
			return err
		}
		return os.WriteFile(*doc, []byte(render(r)), 0o644)
	}
	if *profile != "wan" && *profile != "lan" {
		return fmt.Errorf("--profile %q: wan or lan", *profile)
	}
	e := &env{}
	var err error
	if e.bin, err = filepath.Abs(*bin); err != nil {
		return err
	}
	if e.docker, err = exec.LookPath("docker"); err != nil {
		return fmt.Errorf("the docker CLI is needed for the shell contenders: %w", err)
	}
	e.bed, err = testbed.Start(ctx, testbed.Options{})
	if err != nil {
		return err
	}
	defer e.bed.Stop()
	e.dir = e.bed.Dir
	if e.reg, err = e.bed.StartRegistry(ctx, "bench", testbed.RegistryOptions{}); err != nil {
		return err
	}
	if e.proxy, err = testbed.NewTCPProxy("bench", e.reg.Addr); err != nil {
		return err
	}
	defer e.proxy.Close()
	if *profile == "wan" {
		if err := e.proxy.Shape(20, 200); err != nil {
			return err
		}
	}
	res := Results{
		Date: time.Now().UTC().Format(time.RFC3339), Profile: *profile, Machine: machine(),
		Command: "make bench  # go run ./bench/harness --profile " + *profile + fmt.Sprintf(" --runs %d", *runs),
		Cold:    map[string][]float64{}, Steady: map[string]Steady{},
	}
	w := workload{dir: *cache, baseSize: 64 << 20, uniqueSize: 24 << 20, count: 9}
	res.Workload = "9 images: a shared 64 MiB base layer + a unique 24 MiB layer each, random bytes"
	rts := config.KnownRuntimes()
	fmt.Fprintln(os.Stderr, "harness: preparing the workload (cached in "+*cache+")")
	if err := w.push(ctx, e.reg.Addr, "bench", rts); err != nil {
		return err
	}
	prefix := e.proxy.Prefix("bench")
	images := make([]string, len(rts))
	for i, rt := range rts {
		images[i] = config.ImageRef(prefix, rt)
	}

	contenders := []struct {
		name string
		run  func() error
	}{
		{"pull-agent pull", func() error { return e.agentPull(ctx, prefix, rts) }},
		{"sequential docker pull", func() error {
			return e.shell(ctx, "for i in "+strings.Join(images, " ")+"; do docker -H \"$DH\" pull -q \"$i\" >/dev/null; done")
		}},
		{"xargs -P 3 docker pull", func() error {
			return e.shell(ctx, "printf '%s\\n' "+strings.Join(images, " ")+" | xargs -P 3 -n 1 docker -H \"$DH\" pull -q >/dev/null")
		}},
		{"pull-agent run (cold start)", func() error { return e.agentRunCold(ctx, prefix, rts) }},
	}
	for r := range *runs {
		for _, c := range contenders {
			if err := e.empty(ctx); err != nil {
				return err
			}
			start := time.Now()
			if err := c.run(); err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			d := time.Since(start).Seconds()
			if err := e.allPresent(ctx, images); err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			res.Cold[c.name] = append(res.Cold[c.name], d)
			fmt.Fprintf(os.Stderr, "harness: run %d %-28s %6.2f s\n", r+1, c.name, d)
		}
	}

	// Steady state: everything warm, then a refresh by each contender.
	for _, c := range contenders[:3] {
		var best Steady
		for r := range *runs {
			t0 := time.Now()
			if err := c.run(); err != nil {
				return err
			}
			s := Steady{Seconds: time.Since(t0).Seconds()}
			s.Requests, s.BlobGets = requestsSince(e.reg.LogPath, t0)
			total := 0
			for _, n := range s.Requests {
				total += n
			}
			s.RequestsPerImage = float64(total) / float64(len(images))
			if r == 0 || s.Seconds < best.Seconds {
				best = s
			}
		}
		res.Steady[c.name] = best
	}

	// Reaction and footprint (agent.go).
	if res.Reaction, res.Idle, err = e.reactionAndIdle(ctx, *flips, *idle); err != nil {
		return err
	}

	// Scaling, with smaller images so that 81 fit on a vfs data root.
	for _, n := range []int{9, 27, 81} {
		sw := workload{dir: *cache, baseSize: 16 << 20, uniqueSize: 1 << 20, count: n}
		names := make([]string, n)
		for i := range names {
			names[i] = fmt.Sprintf("scale-%03d", i)
		}
		ns := fmt.Sprintf("scale%d", n)
		if err := sw.push(ctx, e.reg.Addr, ns, names); err != nil {
			return err
		}
		if err := e.empty(ctx); err != nil {
			return err
		}
		t0 := time.Now()
		if err := e.agentPull(ctx, e.proxy.Prefix(ns), names); err != nil {
			return err
		}
		sc := Scale{Images: n, ColdSeconds: time.Since(t0).Seconds()}
		t1 := time.Now()
		if err := e.agentPull(ctx, e.proxy.Prefix(ns), names); err != nil {
			return err
		}
		sc.RefreshSeconds = time.Since(t1).Seconds()
		reqs, _ := requestsSince(e.reg.LogPath, t1)
		for _, v := range reqs {
			sc.RefreshRequests += v
		}
		sc.RequestsPerImage = float64(sc.RefreshRequests) / float64(n)
		res.Scaling = append(res.Scaling, sc)
		fmt.Fprintf(os.Stderr, "harness: scaling %d images: cold %.2f s, refresh %.2f s, %d requests\n", n, sc.ColdSeconds, sc.RefreshSeconds, sc.RefreshRequests)
	}
	if st, err := os.Stat(e.bin); err == nil {
		res.Binary = st.Size()
	}

	data, _ := json.MarshalIndent(res, "", "  ")
	if err := os.WriteFile(*jsonOut, append(data, '\n'), 0o644); err != nil {
		return err
	}
	md := render(res)
	if err := os.WriteFile(*doc, []byte(md), 0o644); err != nil {
		return err
	}
	fmt.Fprint(out, md)
	return nil
}

func (e *env) agentPull(ctx context.Context, prefix string, rts []string) error {
	envFile := filepath.Join(e.dir, "bench.env")
	content := fmt.Sprintf("%s=%s\n%s=%s\nDOCKER_HOST=%s\n%s=-1\n", config.KeyRegistry, prefix, config.KeyRuntimes, strings.Join(rts, ","), e.bed.DockerHost, config.KeyDiskMargin)
	if err := os.WriteFile(envFile, []byte(content), 0o600); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, e.bin, "pull", "--quiet", "--env-file", envFile, "--state-dir", filepath.Join(e.dir, "state"))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

func (e *env) agentRunCold(ctx context.Context, prefix string, rts []string) error {
	envFile := filepath.Join(e.dir, "run.env")
	content := fmt.Sprintf("%s=%s\nDOCKER_HOST=%s\n%s=-1\n", config.KeyRegistry, prefix, e.bed.DockerHost, config.KeyDiskMargin)
	if err := os.WriteFile(envFile, []byte(content), 0o600); err != nil {
		return err
	}
	sock := filepath.Join(e.dir, "run.sock")
	stateDir := filepath.Join(e.dir, "run-state")
	os.RemoveAll(stateDir)
	cmd := exec.CommandContext(ctx, e.bin, "run", "--env-file", envFile, "--state-dir", stateDir, "--status-socket", sock, "--log-level", "warn")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	// Asked on the socket, not by running 'pull-agent status' 20 times a
	// second: the measured host does nothing but the agent's work.
	client := state.NewStatusClient(sock, time.Second)
	deadline := time.Now().Add(10 * time.Minute)
	for time.Now().Before(deadline) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		d, err := client.Status(ctx)
		if err == nil && d.Agent.Total == len(rts) && d.Agent.Warm == len(rts) {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("not warm after 10 minutes")
}

func (e *env) shell(ctx context.Context, script string) error {
	cmd := exec.CommandContext(ctx, "bash", "-c", "set -euo pipefail; "+script)
	cmd.Env = append(os.Environ(), "DH="+e.bed.DockerHost)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

// empty removes every image, leaving the daemon's layer store empty.
func (e *env) empty(ctx context.Context) error {
	return e.shell(ctx, `docker -H "$DH" image prune -af >/dev/null && [ -z "$(docker -H "$DH" images -aq)" ]`)
}

func (e *env) allPresent(ctx context.Context, images []string) error {
	return e.shell(ctx, `docker -H "$DH" image inspect `+strings.Join(images, " ")+` >/dev/null`)
}

var completed = regexp.MustCompile(`^time="([^"]+)".*msg="response completed.*http\.request\.method=(\w+).*http\.request\.uri="?([^" ]+)`)

// requestsSince counts the registry's requests after t by kind, from its
// request log, and the blob GETs among them.
func requestsSince(logPath string, t time.Time) (map[string]int, int) {
	time.Sleep(200 * time.Millisecond) // let the log catch up
	counts := map[string]int{}
	blobs := 0
	f, err := os.Open(logPath)
	if err != nil {
		return counts, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		m := completed.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		ts, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil || ts.Before(t) {
			continue
		}
		kind := m[2] + " "
		switch {
		case m[3] == "/v2/":
			kind += "/v2/"
		case strings.Contains(m[3], "/manifests/"):
			kind += "manifest"
		case strings.Contains(m[3], "/blobs/"):
			kind += "blob"
			if m[2] == "GET" {
				blobs++
			}
		default:
			kind += "other"
		}
		counts[kind]++
	}
	return counts, blobs
}

func machine() string {
	cpu := "?"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(l, "model name") {
				cpu = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return fmt.Sprintf("%d cores (%s), Linux %s, %s", runtime.NumCPU(), cpu, strings.TrimSpace(string(kernel)), runtime.Version())
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func render(r Results) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Benchmarks\n\nMachine: %s. Date: %s. Profile: **%s**", r.Machine, r.Date, r.Profile)
	if r.Profile == "wan" {
		b.WriteString(" (20 ms added latency each way and 200 Mbit/s per connection, by toxiproxy between dockerd and the registry)")
	}
	fmt.Fprintf(&b, ".\nReproduce: `%s`. Raw numbers: `docs/benchmarks.json`.\n\nWorkload: %s. Docker 20.10 (vfs), distribution 2.8, both real, from the test bed.\n\n", r.Command, r.Workload)
	seqCold := median(r.Cold["sequential docker pull"])
	agentCold, xargsCold := median(r.Cold["pull-agent pull"]), median(r.Cold["xargs -P 3 docker pull"])
	st := r.Steady["pull-agent pull"]
	mark := func(ok bool) string {
		if ok {
			return "met"
		}
		return "**missed**"
	}
	b.WriteString("## Targets\n\n| target | measured | |\n| --- | --- | --- |\n")
	fmt.Fprintf(&b, "| cold warm-up ≤ 0.6 × the sequential loop | %.2f × | %s |\n", agentCold/seqCold, mark(agentCold/seqCold <= 0.6))
	fmt.Fprintf(&b, "| cold warm-up within 5 %% of `xargs -P 3` | %+.1f %% | %s |\n", 100*(agentCold/xargsCold-1), mark(agentCold <= xargsCold*1.05))
	fmt.Fprintf(&b, "| refresh: no blob bytes, ≤ 2 requests per image | %d blob GETs, %.2f requests/image | %s |\n", st.BlobGets, st.RequestsPerImage, mark(st.BlobGets == 0 && st.RequestsPerImage <= 2))
	fmt.Fprintf(&b, "| refresh ≤ 0.2 × the sequential loop's wall time | %.2f × | %s |\n", st.Seconds/r.Steady["sequential docker pull"].Seconds, mark(st.Seconds <= 0.2*r.Steady["sequential docker pull"].Seconds))
	fmt.Fprintf(&b, "| reaction p50 ≤ 300 ms | %.0f ms | %s |\n", r.Reaction.AgentP50, mark(r.Reaction.AgentP50 <= 300))
	perMin := r.Idle.AgentCPU / r.Idle.Seconds * 60
	fmt.Fprintf(&b, "| idle RSS ≤ 30 MB, CPU ≤ 0.1 s per minute | %.1f MiB, %.3f s/min | %s |\n\n", r.Idle.AgentRSSMiB, perMin, mark(r.Idle.AgentRSSMiB*1.048576 <= 30 && perMin <= 0.1))
	b.WriteString("## Cold warm-up (empty daemon → nine images present)\n\nEach contender starts from an empty daemon; runs interleaved.\n\n| contender | median s | min–max s | × sequential loop |\n| --- | ---: | ---: | ---: |\n")
	seq := median(r.Cold["sequential docker pull"])
	for _, name := range []string{"pull-agent pull", "sequential docker pull", "xargs -P 3 docker pull", "pull-agent run (cold start)"} {
		v := r.Cold[name]
		fmt.Fprintf(&b, "| %s | %.2f | %.2f–%.2f | %.2f |\n", name, median(v), slices.Min(v), slices.Max(v), median(v)/seq)
	}
	b.WriteString("\n## Steady state (everything warm: a refresh)\n\nRequests counted from the registry's request log; best of the runs.\n\n| contender | wall s | × sequential loop | requests / image | blob GETs | requests |\n| --- | ---: | ---: | ---: | ---: | --- |\n")
	sseq := r.Steady["sequential docker pull"].Seconds
	for _, name := range []string{"pull-agent pull", "sequential docker pull", "xargs -P 3 docker pull"} {
		s := r.Steady[name]
		keys := make([]string, 0, len(s.Requests))
		for k := range s.Requests {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		var parts []string
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s ×%d", k, s.Requests[k]))
		}
		fmt.Fprintf(&b, "| %s | %.2f | %.2f | %.2f | %d | %s |\n", name, s.Seconds, s.Seconds/sseq, s.RequestsPerImage, s.BlobGets, strings.Join(parts, ", "))
	}
	fmt.Fprintf(&b, "\n## Reaction (env-file write → first manifest request at the registry, %d flips)\n\n| | p50 ms | p95 ms |\n| --- | ---: | ---: |\n| pull-agent run | %.1f | %.1f |\n| baseline: a direct API pull's own latency | %.1f | %.1f |\n\nThe agent waits for the directory to be quiet for 150 ms (its debounce) before it reads the file.\n",
		r.Reaction.Flips, r.Reaction.AgentP50, r.Reaction.AgentP95, r.Reaction.BaselineP50, r.Reaction.BaselineP95)
	fmt.Fprintf(&b, "\n## Footprint (idle %.0f s, nine warm images)\n\n| | CPU s | RSS MiB |\n| --- | ---: | ---: |\n| pull-agent run | %.3f | %.1f |\n| dockerd beside it (baseline) | %.3f | %.1f |\n\nBinary: %.1f MB (static).\n",
		r.Idle.Seconds, r.Idle.AgentCPU, r.Idle.AgentRSSMiB, r.Idle.DockerdCPU, r.Idle.DockerdRSS, float64(r.Binary)/1e6)
	b.WriteString("\n## Scaling (`pull-agent pull`; a shared 16 MiB base + 1 MiB unique per image)\n\n| images | cold s | refresh s | refresh requests | requests / image |\n| ---: | ---: | ---: | ---: | ---: |\n")
	for _, s := range r.Scaling {
		fmt.Fprintf(&b, "| %d | %.2f | %.2f | %d | %.2f |\n", s.Images, s.ColdSeconds, s.RefreshSeconds, s.RefreshRequests, s.RequestsPerImage)
	}
	return b.String()
}
