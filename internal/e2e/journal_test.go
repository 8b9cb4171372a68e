package e2e

import (
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// checkJournalPriorities starts the stopped service once more, from
// prefix, where the registry lacks the image of the runtime missing, with a
// key in the env file that the agent does not read: a run with info lines,
// a warning and one failing image. journalctl -u pull-agent -p err must
// then list exactly the run's error lines, and -p warning its warnings and
// errors: each line reaches the journal with its own priority.
func checkJournalPriorities(t *testing.T, c *container, prefix, missing string) {
	t.Helper()
	const env = "/etc/pull-agent/pull-agent.env"
	c.must(t, 10*time.Second, "sed", "-i", "s#^MOLECULE_IMAGE_REGISTRY=.*#MOLECULE_IMAGE_REGISTRY="+prefix+"#", env)
	c.must(t, 10*time.Second, "sh", "-c", "echo HTTPS_PROXY=http://127.0.0.1:9 >>"+env)
	since := "@" + strings.TrimSpace(c.must(t, 10*time.Second, "date", "+%s.%N"))
	c.must(t, 2*time.Minute, "systemctl", "start", "pull-agent")
	failed := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(missing) + `\s+failed\s.*\[not-found\]`)
	waitStatus(t, c, "8/9 warm and "+missing+" not found", func(s string) bool {
		return strings.Contains(s, "images warm:    8/9") && failed.MatchString(s)
	})
	c.must(t, 30*time.Second, "systemctl", "stop", "pull-agent")
	c.must(t, 10*time.Second, "journalctl", "--sync")

	all := journalLines(t, c, since)
	var wantErr, wantWarn []string
	for _, l := range all {
		if strings.Contains(l, "level=ERROR") {
			wantErr = append(wantErr, l)
		}
		if strings.Contains(l, "level=ERROR") || strings.Contains(l, "level=WARN") {
			wantWarn = append(wantWarn, l)
		}
		if strings.HasPrefix(l, "<") || strings.HasPrefix(l, "time=") {
			t.Errorf("a line in the journal with its priority prefix or a time of its own: %s", l)
		}
	}
	if !slices.ContainsFunc(wantErr, func(l string) bool {
		return strings.Contains(l, `msg="pull failed;`) && strings.Contains(l, "workspace-template-"+missing)
	}) || !slices.ContainsFunc(wantWarn, func(l string) bool { return strings.Contains(l, "key=HTTPS_PROXY") }) ||
		!slices.ContainsFunc(all, func(l string) bool { return strings.Contains(l, "level=INFO") }) {
		t.Fatalf("the run did not log info lines, the warning for HTTPS_PROXY and the failed pull of %s:\n%s", missing, strings.Join(all, "\n"))
	}
	if got := journalLines(t, c, since, "-p", "err"); !slices.Equal(got, wantErr) {
		t.Errorf("journalctl -u pull-agent -p err:\n%s\nwant the run's error lines:\n%s", strings.Join(got, "\n"), strings.Join(wantErr, "\n"))
	}
	if got := journalLines(t, c, since, "-p", "warning"); !slices.Equal(got, wantWarn) {
		t.Errorf("journalctl -u pull-agent -p warning:\n%s\nwant the run's warnings and errors:\n%s", strings.Join(got, "\n"), strings.Join(wantWarn, "\n"))
	}
	if t.Failed() {
		t.Logf("the run's journal entries, PRIORITY and MESSAGE:\n%s",
			c.must(t, 10*time.Second, "journalctl", "-u", "pull-agent", "--since", since, "--no-pager", "-o", "json", "--output-fields=PRIORITY,MESSAGE,_PID"))
	}
	t.Logf("journal of the run: %d lines, %d warnings and errors, %d errors", len(all), len(wantWarn), len(wantErr))
}

// journalLines is the messages of the unit pull-agent since a time, as
// journalctl -u pull-agent prints them with the further args. A time, not
// a cursor: journalctl 252 with --after-cursor and a -p filter skips the
// first entry that passes the filter, whatever it is.
func journalLines(t *testing.T, c *container, since string, args ...string) []string {
	t.Helper()
	out := c.must(t, 10*time.Second, append([]string{"journalctl", "-u", "pull-agent", "--since", since, "--no-pager", "-o", "cat"}, args...)...)
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}
