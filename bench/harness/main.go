// Command harness benchmarks pull-agent against the ways hosts are warmed
// today, on the test bed (a real dockerd and registry) through a shaped
// link, in one run, and writes docs/BENCHMARKS.md and docs/benchmarks.json.
//
//	go run ./bench/harness [--profile wan|lan] [--runs 3] [--idle 60s]
//	go run ./bench/harness --profile ec2 [--link-mbit 400] [--rtt-ms 20] [--shapes A,B] [--runs 3] [--baseline-bin bin/pull-agent-baseline]
//	go run ./bench/harness --render
//
// It needs root, the test bed's Debian packages (make deps) and a built
// bin/pull-agent (make build); make bench does all three.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
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

type env struct {
	bin, docker string
	bed         *testbed.Bed
	reg         *testbed.Registry
	proxy       *testbed.TCPProxy
	dir         string
}

// options are the harness's flags.
type options struct {
	profile      string
	runs, flips  int
	idle         time.Duration
	bin, cache   string
	doc, jsonOut string
	rerender     bool
	// ec2 only
	linkMbit, rttMs, engineRuns int
	shapes, baselineBin         string
	baselineRef                 string
}

func parseOptions(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("harness", flag.ContinueOnError)
	fs.StringVar(&o.profile, "profile", "wan", "link between daemon and registry: wan (20 ms each way, 200 Mbit/s per connection), lan (unshaped) or ec2 (one link shared by every connection, realistic images, overlay2)")
	fs.IntVar(&o.runs, "runs", 3, "runs of each contender (interleaved)")
	fs.DurationVar(&o.idle, "idle", 60*time.Second, "idle window for the footprint")
	fs.IntVar(&o.flips, "flips", 20, "prefix flips for the reaction time")
	fs.StringVar(&o.bin, "bin", "bin/pull-agent", "pull-agent binary")
	fs.StringVar(&o.cache, "cache", "/var/cache/pull-agent-bench", "where generated layers are kept between runs")
	fs.StringVar(&o.doc, "doc", "docs/BENCHMARKS.md", "markdown output")
	fs.StringVar(&o.jsonOut, "json", "docs/benchmarks.json", "JSON output")
	fs.BoolVar(&o.rerender, "render", false, "only rewrite the markdown from the JSON of earlier runs")
	fs.IntVar(&o.linkMbit, "link-mbit", 400, "ec2: the shared link's rate, Mbit/s")
	fs.IntVar(&o.rttMs, "rtt-ms", 20, "ec2: round trip added in front of the link, ms")
	fs.StringVar(&o.shapes, "shapes", "A,B", "ec2: the workloads to measure (A: large shared base; B: little shared)")
	fs.IntVar(&o.engineRuns, "engine-runs", 1, "ec2: runs on Docker 26's containerd image store (0: skip it)")
	fs.StringVar(&o.baselineBin, "baseline-bin", "", "ec2: a pull-agent built from an earlier commit, measured beside --bin")
	fs.StringVar(&o.baselineRef, "baseline-ref", "", "ec2: the git ref --baseline-bin was built from, for the report")
	err := fs.Parse(args)
	return o, err
}

func run(ctx context.Context, args []string, out io.Writer) error {
	o, err := parseOptions(args)
	if err != nil {
		return err
	}
	if o.rerender {
		return rerender(o.jsonOut, o.doc)
	}
	if o.profile == "ec2" {
		return runEC2(ctx, o, out)
	}
	if o.profile != "wan" && o.profile != "lan" {
		return fmt.Errorf("--profile %q: wan, lan or ec2", o.profile)
	}
	e, err := newEnv(ctx, o.bin, o.profile)
	if err != nil {
		return err
	}
	defer e.close()
	res := Results{
		Date: time.Now().UTC().Format(time.RFC3339), Profile: o.profile, Machine: machine(),
		Command: "make bench  # go run ./bench/harness --profile " + o.profile + fmt.Sprintf(" --runs %d", o.runs),
	}
	w := workload{dir: o.cache, baseSize: 64 << 20, uniqueSize: 24 << 20, count: 9}
	res.Workload = "9 images: a shared 64 MiB base layer + a unique 24 MiB layer each, random bytes"
	rts := config.KnownRuntimes()
	fmt.Fprintln(os.Stderr, "harness: preparing the workload (cached in "+o.cache+")")
	if err := w.push(ctx, e.reg.Addr, "bench", rts); err != nil {
		return err
	}
	prefix := e.proxy.Prefix("bench")
	images := make([]string, len(rts))
	for i, rt := range rts {
		images[i] = config.ImageRef(prefix, rt)
	}
	contenders := e.contenders(ctx, prefix, rts, images)
	if res.Cold, err = e.cold(ctx, o.runs, contenders, images); err != nil {
		return err
	}
	// Steady state: everything warm, then a refresh by each contender.
	if res.Steady, err = e.steady(o.runs, contenders[:3], images); err != nil {
		return err
	}
	// Reaction and footprint (agent.go).
	if res.Reaction, res.Idle, err = e.reactionAndIdle(ctx, o.flips, o.idle); err != nil {
		return err
	}
	if res.Scaling, err = e.scaling(ctx, o.cache); err != nil {
		return err
	}
	if st, err := os.Stat(e.bin); err == nil {
		res.Binary = st.Size()
	}
	return writeResults(res, o.jsonOut, o.doc, out)
}

