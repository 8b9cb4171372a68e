package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

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

// rerender rewrites the markdown at doc from the JSON of earlier runs.
func rerender(jsonPath, doc string) error {
	all, err := loadAll(jsonPath)
	if err != nil {
		return err
	}
	return os.WriteFile(doc, []byte(all.render()), 0o644)
}

// writeResults puts res in its profile's place of the JSON at jsonPath,
// keeping the other profiles', and rewrites doc (and prints it to out).
func writeResults(res Results, jsonPath, doc string, out io.Writer) error {
	all, err := loadAll(jsonPath)
	if err != nil {
		return err
	}
	if res.Profile == "lan" {
		all.LAN = &res
	} else {
		all.WAN = &res
	}
	return all.write(jsonPath, doc, out)
}

// writeEC2 is writeResults for the ec2 profile.
func writeEC2(res EC2Results, jsonPath, doc string, out io.Writer) error {
	all, err := loadAll(jsonPath)
	if err != nil {
		return err
	}
	all.EC2 = &res
	return all.write(jsonPath, doc, out)
}

// allResults is docs/benchmarks.json: each profile's last run.
type allResults struct {
	WAN *Results    `json:"wan,omitempty"`
	LAN *Results    `json:"lan,omitempty"`
	EC2 *EC2Results `json:"ec2,omitempty"`
}

// loadAll reads the results at path: none if absent; a file of one
// profile's Results (the layout before the ec2 profile) goes to its
// profile's place.
func loadAll(path string) (allResults, error) {
	var all allResults
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return all, nil
	}
	if err != nil {
		return all, err
	}
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(data, &probe); err != nil {
		return all, fmt.Errorf("%s: %w", path, err)
	}
	if _, old := probe["profile"]; old {
		var r Results
		if err := json.Unmarshal(data, &r); err != nil {
			return all, fmt.Errorf("%s: %w", path, err)
		}
		if r.Profile == "lan" {
			all.LAN = &r
		} else {
			all.WAN = &r
		}
		return all, nil
	}
	if err := json.Unmarshal(data, &all); err != nil {
		return all, fmt.Errorf("%s: %w", path, err)
	}
	return all, nil
}

// write saves all as JSON at jsonPath and as markdown at doc and out.
func (all allResults) write(jsonPath, doc string, out io.Writer) error {
	data, _ := json.MarshalIndent(all, "", "  ")
	if err := os.WriteFile(jsonPath, append(data, '\n'), 0o644); err != nil {
		return err
	}
	md := all.render()
	if err := os.WriteFile(doc, []byte(md), 0o644); err != nil {
		return err
	}
	fmt.Fprint(out, md)
	return nil
}

