#!/usr/bin/env bash
# Builds, once, a minimal Debian 12 root filesystem that boots under
# systemd-nspawn, for the systemd end-to-end test: a host as the README's
# user-data finds it after its apt-get line (systemd, curl). It is cached
# outside the checkout; the mirror is read from this machine's own apt sources.
#   scripts/rootfs.sh [DEST]     default /var/cache/pull-agent-test/rootfs-bookworm-curl
set -euo pipefail

dest=${1:-/var/cache/pull-agent-test/rootfs-bookworm-curl}
# What the tree holds; a cached tree of another spec is rebuilt.
spec="bookworm minbase systemd,systemd-sysv,dbus,procps,curl"
if [ -f "$dest/.complete" ] && [ "$(cat "$dest/.complete")" = "$spec" ]; then
	exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
	echo "rootfs: must run as root (debootstrap)" >&2
	exit 1
fi
for tool in debootstrap systemd-nspawn; do
	if ! command -v "$tool" >/dev/null 2>&1; then
		echo "rootfs: $tool missing: run 'make deps'" >&2
		exit 1
	fi
done

# shellcheck source=scripts/debian-mirror.sh
. "$(dirname "$0")/debian-mirror.sh"
mirror=$(debian_mirror) || {
	echo "rootfs: no Debian mirror found in /etc/apt/sources.list{,.d}" >&2
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
trap 'rm -rf "$tmp"' EXIT
echo "rootfs: debootstrap bookworm into $dest (a few minutes, once)" >&2
debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,procps,curl bookworm "$tmp" "$mirror" >"$tmp.log" 2>&1 || {
	tail -20 "$tmp.log" >&2
	exit 1
}
rm -f "$tmp.log"
# No getty on the console; the test talks to the container through nsenter.
ln -sf /dev/null "$tmp/etc/systemd/system/console-getty.service"
echo pull-agent-test >"$tmp/etc/hostname"
echo "$spec" >"$tmp/.complete"
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
