package main

import (
	"fmt"
	"slices"
	"strings"
)

// renderEC2 is the ec2 section of BENCHMARKS.md.
func renderEC2(r EC2Results) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## Profile `ec2`\n\nMachine: %s. Date: %s. Reproduce: `%s`; the whole run took %.0f min. Raw numbers: `docs/benchmarks.json` (`.ec2`).\n\n", r.Machine, r.Date, r.Command, r.Seconds/60)
	payload := (1 - r.Overhead) * float64(r.MTU+14)
	fmt.Fprintf(&b, "**Link**: %d Mbit/s shared by every connection between dockerd and the registry: `tbf rate %dmbit burst 256kb latency 50ms` on both ends of a veth pair into a network namespace that holds the registry; in front, on loopback, toxiproxy adds %d ms each way (%d ms RTT; the kernel here has no netem). The daemon pulls through the proxy; distribution 2.8 serves from its own storage.\n\n",
		r.LinkMbit, r.LinkMbit, r.RTTms/2, r.RTTms)
	fmt.Fprintf(&b, "**Wire overhead**: at MTU %d a frame carries %.0f bytes of TCP payload in the %d bytes tbf counts (Ethernet 14, IPv4 20 and TCP %.0f bytes of headers), so %.1f %% of the rate is not payload: a perfect pull takes %.3f × the floor below. A ratio above that is the scheduling's or the daemon's, not the protocol's.\n\n",
		r.MTU, payload, r.MTU+14, float64(r.MTU)-20-payload, 100*r.Overhead, 1/(1-r.Overhead))
	b.WriteString("**Priority order** (`MOLECULE_RUNTIMES` as the harness writes it; the shell loops get the images in the same order): ")
	for i, rt := range r.Priority {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%d `%s`", i+1, rt)
	}
	fmt.Fprintf(&b, ".\n\n**Contenders**, interleaved, each from an empty daemon: `%s` (this tree), `%s` (`pull-agent pull` built from `%s`, for comparison), a sequential `docker pull` loop, `xargs -P 3 docker pull`. An image is **usable** when the daemon reports its pull (`docker events --filter type=image --filter event=pull`, `timeNano`), counted from the contender's start. Agent CPU is the child's rusage (user + system) over its wall time.\n\n",
		cAgent, cBaseline, r.Baseline)
	b.WriteString("**Workloads**: nine buildx-style images per shape, each an OCI index of a linux/amd64 image, a small linux/arm64 image (never pulled here) and their two attestation manifests (platform `unknown/unknown`, `vnd.docker.reference.type: attestation-manifest`); every layer gzip-compressed random bytes, so nothing compresses away. Generated once and cached (with the registry storage) under `/var/cache/pull-agent-bench`.\n\n")
	for _, s := range r.Shapes {
		fmt.Fprintf(&b, "- %s.\n", s.Workload)
	}
	b.WriteString("\n")
	renderFloors(&b, r)
	renderGoals(&b, r.Shapes)
	for _, s := range r.Shapes {
		renderShape(&b, s, "### Shape "+s.Shape+", "+s.Engine)
	}
	renderWhere(&b, r.Shapes)
	if r.Chart != "" {
		fmt.Fprintf(&b, "### Bytes over time\n\n![bytes received per image over time, %s and %s](%s)\n\nEach image's bytes as the registry served them in the last run of each agent (the shape named in the titles). The registry's request log gives each blob's end, duration and size; the chart spreads each blob's bytes evenly between its start and end (interpolated, not sampled), and counts a shared blob for the first image in priority order that has it. A dot marks the moment the image became usable.\n\n", cAgent, cBaseline, r.Chart)
	}
	b.WriteString("### Docker 26.1, containerd image store\n\n")
	if r.ContainerdNote != "" {
		b.WriteString(r.ContainerdNote + ".\n")
	}
	if len(r.Containerd) > 0 {
		b.WriteString("The same measures on Debian 13's Docker 26.1.5 with the containerd image store, with fewer runs (`--engine-runs`): a single run carries the machine's noise, and the link-idle column tells a run that lost time off the link.\n\n")
	}
	for _, s := range r.Containerd {
		renderShape(&b, s, "#### Shape "+s.Shape+", "+s.Engine)
	}
	return b.String()
}

