package pull_test

import (
	"io"
	"log/slog"
	"strings"
	"syscall"
	"testing"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/agent/pull"
	"github.com/molecule-ai/pull-agent/auth"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

func TestDiskGuardRefusesWhatCannotFit(t *testing.T) {
	testbed.Require(t)
	f := newFixture(t) // registry
	small, err := testbed.Start(ctxT(t), testbed.Options{Logf: t.Logf, DataRootSize: "64m"})
	must(t, err)
	t.Cleanup(func() { small.Stop() })
	_, err = f.bed.Seed(ctxT(t), f.reg, f.ns, []string{"codex", "hermes"}, testbed.SeedOptions{})
	must(t, err)
	_, err = f.bed.Seed(ctxT(t), f.reg, f.ns, []string{"crewai"}, testbed.SeedOptions{BaseSize: 256 << 10, LayerSize: 96 << 20})
	must(t, err)
	eng, err := engine.NewDockerEngine(config.DockerEndpoint{Host: small.DockerHost})
	must(t, err)
	root, err := eng.RootDir(ctxT(t))
	must(t, err)
	free := func() int64 {
		var st syscall.Statfs_t
		must(t, syscall.Statfs(root, &st))
		return int64(st.Bavail) * int64(st.Bsize)
	}
	before := free()
	cfg, err := config.LoadConfig("t", nil, func(k string) string {
		return map[string]string{config.KeyRegistry: f.reg.Prefix(f.ns), config.KeyRuntimes: "codex,crewai,hermes"}[k]
	})
	must(t, err)
	imgs, err := cfg.Images()
	must(t, err)
	sel, _ := auth.NewSelector(auth.Options{})
	p, err := pull.NewPuller(eng, sel, slog.New(slog.NewTextHandler(io.Discard, nil)), pull.PullerOptions{DiskGuard: true, DiskMargin: 1 << 20, Concurrency: 1})
	must(t, err)
	big := p.Pull(ctxT(t), imgs[1], nil)
	if pull.ClassOf(big.Err) != pull.ClassDisk || !strings.Contains(big.Err.Error(), "only") {
		t.Fatalf("a 96 MiB image on a 64 MiB disk: %v (%s)", big.Err, pull.ClassOf(big.Err))
	}
	t.Logf("refused: %v", big.Err)
	if after := free(); before-after > 1<<20 {
		t.Errorf("the refused pull wrote %d bytes", before-after)
	}
	for _, i := range []int{0, 2} {
		if r := p.Pull(ctxT(t), imgs[i], nil); r.Err != nil {
			t.Errorf("%s: %v", imgs[i].Runtime, r.Err)
		}
	}
	must(t, eng.Ping(ctxT(t)))
}