// newEnv starts the test bed, a registry and a proxy in front of it,
// shaped as a WAN link if profile is "wan"; close stops them.
func newEnv(ctx context.Context, bin, profile string) (_ *env, err error) {
	e := &env{}
	if e.bin, err = filepath.Abs(bin); err != nil {
		return nil, err
	}
	if e.docker, err = exec.LookPath("docker"); err != nil {
		return nil, fmt.Errorf("the docker CLI is needed for the shell contenders: %w", err)
	}
	if e.bed, err = testbed.Start(ctx, testbed.Options{}); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	e.dir = e.bed.Dir
	if e.reg, err = e.bed.StartRegistry(ctx, "bench", testbed.RegistryOptions{}); err != nil {
		return nil, err
	}
	if e.proxy, err = testbed.NewTCPProxy("bench", e.reg.Addr); err != nil {
		return nil, err
	}
	if profile == "wan" {
		if err = e.proxy.Shape(20, 200); err != nil {
			return nil, err
		}
	}
	return e, nil
}

// close stops the proxy and the test bed.
func (e *env) close() {
	if e.proxy != nil {
		e.proxy.Close()
	}
	e.bed.Stop()
}

// contender is one way of warming the host with the images.
type contender struct {
	name string
	run  func() error
}

// contenders are pull-agent pull, the two shell loops the hosts use today
// and pull-agent run from a cold start.
func (e *env) contenders(ctx context.Context, prefix string, rts, images []string) []contender {
	return []contender{
		{"pull-agent pull", func() error { return e.agentPull(ctx, prefix, rts) }},
		{"sequential docker pull", func() error {
			return e.shell(ctx, "for i in "+strings.Join(images, " ")+"; do docker -H \"$DH\" pull -q \"$i\" >/dev/null; done")
		}},
		{"xargs -P 3 docker pull", func() error {
			return e.shell(ctx, "printf '%s\\n' "+strings.Join(images, " ")+" | xargs -P 3 -n 1 docker -H \"$DH\" pull -q >/dev/null")
		}},
		{"pull-agent run (cold start)", func() error { return e.agentRunCold(ctx, prefix, rts) }},
	}
}

// cold times each contender, runs times, from an empty daemon to every
// one of images present; the runs are interleaved.
func (e *env) cold(ctx context.Context, runs int, contenders []contender, images []string) (map[string][]float64, error) {
	cold := map[string][]float64{}
	for r := range runs {
		for _, c := range contenders {
			if err := e.empty(ctx); err != nil {
				return nil, err
			}
			start := time.Now()
			if err := c.run(); err != nil {
				return nil, fmt.Errorf("%s: %w", c.name, err)
			}
			d := time.Since(start).Seconds()
			if err := e.allPresent(ctx, images); err != nil {
				return nil, fmt.Errorf("%s: %w", c.name, err)
			}
			cold[c.name] = append(cold[c.name], d)
			fmt.Fprintf(os.Stderr, "harness: run %d %-28s %6.2f s\n", r+1, c.name, d)
		}
	}
	return cold, nil
}

// steady times each contender's refresh of the warm images and counts
// its requests at the registry: the best of runs.
func (e *env) steady(runs int, contenders []contender, images []string) (map[string]Steady, error) {
	steady := map[string]Steady{}
	for _, c := range contenders {
		var best Steady
		for r := range runs {
			t0 := time.Now()
			if err := c.run(); err != nil {
				return nil, err
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
		steady[c.name] = best
	}
	return steady, nil
}

// scaling measures pull-agent pull at 9, 27 and 81 images, smaller ones
// so that 81 fit on a vfs data root.
func (e *env) scaling(ctx context.Context, cache string) ([]Scale, error) {
	var out []Scale
	for _, n := range []int{9, 27, 81} {
		sc, err := e.scaleTo(ctx, cache, n)
		if err != nil {
			return nil, err
		}
		out = append(out, sc)
		fmt.Fprintf(os.Stderr, "harness: scaling %d images: cold %.2f s, refresh %.2f s, %d requests\n", n, sc.ColdSeconds, sc.RefreshSeconds, sc.RefreshRequests)
	}
	return out, nil
}

// scaleTo pushes n images, then times pull-agent pull from an empty
// daemon and again as a refresh, counting the refresh's requests.
func (e *env) scaleTo(ctx context.Context, cache string, n int) (Scale, error) {
	sw := workload{dir: cache, baseSize: 16 << 20, uniqueSize: 1 << 20, count: n}
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("scale-%03d", i)
	}
	ns := fmt.Sprintf("scale%d", n)
	if err := sw.push(ctx, e.reg.Addr, ns, names); err != nil {
		return Scale{}, err
	}
	if err := e.empty(ctx); err != nil {
		return Scale{}, err
	}
	t0 := time.Now()
	if err := e.agentPull(ctx, e.proxy.Prefix(ns), names); err != nil {
		return Scale{}, err
	}
	sc := Scale{Images: n, ColdSeconds: time.Since(t0).Seconds()}
	t1 := time.Now()
	if err := e.agentPull(ctx, e.proxy.Prefix(ns), names); err != nil {
		return Scale{}, err
	}
	sc.RefreshSeconds = time.Since(t1).Seconds()
	reqs, _ := requestsSince(e.reg.LogPath, t1)
	for _, v := range reqs {
		sc.RefreshRequests += v
	}
	sc.RequestsPerImage = float64(sc.RefreshRequests) / float64(n)
	return sc, nil
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
