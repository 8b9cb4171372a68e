#!/usr/bin/env bash
# Builds, once, a minimal Debian 13 (trixie) root filesystem holding trixie's
# Docker Engine (docker.io 26.1.x, its CLI in docker-cli) and containerd
# (1.7.x), for the test bed's
# engine matrix (internal/testbed, PULL_AGENT_TEST_ENGINE). The test bed runs
# the engine from it with chroot in a private mount namespace; nothing in the
# tree is booted. It is cached outside the checkout; the mirror is read from
# this machine's own apt sources.
#   scripts/trixie-rootfs.sh [DEST]   default /var/cache/pull-agent-test/rootfs-trixie
set -euo pipefail

dest=${1:-/var/cache/pull-agent-test/rootfs-trixie}
packages=docker.io,docker-cli,containerd,ca-certificates,iptables,procps
# What the tree holds; a cached tree of another spec is rebuilt.
spec="trixie minbase $packages"
if [ -f "$dest/.complete" ] && [ "$(cat "$dest/.complete")" = "$spec" ]; then
	exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
	echo "trixie-rootfs: must run as root (debootstrap)" >&2
	exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
	echo "trixie-rootfs: debootstrap missing: run 'make deps'" >&2
	exit 1
fi

# shellcheck source=scripts/debian-mirror.sh
. "$(dirname "$0")/debian-mirror.sh"
mirror=$(debian_mirror) || {
	echo "trixie-rootfs: no Debian mirror found in /etc/apt/sources.list{,.d}" >&2
	exit 1
}

mkdir -p "$(dirname "$dest")"
# One builder at a time; a second waits and then finds the tree complete.
exec 9>"$dest.lock"
flock 9
if [ -f "$dest/.complete" ] && [ "$(cat "$dest/.complete")" = "$spec" ]; then
	exit 0
fi
tmp="$dest.tmp.$$"
trap 'rm -rf "$tmp" "$tmp.log"' EXIT
echo "trixie-rootfs: debootstrap trixie into $dest (a few minutes, once)" >&2
debootstrap --variant=minbase --include="$packages" trixie "$tmp" "$mirror" >"$tmp.log" 2>&1 || {
	tail -20 "$tmp.log" >&2
	exit 1
}
rm -f "$tmp.log"
for tool in dockerd containerd docker; do
	if [ ! -x "$tmp/usr/bin/$tool" ] && [ ! -x "$tmp/usr/sbin/$tool" ]; then
		echo "trixie-rootfs: $tool missing from the trixie tree" >&2
		exit 1
	fi
done
echo "$spec" >"$tmp/.complete"
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
