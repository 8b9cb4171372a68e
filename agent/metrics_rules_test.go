package agent

import (
	"bufio"
	"errors"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/molecule-ai/pull-agent/agent/pull"
	"github.com/molecule-ai/pull-agent/agent/state"
)

// exportedNames scrapes m and returns every sample name it serves
// (a histogram's _bucket, _sum and _count included).
func exportedNames(t *testing.T, m *Metrics) map[string]bool {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	names := map[string]bool{}
	sc := bufio.NewScanner(rec.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, _, _ := strings.Cut(line, "{")
		name, _, _ = strings.Cut(name, " ")
		names[name] = true
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return names
}

var ruleMetric = regexp.MustCompile(`pull_agent_[a-z_]+`)

// Every pull_agent_ series the shipped alerting rules, and their promtool
// tests, name is one the agent serves once it has state to report: a
// renamed metric must not leave an alert that silently never fires.
func TestAlertingRulesNameExportedMetrics(t *testing.T) {
	m := NewMetrics()
	exp := time.Date(2026, 11, 27, 23, 0, 0, 0, time.UTC)
	m.setState(state.StateDoc{
		Agent: state.AgentDoc{ConfigOK: true},
		Hosts: []state.HostDoc{{Host: "123456789012.dkr.ecr.us-east-2.amazonaws.com", TokenExpiresAt: &exp}},
		Images: []state.ImageDoc{
			{Runtime: "a", State: state.Warm, Source: state.SourcePrimary},
			{Runtime: "b", State: state.Stale, Source: state.SourceFallback("mirror.example/molecule-ai")},
		},
	})
	m.configLoad(true)
	m.configLoad(false)
	m.observePull(pull.PullResult{Duration: time.Second, Bytes: 1})
	m.observePull(pull.PullResult{Err: errors.New("manifest unknown")})
	m.reconciled(exp)
	exported := exportedNames(t, m)

	for _, file := range []string{"../deploy/prometheus/pull-agent.rules.yml", "../deploy/prometheus/pull-agent.rules.test.yml"} {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		used := ruleMetric.FindAllString(string(data), -1)
		if len(used) == 0 {
			t.Fatalf("%s names no pull_agent_ metric; is it the rules file?", file)
		}
		slices.Sort(used)
		for _, name := range slices.Compact(used) {
			if !exported[name] {
				t.Errorf("%s uses %s, which the agent does not export", file, name)
			}
		}
	}
}

// The expiry of credentials is exported for the hosts in use only: after a
// flip, the old host's last token must not run out on the page (and raise
// PullAgentCredentialsExpiringSoon for a host no longer used).
func TestMetricsForgetHostsNoLongerUsed(t *testing.T) {
	m := NewMetrics()
	exp := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	m.setState(state.StateDoc{Agent: state.AgentDoc{ConfigOK: true}, Hosts: []state.HostDoc{{Host: "old.example", TokenExpiresAt: &exp}}})
	m.setState(state.StateDoc{Agent: state.AgentDoc{ConfigOK: true}, Hosts: []state.HostDoc{{Host: "new.example", TokenExpiresAt: &exp}}})
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	page := rec.Body.String()
	if strings.Contains(page, `host="old.example"`) || !strings.Contains(page, `pull_agent_credentials_expiry_timestamp_seconds{host="new.example"}`) {
		t.Errorf("metrics page:\n%s", page)
	}
}
