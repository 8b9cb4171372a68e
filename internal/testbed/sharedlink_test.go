package testbed

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// A shared link is a namespace with a tbf qdisc on both ends of its veth
// pair; a registry started in the namespace answers through a latency
// proxy on loopback; Close leaves neither namespace nor device behind.
// (That the cap is shared by all connections is the kernel's tbf, checked
// by hand in FACTS.md; a timed assertion here would measure the machine.)
func TestSharedLinkSetupAndTeardown(t *testing.T) {
	Require(t)
	if err := SharedLinkAvailable(); err != nil {
		SkipOrFail(t, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b, err := Start(ctx, Options{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Stop()
	// One per process: the engine suites run this package side by side.
	l, err := NewSharedLink(fmt.Sprintf("pa-test-link-%d", os.Getpid()), 123)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if !namespaceListed(t, l.Namespace) {
		t.Fatalf("ip netns list does not show %s", l.Namespace)
	}
	host, ns, err := l.Qdiscs()
	if err != nil {
		t.Fatal(err)
	}
	for end, out := range map[string]string{"machine's end": host, "namespace's end": ns} {
		if !strings.Contains(out, "tbf") || !strings.Contains(out, "rate 123Mbit") {
			t.Errorf("%s: no tbf at 123 Mbit/s: %q", end, out)
		}
	}
	r, err := b.StartRegistry(ctx, "linked", RegistryOptions{Netns: l.Namespace, Addr: l.NSAddr + ":5000"})
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewTCPProxy("linked", r.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Latency(10); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + p.Addr + "/v2/")
	if err != nil {
		t.Fatalf("registry through the proxy and the link: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v2/ through the link: %s", resp.Status)
	}
	if _, err := NewSharedLink(l.Namespace, 10); err == nil {
		t.Error("a second link with the same namespace name was made")
	}
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if namespaceListed(t, l.Namespace) {
		t.Errorf("namespace %s survived Close", l.Namespace)
	}
	if _, err := os.Stat("/sys/class/net/" + l.HostDev); err == nil {
		t.Errorf("device %s survived Close", l.HostDev)
	}
}

func namespaceListed(t *testing.T, name string) bool {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == name {
			return true
		}
	}
	return false
}
