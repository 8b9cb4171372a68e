package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// The contenders of the ec2 profile, by name.
const (
	cAgent    = "pull-agent pull"
	cBaseline = "pull-agent pull, baseline"
	cSeq      = "sequential docker pull"
	cXargs    = "xargs -P 3 docker pull"
)

// ec2Order is the priority order the harness gives: MOLECULE_RUNTIMES for
// pull-agent, the argument order for the shell loops. Not alphabetical, so
// that an agent that sorts the runtimes shows it.
var ec2Order = []string{"claude-code", "codex", "gemini-cli", "langgraph", "crewai", "autogen", "deepagents", "hermes", "openclaw"}

// EC2Results is the ec2 profile's output.
type EC2Results struct {
	Date     string `json:"date"`
	Machine  string `json:"machine"`
	Command  string `json:"command"`
	LinkMbit int    `json:"link_mbit"`
	RTTms    int    `json:"rtt_ms"`
	// Overhead is the share of the link's rate taken by TCP/IP and
	// Ethernet headers at the link's MTU (tbf counts whole frames).
	Overhead float64  `json:"wire_overhead"`
	MTU      int      `json:"mtu"`
	Priority []string `json:"priority"`
	// Baseline is the git ref the baseline binary was built from.
	Baseline string        `json:"baseline_ref"`
	Shapes   []ShapeResult `json:"shapes"`
	// Containerd are the same measures on Docker 26's containerd image
	// store, or ContainerdNote says why they are absent.
	Containerd     []ShapeResult `json:"containerd,omitempty"`
	ContainerdNote string        `json:"containerd_note,omitempty"`
	Chart          string        `json:"chart,omitempty"`
	Seconds        float64       `json:"harness_seconds"`
}

// ShapeResult is one workload on one engine.
type ShapeResult struct {
	Shape      string                    `json:"shape"`
	Workload   string                    `json:"workload"`
	Engine     string                    `json:"engine"`
	Runs       int                       `json:"runs"`
	Floor      Floor                     `json:"floor"`
	Contenders map[string]*ContenderRuns `json:"contenders"`
	Refresh    map[string]Steady         `json:"refresh,omitempty"`
}

// Floor is what the link allows: bytes that must cross it ÷ its rate.
type Floor struct {
	// Bytes is every blob and manifest of the nine amd64 pulls, shared
	// ones once; Meta the manifests and configs among them.
	Bytes   int64   `json:"bytes"`
	Meta    int64   `json:"meta_bytes"`
	Seconds float64 `json:"seconds"`
	// First and First3 are the first image's in priority order and the
	// union of the first three's.
	FirstBytes    int64            `json:"first_bytes"`
	FirstSeconds  float64          `json:"first_seconds"`
	First3Bytes   int64            `json:"first3_bytes"`
	First3Seconds float64          `json:"first3_seconds"`
	PerImage      map[string]int64 `json:"per_image_bytes"`
}

// ContenderRuns are one contender's runs, in run order.
type ContenderRuns struct {
	Cold   []float64            `json:"cold_s"`
	First  []float64            `json:"first_usable_s"`
	First3 []float64            `json:"first_three_usable_s"`
	Usable []map[string]float64 `json:"usable_s"`
	CPU    []float64            `json:"cpu_percent,omitempty"`
	Link   []linkUse            `json:"link"`
}

// floorOf computes the floors of lay at mbit Mbit/s for order.
func floorOf(lay Layout, order []string, mbit int) Floor {
	secs := func(b int64) float64 { return float64(b) * 8 / (float64(mbit) * 1e6) }
	union := func(rts []string) (bytes, meta int64) {
		seen := map[string]bool{}
		for _, rt := range rts {
			ib := lay.Images[rt]
			for i, b := range ib.all() {
				if seen[b.Digest] {
					continue
				}
				seen[b.Digest] = true
				bytes += b.Size
				if i < 3 {
					meta += b.Size
				}
			}
		}
		return bytes, meta
	}
	f := Floor{PerImage: map[string]int64{}}
	f.Bytes, f.Meta = union(order)
	f.FirstBytes, _ = union(order[:1])
	f.First3Bytes, _ = union(order[:min(3, len(order))])
	f.Seconds, f.FirstSeconds, f.First3Seconds = secs(f.Bytes), secs(f.FirstBytes), secs(f.First3Bytes)
	for _, rt := range order {
		f.PerImage[rt], _ = union([]string{rt})
	}
	return f
}

// wireOverhead is the share of a link's frames that is not TCP payload:
// IPv4 (20) and TCP (20, +12 with timestamps) headers of each MTU-sized
// packet, and the Ethernet header (14) that tbf counts on a veth.
func wireOverhead(dev string) (float64, int) {
	mtu := 1500
	if data, err := os.ReadFile("/sys/class/net/" + dev + "/mtu"); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil {
			mtu = n
		}
	}
	hdr := 40
	if data, err := os.ReadFile("/proc/sys/net/ipv4/tcp_timestamps"); err == nil && strings.TrimSpace(string(data)) != "0" {
		hdr += 12
	}
	return 1 - float64(mtu-hdr)/float64(mtu+14), mtu
}

func mbytes(n int64) string { return fmt.Sprintf("%.0f MB", float64(n)/1e6) }
