package agent_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

var bed testbed.Shared

func TestMain(m *testing.M) {
	// No test may reach the EC2 instance metadata service.
	os.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	os.Exit(bed.Main(m))
}

// fixture is a namespace of its own in the bed's main registry, so tests
// never see each other's images.
type fixture struct {
	bed    *testbed.Bed
	reg    *testbed.Registry
	ns     string
	engine *engine.DockerEngine
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	b := bed.Get(t)
	e, err := engine.NewDockerEngine(config.DockerEndpoint{Host: b.DockerHost})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	ns := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	return &fixture{bed: b, reg: b.Registry("main"), ns: ns, engine: e}
}

func (f *fixture) seed(t *testing.T, runtimes []string) map[string]testbed.Seeded {
	t.Helper()
	s, err := f.bed.Seed(context.Background(), f.reg, f.ns, runtimes, testbed.SeedOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}
