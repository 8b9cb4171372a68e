package testbed

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// SharedLink is one link that every connection between this machine and a
// private network namespace shares, as a host's NIC is shared by all its
// pulls: a veth pair into the namespace with a tbf qdisc on both ends, so
// the cap is the aggregate of all connections (toxiproxy's bandwidth toxic
// limits each connection on its own). A registry started with
// RegistryOptions.Netns = Namespace listens behind it, on NSAddr.
type SharedLink struct {
	// Namespace is the network namespace's name (ip netns).
	Namespace string
	// HostAddr and NSAddr are the two ends' IPv4 addresses (a /30 of
	// 10.231.0.0/16, one not in use on the machine).
	HostAddr, NSAddr string
	// HostDev and NSDev are the veth devices, the first on the machine,
	// the second in the namespace.
	HostDev, NSDev string
	// Mbit is the rate of each direction in Mbit/s.
	Mbit int
}

// SharedLinkAvailable reports why a shared link cannot be made here, or
// nil.
func SharedLinkAvailable() error {
	if os.Geteuid() != 0 {
		return errors.New("a network namespace and a veth pair need root")
	}
	for _, b := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(b); err != nil {
			return fmt.Errorf("%s not found on PATH (Debian's iproute2)", b)
		}
	}
	return nil
}

// NewSharedLink makes the namespace name, the veth pair into it, and a
// tbf qdisc of mbit Mbit/s on both ends (burst 256 KB, at most 50 ms of
// queue). Close removes them. On error nothing is left behind.
func NewSharedLink(name string, mbit int) (_ *SharedLink, err error) {
	if err := SharedLinkAvailable(); err != nil {
		return nil, err
	}
	if mbit <= 0 {
		return nil, fmt.Errorf("shared link %s: rate %d Mbit/s: must be positive", name, mbit)
	}
	// Test processes run side by side (one per engine): choosing an
	// index and taking it must not interleave.
	unlock, err := lockLinks()
	if err != nil {
		return nil, err
	}
	defer unlock()
	n, err := freeLinkIndex()
	if err != nil {
		return nil, err
	}
	l := &SharedLink{
		Namespace: name, Mbit: mbit,
		HostAddr: fmt.Sprintf("10.231.%d.1", n), NSAddr: fmt.Sprintf("10.231.%d.2", n),
		HostDev: fmt.Sprintf("pa-link%dh", n), NSDev: fmt.Sprintf("pa-link%dn", n),
	}
	if err := ipCmd("netns", "add", name); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	rate := fmt.Sprintf("%dmbit", mbit)
	steps := [][]string{
		{"ip", "link", "add", l.HostDev, "type", "veth", "peer", "name", l.NSDev, "netns", name},
		{"ip", "addr", "add", l.HostAddr + "/30", "dev", l.HostDev},
		{"ip", "link", "set", l.HostDev, "up"},
		{"ip", "netns", "exec", name, "ip", "addr", "add", l.NSAddr + "/30", "dev", l.NSDev},
		{"ip", "netns", "exec", name, "ip", "link", "set", l.NSDev, "up"},
		{"ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"},
		{"tc", "qdisc", "add", "dev", l.HostDev, "root", "tbf", "rate", rate, "burst", "256kb", "latency", "50ms"},
		{"ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", l.NSDev, "root", "tbf", "rate", rate, "burst", "256kb", "latency", "50ms"},
	}
	for _, s := range steps {
		if out, err := exec.Command(s[0], s[1:]...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("shared link %s: %s: %v: %s", name, strings.Join(s, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return l, nil
}

// lockLinks holds a machine-wide lock on creating shared links.
func lockLinks() (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(os.TempDir(), "pa-shared-link.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("shared link lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("shared link lock: %w", err)
	}
	return func() { f.Close() }, nil
}

// freeLinkIndex is the first n in 0..255 for which neither the devices
// nor the addresses of a link would clash with the machine's.
func freeLinkIndex() (int, error) {
	out, err := exec.Command("ip", "-o", "addr", "show").CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("ip addr show: %v: %s", err, out)
	}
	for n := range 256 {
		if strings.Contains(string(out), fmt.Sprintf(" 10.231.%d.", n)) {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/sys/class/net/pa-link%dh", n)); err == nil {
			continue
		}
		return n, nil
	}
	return 0, errors.New("no free 10.231.n.0/30 for a shared link: remove stale pa-link* devices (ip link del)")
}

func ipCmd(args ...string) error {
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Qdiscs is what 'tc qdisc show' says of both ends, the machine's first.
func (l *SharedLink) Qdiscs() (host, ns string, err error) {
	h, err := exec.Command("tc", "qdisc", "show", "dev", l.HostDev).CombinedOutput()
	if err != nil {
		return "", "", fmt.Errorf("tc qdisc show dev %s: %v: %s", l.HostDev, err, h)
	}
	n, err := exec.Command("ip", "netns", "exec", l.Namespace, "tc", "qdisc", "show", "dev", l.NSDev).CombinedOutput()
	if err != nil {
		return "", "", fmt.Errorf("tc qdisc show dev %s in %s: %v: %s", l.NSDev, l.Namespace, err, n)
	}
	return string(h), string(n), nil
}

// Close deletes the veth pair and the namespace, and waits (up to 5 s)
// until the machine no longer lists the device: the kernel tears a
// namespace down asynchronously. Stop what runs inside first (the bed's
// Stop); a process still inside keeps the namespace alive, unnamed.
func (l *SharedLink) Close() error {
	var errs []error
	if _, err := os.Stat("/sys/class/net/" + l.HostDev); err == nil {
		errs = append(errs, ipCmd("link", "del", l.HostDev))
	}
	if _, err := os.Stat("/run/netns/" + l.Namespace); err == nil {
		errs = append(errs, ipCmd("netns", "del", l.Namespace))
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat("/sys/class/net/" + l.HostDev); err != nil {
			return errors.Join(errs...)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.Join(append(errs, fmt.Errorf("device %s still present 5 s after deleting it", l.HostDev))...)
}
