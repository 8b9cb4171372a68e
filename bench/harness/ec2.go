package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/molecule-ai/pull-agent/internal/testbed"
)

// ec2Env is one engine of the ec2 profile: the daemon, and per workload
// shape a registry inside the shared link's namespace with a latency
// proxy on loopback in front of it (the daemon pulls through the proxy).
type ec2Env struct {
	env
	baseline string // the baseline binary, "" when absent
	engine   string // what the report calls the engine
	cacheDir string // where the workloads are cached
	link     *testbed.SharedLink
	regs     map[string]*testbed.Registry
	proxies  map[string]*testbed.TCPProxy
}

// runEC2 is the ec2 profile: a link of o.linkMbit shared by every
// connection, o.rttMs of round trip, two realistic workloads, on Debian
// 12's Docker 20.10 (overlay2) and then on Docker 26's containerd store.
func runEC2(ctx context.Context, o options, out io.Writer) error {
	t0 := time.Now()
	shapes, err := parseShapes(o.shapes)
	if err != nil {
		return err
	}
	res := EC2Results{
		Date: time.Now().UTC().Format(time.RFC3339), Machine: machine(), LinkMbit: o.linkMbit, RTTms: o.rttMs,
		Priority: ec2Order, Baseline: o.baselineRef,
		Command: fmt.Sprintf("make bench PROFILE=ec2  # go run ./bench/harness --profile ec2 --link-mbit %d --rtt-ms %d --runs %d --shapes %s", o.linkMbit, o.rttMs, o.runs, o.shapes),
	}
	link, err := testbed.NewSharedLink(fmt.Sprintf("pa-bench-%d", os.Getpid()), o.linkMbit)
	if err != nil {
		return err
	}
	defer link.Close()
	res.Overhead, res.MTU = wireOverhead(link.HostDev)
	overlay := testbed.Options{Engine: testbed.EngineDebian12, StorageDriver: "overlay2"}
	shapeRes, chart, err := ec2Engine(ctx, o, link, overlay, "Docker 20.10 (overlay2)", shapes, o.runs, true)
	if err != nil {
		return err
	}
	res.Shapes = shapeRes
	if chart != nil {
		path := filepath.Join(filepath.Dir(o.doc), "bench-ec2.png")
		if err := drawChart(chart, path, o.linkMbit); err != nil {
			return err
		}
		res.Chart = filepath.Base(path)
	}
	if o.engineRuns <= 0 {
		res.ContainerdNote = "not measured in this run (--engine-runs 0)"
	} else if _, err := os.Stat(filepath.Join(testbed.TrixieRoot, ".complete")); err != nil {
		res.ContainerdNote = "not measured: the trixie root filesystem (" + testbed.TrixieRoot + ") is absent; run make trixie-rootfs"
		fmt.Fprintln(os.Stderr, "harness: "+res.ContainerdNote)
	} else {
		cd := testbed.Options{Engine: testbed.EngineTrixieContainerd}
		if res.Containerd, _, err = ec2Engine(ctx, o, link, cd, "Docker 26.1 (containerd image store)", shapes, o.engineRuns, false); err != nil {
			return err
		}
	}
	res.Seconds = time.Since(t0).Seconds()
	return writeEC2(res, o.jsonOut, o.doc, out)
}

func parseShapes(s string) ([]ec2Shape, error) {
	var out []ec2Shape
	for _, n := range strings.Split(s, ",") {
		sh, ok := ec2Shapes[strings.TrimSpace(n)]
		if !ok {
			return nil, fmt.Errorf("--shapes %q: a comma-separated list of A and B", s)
		}
		out = append(out, sh)
	}
	return out, nil
}

// ec2Engine starts a bed with opts, makes sure each shape's workload is
// in the cache, serves it behind the link and measures it. With
// wantChart it also returns the chart's data (shape B, else the last).
func ec2Engine(ctx context.Context, o options, link *testbed.SharedLink, opts testbed.Options, engine string, shapes []ec2Shape, runs int, wantChart bool) ([]ShapeResult, *chartData, error) {
	e, err := newEC2Env(ctx, o, link, opts, engine)
	if err != nil {
		return nil, nil, err
	}
	defer e.close()
	var out []ShapeResult
	var chart *chartData
	for i, sh := range shapes {
		lay, err := ensureShape(ctx, e.bed, o.cache, sh, ec2Order)
		if err != nil {
			return nil, nil, err
		}
		if err := e.serve(ctx, sh.Name, 5000+i, o.rttMs); err != nil {
			return nil, nil, err
		}
		sr, cd, err := e.measureShape(ctx, sh, lay, runs, o.linkMbit)
		if err != nil {
			return nil, nil, err
		}
		out = append(out, sr)
		if wantChart && (chart == nil || sh.Name == "B") {
			chart = cd
		}
	}
	return out, chart, nil
}

// newEC2Env starts the bed; close stops it and the proxies.
func newEC2Env(ctx context.Context, o options, link *testbed.SharedLink, opts testbed.Options, engine string) (*ec2Env, error) {
	e := &ec2Env{engine: engine, cacheDir: o.cache, link: link, regs: map[string]*testbed.Registry{}, proxies: map[string]*testbed.TCPProxy{}}
	var err error
	if e.bin, err = filepath.Abs(o.bin); err != nil {
		return nil, err
	}
	if o.baselineBin != "" {
		if _, err := os.Stat(o.baselineBin); err != nil {
			return nil, fmt.Errorf("--baseline-bin: %w (make bench builds it from BASELINE_REF)", err)
		}
		if e.baseline, err = filepath.Abs(o.baselineBin); err != nil {
			return nil, err
		}
	}
	if e.docker, err = exec.LookPath("docker"); err != nil {
		return nil, fmt.Errorf("the docker CLI is needed for the shell contenders: %w", err)
	}
	if e.bed, err = testbed.Start(ctx, opts); err != nil {
		return nil, err
	}
	e.dir = e.bed.Dir
	fmt.Fprintf(os.Stderr, "harness: %s up\n", engine)
	return e, nil
}

// serve starts shape's registry in the link's namespace on port, on the
// cached storage, and a proxy on loopback adding rttMs/2 each way.
func (e *ec2Env) serve(ctx context.Context, shape string, port, rttMs int) error {
	root := filepath.Join(shapeDir(e.cacheDir, shape), "registry")
	r, err := e.bed.StartRegistry(ctx, "shape-"+shape, testbed.RegistryOptions{Root: root, Netns: e.link.Namespace, Addr: fmt.Sprintf("%s:%d", e.link.NSAddr, port)})
	if err != nil {
		return err
	}
	p, err := testbed.NewTCPProxy("shape-"+shape, r.Addr)
	if err != nil {
		return err
	}
	e.regs[shape], e.proxies[shape] = r, p
	if rttMs > 0 {
		return p.Latency(rttMs / 2)
	}
	return nil
}

// close stops the proxies and the bed (the registries with it).
func (e *ec2Env) close() {
	for _, p := range e.proxies {
		p.Close()
	}
	e.bed.Stop()
}
