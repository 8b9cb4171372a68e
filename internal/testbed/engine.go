package testbed

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
)

// Engines the bed can run. Debian 12's docker.io (20.10, API 1.41) runs
// from the machine's own packages with the vfs graph driver; Debian 13's
// docker.io (26.1.x, API 1.45) and containerd (1.7.x) run from a cached
// trixie root filesystem (scripts/trixie-rootfs.sh), with the classic
// image store on the overlay2 graph driver or with the containerd image
// store (the default of Docker Engine 29 on new installs).
const (
	EngineDebian12         = "debian12"
	EngineTrixieClassic    = "trixie-classic"
	EngineTrixieContainerd = "trixie-containerd"
)

// EngineEnv names the environment variable that picks the engine when
// Options.Engine is empty, so that every suite built on Start or Shared
// runs on another engine unchanged (make test-engines).
const EngineEnv = "PULL_AGENT_TEST_ENGINE"

// TrixieRoot is where scripts/trixie-rootfs.sh caches the trixie tree.
const TrixieRoot = "/var/cache/pull-agent-test/rootfs-trixie"

// Engines lists every engine the bed can run.
func Engines() []string {
	return []string{EngineDebian12, EngineTrixieClassic, EngineTrixieContainerd}
}

// DefaultEngine is the engine Start runs when Options.Engine is empty:
// the one EngineEnv names, else Debian 12's (an unknown name also gives
// Debian 12's here; Start refuses it).
func DefaultEngine() string {
	e, err := engineOf("")
	if err != nil {
		return EngineDebian12
	}
	return e
}

// engineOf resolves the engine asked for: opt, else EngineEnv, else
// Debian 12's.
func engineOf(opt string) (string, error) {
	e := opt
	if e == "" {
		e = os.Getenv(EngineEnv)
	}
	if e == "" {
		return EngineDebian12, nil
	}
	for _, known := range Engines() {
		if e == known {
			return e, nil
		}
	}
	return "", fmt.Errorf("unknown test engine %q (from Options.Engine or %s): use one of %s", e, EngineEnv, strings.Join(Engines(), ", "))
}

// engineAvailable reports why engine cannot run here, or nil.
func engineAvailable(engine string) error {
	if engine == EngineDebian12 {
		return nil
	}
	data, err := os.ReadFile(filepath.Join(TrixieRoot, ".complete"))
	if err != nil || !strings.HasPrefix(string(data), "trixie ") {
		return fmt.Errorf("engine %s needs the trixie root filesystem at %s: run scripts/trixie-rootfs.sh (as root, ~3 min once)", engine, TrixieRoot)
	}
	for _, tool := range []string{"unshare", "chroot"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("engine %s needs %s on PATH (util-linux, coreutils)", engine, tool)
		}
	}
	return nil
}

// Engine is the engine the bed runs (one of Engines()).
func (b *Bed) Engine() string { return b.engine }

// ContainerdStore reports whether the daemon keeps images in the
// containerd image store: an image's ID is then its index (or manifest)
// digest, not its config digest, and RepoDigests hold repo@<that digest>.
func (b *Bed) ContainerdStore() bool { return b.engine == EngineTrixieContainerd }

// daemonConfig is the daemon.json of the bed's engine, and the storage
// flags that go on dockerd's command line.
func (b *Bed) daemonConfig() (string, []string) {
	switch b.engine {
	case EngineTrixieClassic:
		return `{"storage-driver": "overlay2"}` + "\n", nil
	case EngineTrixieContainerd:
		return `{"features": {"containerd-snapshotter": true}, "storage-driver": "overlayfs"}` + "\n", nil
	}
	if b.opts.StorageDriver != "" {
		return "{}\n", []string{"--storage-driver=" + b.opts.StorageDriver}
	}
	return "{}\n", []string{"--storage-driver=vfs"}
}

// containerdConfig is trixie containerd's config: its roots under the
// bed's (the image store sits on the daemon's data root, so a small
// DataRootSize fills up as it would on one disk), its sockets in the bed's
// directory, and no CRI plugin (no Kubernetes here).
func (b *Bed) containerdConfig() string {
	return fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
`, filepath.Join(b.Dir, "docker-data", "containerd"), filepath.Join(b.Dir, "containerd-state"),
		b.containerdSock(), b.containerdSock()+".ttrpc")
}

func (b *Bed) containerdSock() string { return filepath.Join(b.Dir, "containerd.sock") }

// trixieScript runs in a private mount namespace (unshare --mount
// --propagation private): whatever it mounts disappears with the last
// process of the namespace. dockerd needs / to be a mount point to unpack
// layers, hence the bind of the tree onto itself. The bed's directory is
// bound at the same path inside the tree, so every path of the bed (socket,
// roots, pidfile, certificates) means the same inside and out. Private
// tmpfs mounts over the tree's /tmp and /run keep the cached tree clean.
// Arguments: root, bed directory, hosts file, "net" for a private network,
// then dockerd's.
const trixieScript = `set -e
root=$1 dir=$2 hosts=$3 net=$4
shift 4
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs tmpfs "$root/tmp"
mount -t tmpfs tmpfs "$root/run"
mkdir -p "$root$dir"
mount --rbind "$dir" "$root$dir"
mount --bind "$hosts" "$root/etc/hosts"
if [ "$net" = net ]; then ip link set lo up; fi
chroot "$root" containerd --config "$dir/containerd.toml" &
c=$!
while [ ! -S "$dir/containerd.sock" ]; do
	kill -0 "$c" 2>/dev/null || { echo "containerd exited" >&2; exit 1; }
	sleep 0.1
done
exec chroot "$root" dockerd --containerd "$dir/containerd.sock" "$@"
`

// trixieCommand is the command line that starts trixie's containerd and
// dockerd with dockerd's args.
func (b *Bed) trixieCommand(hostsFile string, args []string) (string, []string, error) {
	if err := os.WriteFile(filepath.Join(b.Dir, "containerd.toml"), []byte(b.containerdConfig()), 0o644); err != nil {
		return "", nil, err
	}
	// --kill-child: if unshare dies (the test process was killed), the
	// daemon goes with it.
	ns := []string{"--mount", "--propagation", "private", "--kill-child"}
	net := "host"
	if b.opts.PrivateNetwork {
		ns = append(ns, "--net")
		net = "net"
	}
	// The socket's group, by number: the tree's "docker" group is not
	// the machine's, and the agent warns of a socket owned by a group
	// other than root or docker.
	gid := "0"
	if g, err := user.LookupGroup("docker"); err == nil {
		gid = g.Gid
	}
	sh := append(ns, "--", "/bin/sh", "-c", trixieScript, "sh", TrixieRoot, b.Dir, hostsFile, net)
	return "unshare", append(append(sh, "--group", gid), args...), nil
}

// writeHosts writes the daemon's /etc/hosts (localhost and Options.Hosts)
// into the bed's directory and returns its path.
func (b *Bed) writeHosts() (string, error) {
	hosts := "127.0.0.1 localhost\n::1 localhost\n"
	for name, addr := range b.opts.Hosts {
		hosts += addr + " " + name + "\n"
	}
	hostsFile := filepath.Join(b.Dir, "hosts")
	if err := os.WriteFile(hostsFile, []byte(hosts), 0o644); err != nil {
		return "", err
	}
	return hostsFile, nil
}