// render is the whole of BENCHMARKS.md.
func (all allResults) render() string {
	var b strings.Builder
	b.WriteString("# Benchmarks\n\nEach profile comes from its own run, `make bench PROFILE=<profile>`, which replaces that profile's section here and its part of `docs/benchmarks.json` (`make bench` alone is `wan`); `go run ./bench/harness --render` rewrites this file from the JSON.\n\n")
	b.WriteString("- `wan`: toxiproxy between dockerd and the registry, 20 ms each way and 200 Mbit/s **per connection**, two-layer images on vfs: pull-agent against the shell loops hosts use, refresh cost, reaction, footprint, scaling.\n")
	b.WriteString("- `ec2`: one link (400 Mbit/s by default) **shared by every connection** (tbf on a veth pair into a network namespace holding the registry) and 20 ms RTT, nine buildx images of 11 layers on overlay2: each warm-up against the link's physical floor, and how soon the images in priority order are usable.\n\n")
	for _, r := range []*Results{all.WAN, all.LAN} {
		if r != nil {
			b.WriteString(render(*r))
			b.WriteString("\n")
		}
	}
	if all.EC2 != nil {
		b.WriteString(renderEC2(*all.EC2))
	}
	return b.String()
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
	fmt.Fprintf(&b, "## Profile `%s`\n\nMachine: %s. Date: %s. Profile: **%s**", r.Profile, r.Machine, r.Date, r.Profile)
	if r.Profile == "wan" {
		b.WriteString(" (20 ms added latency each way and 200 Mbit/s per connection, by toxiproxy between dockerd and the registry)")
	}
	fmt.Fprintf(&b, ".\nReproduce: `%s`. Raw numbers: `docs/benchmarks.json` (`.%s`).\n\nWorkload: %s. Docker 20.10 (vfs), distribution 2.8, both real, from the test bed.\n\n", r.Command, r.Profile, r.Workload)
	seqCold := median(r.Cold["sequential docker pull"])
	agentCold, xargsCold := median(r.Cold["pull-agent pull"]), median(r.Cold["xargs -P 3 docker pull"])
	st := r.Steady["pull-agent pull"]
	mark := func(ok bool) string {
		if ok {
			return "met"
		}
		return "**missed**"
	}
	b.WriteString("### Targets\n\n| target | measured | |\n| --- | --- | --- |\n")
	fmt.Fprintf(&b, "| cold warm-up ≤ 0.6 × the sequential loop | %.2f × | %s |\n", agentCold/seqCold, mark(agentCold/seqCold <= 0.6))
	fmt.Fprintf(&b, "| cold warm-up within 5 %% of `xargs -P 3` | %+.1f %% | %s |\n", 100*(agentCold/xargsCold-1), mark(agentCold <= xargsCold*1.05))
	fmt.Fprintf(&b, "| refresh: no blob bytes, ≤ 2 requests per image | %d blob GETs, %.2f requests/image | %s |\n", st.BlobGets, st.RequestsPerImage, mark(st.BlobGets == 0 && st.RequestsPerImage <= 2))
	fmt.Fprintf(&b, "| refresh ≤ 0.2 × the sequential loop's wall time | %.2f × | %s |\n", st.Seconds/r.Steady["sequential docker pull"].Seconds, mark(st.Seconds <= 0.2*r.Steady["sequential docker pull"].Seconds))
	fmt.Fprintf(&b, "| reaction p50 ≤ 300 ms | %.0f ms | %s |\n", r.Reaction.AgentP50, mark(r.Reaction.AgentP50 <= 300))
	perMin := r.Idle.AgentCPU / r.Idle.Seconds * 60
	fmt.Fprintf(&b, "| idle RSS ≤ 30 MB, CPU ≤ 0.1 s per minute | %.1f MiB, %.3f s/min | %s |\n\n", r.Idle.AgentRSSMiB, perMin, mark(r.Idle.AgentRSSMiB*1.048576 <= 30 && perMin <= 0.1))
	b.WriteString("### Cold warm-up (empty daemon → nine images present)\n\nEach contender starts from an empty daemon; runs interleaved.\n\n| contender | median s | min–max s | × sequential loop |\n| --- | ---: | ---: | ---: |\n")
	seq := median(r.Cold["sequential docker pull"])
	for _, name := range []string{"pull-agent pull", "sequential docker pull", "xargs -P 3 docker pull", "pull-agent run (cold start)"} {
		v := r.Cold[name]
		fmt.Fprintf(&b, "| %s | %.2f | %.2f–%.2f | %.2f |\n", name, median(v), slices.Min(v), slices.Max(v), median(v)/seq)
	}
	b.WriteString("\n### Steady state (everything warm: a refresh)\n\nRequests counted from the registry's request log; best of the runs.\n\n| contender | wall s | × sequential loop | requests / image | blob GETs | requests |\n| --- | ---: | ---: | ---: | ---: | --- |\n")
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
	fmt.Fprintf(&b, "\n### Reaction (env-file write → first manifest request at the registry, %d flips)\n\n| | p50 ms | p95 ms |\n| --- | ---: | ---: |\n| pull-agent run | %.1f | %.1f |\n| baseline: a direct API pull's own latency | %.1f | %.1f |\n\nThe agent waits for the directory to be quiet for 150 ms (its debounce) before it reads the file.\n",
		r.Reaction.Flips, r.Reaction.AgentP50, r.Reaction.AgentP95, r.Reaction.BaselineP50, r.Reaction.BaselineP95)
	fmt.Fprintf(&b, "\n### Footprint (idle %.0f s, nine warm images)\n\n| | CPU s | RSS MiB |\n| --- | ---: | ---: |\n| pull-agent run | %.3f | %.1f |\n| dockerd beside it (baseline) | %.3f | %.1f |\n\nBinary: %.1f MB (static).\n",
		r.Idle.Seconds, r.Idle.AgentCPU, r.Idle.AgentRSSMiB, r.Idle.DockerdCPU, r.Idle.DockerdRSS, float64(r.Binary)/1e6)
	b.WriteString("\n### Scaling (`pull-agent pull`; a shared 16 MiB base + 1 MiB unique per image)\n\n| images | cold s | refresh s | refresh requests | requests / image |\n| ---: | ---: | ---: | ---: | ---: |\n")
	for _, s := range r.Scaling {
		fmt.Fprintf(&b, "| %d | %.2f | %.2f | %d | %.2f |\n", s.Images, s.ColdSeconds, s.RefreshSeconds, s.RefreshRequests, s.RequestsPerImage)
	}
	return b.String()
}
