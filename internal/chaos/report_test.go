package chaos

import (
	"fmt"
	"os"
	"runtime"
	"sort"
	"strings"
	"time"
)

// Markers delimit the generated parts of docs/RELIABILITY.md.
const (
	matrixBegin = "<!-- chaos:matrix:begin -->"
	matrixEnd   = "<!-- chaos:matrix:end -->"
	soakBegin   = "<!-- chaos:soak:begin -->"
	soakEnd     = "<!-- chaos:soak:end -->"
)

// writeReport puts the matrix results between the matrix markers of path.
func writeReport(path string, results []result) error {
	var b strings.Builder
	failed := 0
	for _, r := range results {
		if r.err {
			failed++
		}
	}
	fmt.Fprintf(&b, "Run %s on %s/%s, %d CPUs, race detector %v: %d rows, %d failed.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), raceEnabled, len(results), failed)
	b.WriteString("| | Fault | Injected by | The agent must | Measured | Converged after removal | Goroutines / fds before → after |\n")
	b.WriteString("|---|---|---|---|---|---|---|\n")
	for _, r := range results {
		mark := "ok"
		if r.err {
			mark = "**FAILED**"
		}
		fast := ""
		if r.fast {
			fast = " ⚡"
		}
		fmt.Fprintf(&b, "| %s | %s: %s%s | %s | %s | %s | %s | %d / %d → %d / %d |\n", mark, r.group, r.fault, fast,
			cell(r.inject), cell(r.expect), cell(r.measured), secs(r.converge),
			r.baseline.Goroutines, r.baseline.FDs, r.counts.Goroutines, r.counts.FDs)
	}
	b.WriteString("\n⚡ also runs in `make test`.\n")
	return replaceBetween(path, matrixBegin, matrixEnd, b.String())
}

func cell(s string) string { return strings.ReplaceAll(s, "|", "\\|") }

// replaceBetween replaces what lies between begin and end in path.
func replaceBetween(path, begin, end, content string) error {
	old, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(old)
	i, j := strings.Index(s, begin), strings.Index(s, end)
	if i < 0 || j < i {
		return fmt.Errorf("%s: markers %s … %s not found", path, begin, end)
	}
	s = s[:i+len(begin)] + "\n" + content + s[j:]
	return os.WriteFile(path, []byte(s), 0o644)
}

// writeSoakReport puts the soak's numbers between the soak markers of path.
func writeSoakReport(path string, st soakStats) error {
	var b strings.Builder
	verdict := "passed"
	if st.failed {
		verdict = "**FAILED**"
	}
	kinds := make([]string, 0, len(st.faults))
	for k, n := range st.faults {
		kinds = append(kinds, fmt.Sprintf("%s ×%d", k, n))
	}
	sort.Strings(kinds)
	classes := make([]string, 0, len(st.classes))
	for k, n := range st.classes {
		classes = append(classes, fmt.Sprintf("%s ×%d", k, n))
	}
	sort.Strings(classes)
	growth := 100 * float64(st.rss-st.rss0) / float64(st.rss0)
	fmt.Fprintf(&b, "Run %s on %s/%s, %d CPUs, race detector %v: %s, %s.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), raceEnabled, st.duration.Round(time.Second), verdict)
	fmt.Fprintf(&b, "| Measure | Value |\n|---|---|\n")
	fmt.Fprintf(&b, "| Prefix flips | %d |\n| Tags moved | %d |\n| Credential rotations (token registry) | %d |\n| SIGHUPs | %d |\n", st.flips, st.pushes, st.rotations, st.hup)
	fmt.Fprintf(&b, "| Images served from the fallback while the primary refused; taken back by the primary | %d; %d |\n", st.fallbackServed, st.primaryBack)
	fmt.Fprintf(&b, "| Faults injected | %s |\n| Pull failures logged, by class | %s |\n", strings.Join(kinds, ", "), strings.Join(classes, ", "))
	unknown := "none"
	if len(st.unknown) > 0 {
		unknown = cell(strings.Join(st.unknown, "; "))
	}
	fmt.Fprintf(&b, "| Distinct failures of class `unknown` (each a failure the agent could not name) | %s |\n", unknown)
	fmt.Fprintf(&b, "| RSS after warm-up; after the first tenth → end (max) | %d kB; %d → %d kB (%d), %+.1f %% |\n", st.warm, st.rss0, st.rss, st.rssMax, growth)
	fmt.Fprintf(&b, "| Goroutines start → end (max) | %d → %d (%d) |\n", st.base.Goroutines, st.end.Goroutines, st.maxGoroutines)
	fmt.Fprintf(&b, "| File descriptors start → end (max) | %d → %d (%d) |\n", st.base.FDs, st.end.FDs, st.maxFDs)
	fmt.Fprintf(&b, "| Final prefix warm and verified after the last fault | %s |\n", secs(st.converge))
	return replaceBetween(path, soakBegin, soakEnd, b.String())
}
