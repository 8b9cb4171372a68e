// Package prometheus_test checks the alerting rules shipped in this
// directory with promtool: their syntax, their unit tests, and that each
// alert's tests would catch a broken expression or for: window.
package prometheus_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

const (
	rulesFile = "pull-agent.rules.yml"
	testsFile = "pull-agent.rules.test.yml"
)

// promtool returns the path of promtool. It skips t when promtool is
// absent, unless CI is set: then a missing promtool is a failure.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("promtool is required when CI is set (make deps installs Debian's prometheus package, which ships it): %v", err)
	}
	t.Skipf("promtool absent (%v); with CI set this is a failure", err)
	return ""
}

// run runs promtool with args in dir and returns its output and error.
func run(t *testing.T, bin, dir string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), bin, args...)
	cmd.Dir = dir
	cmd.Env = []string{} // promtool needs nothing from the environment
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestRules(t *testing.T) {
	bin := promtool(t)
	for _, args := range [][]string{{"check", "rules", rulesFile}, {"test", "rules", testsFile}} {
		t.Run(strings.Join(args[:2], "_"), func(t *testing.T) {
			if out, err := run(t, bin, ".", args...); err != nil {
				t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		})
	}
}

var alertStart = regexp.MustCompile(`(?m)^      - alert: (\w+)$`)

// alerts splits the rules file into each alert's text, by name.
func alerts(t *testing.T, rules string) map[string]string {
	t.Helper()
	idx := alertStart.FindAllStringSubmatchIndex(rules, -1)
	out := map[string]string{}
	for i, m := range idx {
		end := len(rules)
		if i+1 < len(idx) {
			end = idx[i+1][0]
		}
		out[rules[m[2]:m[3]]] = rules[m[0]:end]
	}
	if len(out) == 0 {
		t.Fatalf("no alerts found in %s", rulesFile)
	}
	return out
}

// Every alert says how long, how bad, what is wrong and what to do.
func TestAlertsAreComplete(t *testing.T) {
	data, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	for name, text := range alerts(t, string(data)) {
		for _, field := range []string{"expr:", "for:", "severity:", "summary:", "description:"} {
			if !strings.Contains(text, "\n        "+field) && !strings.Contains(text, "\n          "+field) {
				t.Errorf("alert %s has no %s", name, field)
			}
		}
	}
}

var (
	exprLine = regexp.MustCompile(`(?m)^        expr: .*$`)
	forLine  = regexp.MustCompile(`(?m)^        for: .*$`)
)

// The unit tests are not vacuous: for each alert, an expression that
// never holds must fail its firing case, and firing at once (for: 0s)
// must fail the case just short of its for: window.
func TestRuleTestsCatchMutants(t *testing.T) {
	bin := promtool(t)
	data, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	tests, err := os.ReadFile(testsFile)
	if err != nil {
		t.Fatal(err)
	}
	rules := string(data)
	for name, text := range alerts(t, rules) {
		for _, mut := range []struct {
			what string
			re   *regexp.Regexp
			with string
		}{
			{"never fires", exprLine, "        expr: vector(1) < 0"},
			{"fires at once", forLine, "        for: 0s"},
		} {
			t.Run(name+"/"+strings.ReplaceAll(mut.what, " ", "_"), func(t *testing.T) {
				t.Parallel()
				mutated := mut.re.ReplaceAllLiteralString(text, mut.with)
				if mutated == text {
					t.Fatalf("alert %s: nothing to mutate for %q", name, mut.what)
				}
				dir := t.TempDir()
				for file, content := range map[string]string{rulesFile: strings.Replace(rules, text, mutated, 1), testsFile: string(tests)} {
					if err := os.WriteFile(filepath.Join(dir, file), []byte(content), 0o644); err != nil {
						t.Fatal(err)
					}
				}
				out, err := run(t, bin, dir, "test", "rules", testsFile)
				if err == nil {
					t.Fatalf("alert %s %s, and promtool test rules still passes: its tests cannot fail", name, mut.what)
				}
				if !strings.Contains(out, "alertname: "+name) {
					t.Errorf("promtool failed, but not on %s:\n%s", name, out)
				}
			})
		}
	}
}