// renderFloors is the floor of each shape and of each image.
func renderFloors(b *strings.Builder, r EC2Results) {
	b.WriteString("### The floor\n\nBytes that must cross the link ÷ its rate: every blob of the nine linux/amd64 pulls (layers, configs, manifests, index), shared layers once; manifests and configs are counted but are a few KB.\n\n| shape | bytes | manifests + configs | floor | first image's own | first three's union |\n| --- | ---: | ---: | ---: | ---: | ---: |\n")
	for _, s := range r.Shapes {
		f := s.Floor
		fmt.Fprintf(b, "| %s | %s | %d KB | %.2f s | %s, %.2f s | %s, %.2f s |\n", s.Shape, mbytes(f.Bytes), f.Meta/1000, f.Seconds, mbytes(f.FirstBytes), f.FirstSeconds, mbytes(f.First3Bytes), f.First3Seconds)
	}
	b.WriteString("\nPer image, its own bytes (shared base included) ÷ the link rate:\n\n| # | image |")
	for _, s := range r.Shapes {
		fmt.Fprintf(b, " shape %s |", s.Shape)
	}
	b.WriteString("\n| ---: | --- |" + strings.Repeat(" ---: |", len(r.Shapes)) + "\n")
	rate := float64(r.LinkMbit) * 1e6 / 8
	for i, rt := range r.Priority {
		fmt.Fprintf(b, "| %d | %s |", i+1, rt)
		for _, s := range r.Shapes {
			n := s.Floor.PerImage[rt]
			fmt.Fprintf(b, " %s, %.2f s |", mbytes(n), float64(n)/rate)
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")
}

func mark(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

// renderGoals is issue 16's goals against pull-agent pull (this tree).
func renderGoals(b *strings.Builder, shapes []ShapeResult) {
	fmt.Fprintf(b, "### Goals (`%s`, this tree; medians of the runs, each a ratio within its run)\n\n| measure | goal |", cAgent)
	for _, s := range shapes {
		fmt.Fprintf(b, " shape %s |", s.Shape)
	}
	b.WriteString("\n| --- | --- |" + strings.Repeat(" --- |", len(shapes)) + "\n")
	row := func(measure, goal string, cell func(s ShapeResult, a *ContenderRuns) string) {
		fmt.Fprintf(b, "| %s | %s |", measure, goal)
		for _, s := range shapes {
			a := s.Contenders[cAgent]
			if a == nil {
				b.WriteString(" – |")
				continue
			}
			b.WriteString(" " + cell(s, a) + " |")
		}
		b.WriteString("\n")
	}
	row("cold warm-up of all nine", "≤ 1.05 × the floor, and no slower than `xargs -P 3`", func(s ShapeResult, a *ContenderRuns) string {
		x := median(a.Cold) / s.Floor.Seconds
		xa := 0.0
		if c := s.Contenders[cXargs]; c != nil {
			xa = median(c.Cold) / s.Floor.Seconds
		}
		return fmt.Sprintf("%.2f × (xargs %.2f ×): %s", x, xa, mark(x <= 1.05 && (xa == 0 || x <= xa)))
	})
	row("first image usable", "≤ 1.3 × its own floor", func(s ShapeResult, a *ContenderRuns) string {
		x := median(a.First) / s.Floor.FirstSeconds
		return fmt.Sprintf("%.2f ×: %s", x, mark(x <= 1.3))
	})
	row("first three usable", "≤ 1.2 × their floor", func(s ShapeResult, a *ContenderRuns) string {
		x := median(a.First3) / s.Floor.First3Seconds
		return fmt.Sprintf("%.2f ×: %s", x, mark(x <= 1.2))
	})
	row("refresh of warm images", "0 blob GETs, ≤ 2 requests per image", func(s ShapeResult, _ *ContenderRuns) string {
		st, ok := s.Refresh[cAgent]
		if !ok {
			return "–"
		}
		return fmt.Sprintf("%d blob GETs, %.2f requests/image: %s", st.BlobGets, st.RequestsPerImage, mark(st.BlobGets == 0 && st.RequestsPerImage <= 2))
	})
	row("agent CPU during the cold warm-up", "≤ 2 % of one core", func(_ ShapeResult, a *ContenderRuns) string {
		c := median(a.CPU)
		return fmt.Sprintf("%.2f %%: %s", c, mark(len(a.CPU) > 0 && c <= 2))
	})
	b.WriteString("\n")
}

// renderShape is one shape's table of every contender.
func renderShape(b *strings.Builder, s ShapeResult, title string) {
	runs := fmt.Sprintf("%d runs; medians", s.Runs)
	if s.Runs == 1 {
		runs = "1 run"
	}
	fmt.Fprintf(b, "%s (%s)\n\nFloor %.2f s; first image's %.2f s; first three's %.2f s.\n\n| contender | all nine s (min–max) | × floor | first usable s | × its floor | first three s | × their floor | link idle | agent CPU |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
		title, runs, s.Floor.Seconds, s.Floor.FirstSeconds, s.Floor.First3Seconds)
	for _, name := range []string{cAgent, cBaseline, cSeq, cXargs} {
		c := s.Contenders[name]
		if c == nil || len(c.Cold) == 0 {
			continue
		}
		cpu := "–"
		if len(c.CPU) > 0 {
			cpu = fmt.Sprintf("%.2f %%", median(c.CPU))
		}
		fmt.Fprintf(b, "| %s | %.2f (%.2f–%.2f) | %.2f | %.2f | %.2f | %.2f | %.2f | %.1f %% | %s |\n",
			name, median(c.Cold), slices.Min(c.Cold), slices.Max(c.Cold), median(c.Cold)/s.Floor.Seconds,
			median(c.First), median(c.First)/s.Floor.FirstSeconds, median(c.First3), median(c.First3)/s.Floor.First3Seconds,
			100*median(linkField(c.Link, func(u linkUse) float64 { return u.IdleShare })), cpu)
	}
	if len(s.Refresh) > 0 {
		var parts []string
		for _, name := range []string{cAgent, cBaseline} {
			if st, ok := s.Refresh[name]; ok {
				parts = append(parts, fmt.Sprintf("`%s` %.2f s, %d blob GETs, %.2f requests/image", name, st.Seconds, st.BlobGets, st.RequestsPerImage))
			}
		}
		fmt.Fprintf(b, "\nRefresh of the warm images (requests from the registry's log): %s.\n", strings.Join(parts, "; "))
	}
	b.WriteString("\n")
}

func linkField(us []linkUse, f func(linkUse) float64) []float64 {
	out := make([]float64, len(us))
	for i, u := range us {
		out[i] = f(u)
	}
	return out
}

// renderWhere says where each agent's warm-up time went, from the
// registry's request log.
func renderWhere(b *strings.Builder, shapes []ShapeResult) {
	b.WriteString("### Where the time goes\n\nFrom the registry's request log (medians): the share of the warm-up with no blob in flight (link idle), the time before the first blob's first byte (manifest round trips), the time from the last blob's last byte to the contender's end (extracting the last layers, tagging), and the most layer blobs in flight at once across all pulls. The last is the daemon's own limit: dockerd downloads at most `max-concurrent-downloads` (3) layers at a time for the whole daemon, not for each pull, so three pulls at once share three downloads, in the order their layers reached the daemon's queue.\n\n")
	for _, s := range shapes {
		for _, name := range []string{cAgent, cBaseline, cSeq, cXargs} {
			c := s.Contenders[name]
			if c == nil || len(c.Link) == 0 {
				continue
			}
			idle := median(linkField(c.Link, func(u linkUse) float64 { return u.IdleShare }))
			first := median(linkField(c.Link, func(u linkUse) float64 { return u.FirstBlob }))
			tail := median(linkField(c.Link, func(u linkUse) float64 { return u.Tail }))
			served := median(linkField(c.Link, func(u linkUse) float64 { return float64(u.Bytes) }))
			most := slices.Max(linkField(c.Link, func(u linkUse) float64 { return float64(u.MaxLayers) }))
			fmt.Fprintf(b, "- shape %s, %s: link idle %.1f %% of %.2f s; first blob after %.2f s; %.2f s after the last byte; %s served (floor %s); at most %.0f layers in flight.\n",
				s.Shape, name, 100*idle, median(c.Cold), first, tail, mbytes(int64(served)), mbytes(s.Floor.Bytes), most)
		}
	}
	b.WriteString("\n")
}
