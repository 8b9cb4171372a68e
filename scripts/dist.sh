#!/usr/bin/env bash
# Builds a release into OUTDIR (default dist): static linux/amd64 and
# linux/arm64 binaries and, per architecture,
# pull-agent-VERSION-linux-ARCH.tar.gz (one directory of that name holding
# the binary, install.sh, the unit, the example env file, README.md and
# LICENSE), plus SHA256SUMS.
#   scripts/dist.sh VERSION [OUTDIR]
# Reproducible: the same sources give the same bytes. Paths are trimmed and
# the binary carries no build ID or VCS stamp; every entry's mtime is
# SOURCE_DATE_EPOCH, else the time of the checkout's last commit; owner 0:0
# by number; modes fixed (0755 directories and programs, 0644 the rest);
# entries sorted; gzip stores no name or time.
set -euo pipefail

die() {
	echo "dist: $*" >&2
	exit 1
}

version=${1:-}
out=${2:-dist}
[[ $version =~ ^[0-9A-Za-z][0-9A-Za-z._+-]*$ ]] ||
	die "VERSION '$version': letters, digits and . _ + - only (make dist VERSION=1.2.3)"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$here" log -1 --format=%ct 2>/dev/null || true)}
[[ $epoch =~ ^[0-9]+$ ]] || die "no commit time: set SOURCE_DATE_EPOCH (seconds since 1970) outside a git checkout"
go=${GO:-go}

mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

tarballs=()
for arch in amd64 arm64; do
	name=pull-agent-$version-linux-$arch
	dir=$work/$name
	mkdir -p "$dir/systemd" "$dir/deploy/prometheus"
	# GOFLAGS and the GOAMD64/GOARM64 levels are set, not inherited: the
	# caller's environment must not change the bytes.
	(cd "$here" && env CGO_ENABLED=0 GOOS=linux GOARCH="$arch" GOAMD64=v1 GOARM64=v8.0 GOFLAGS= \
		"$go" build -trimpath -buildvcs=false -ldflags "-s -w -buildid= -X main.version=$version" \
		-o "$dir/pull-agent" ./cmd/pull-agent) || die "building linux/$arch failed"
	cp "$here/install.sh" "$here/README.md" "$here/LICENSE" "$dir/"
	cp "$here/systemd/pull-agent.service" "$here/systemd/pull-agent.env" "$dir/systemd/"
	cp "$here/deploy/prometheus/pull-agent.rules.yml" "$dir/deploy/prometheus/"
	chmod 0755 "$dir" "$dir/systemd" "$dir/deploy" "$dir/deploy/prometheus" "$dir/pull-agent" "$dir/install.sh"
	chmod 0644 "$dir/README.md" "$dir/LICENSE" "$dir/systemd/pull-agent.service" "$dir/systemd/pull-agent.env" "$dir/deploy/prometheus/pull-agent.rules.yml"
	tar -C "$work" --sort=name --format=ustar --mtime="@$epoch" --owner=0 --group=0 --numeric-owner \
		-cf - "$name" | gzip -9 -n >"$work/$name.tar.gz"
	tarballs+=("$name.tar.gz")
done
(cd "$work" && sha256sum "${tarballs[@]}" >SHA256SUMS)
for f in "${tarballs[@]}" SHA256SUMS; do
	mv -f "$work/$f" "$out/$f"
done
echo "dist: $out:" >&2
(cd "$out" && ls -l "${tarballs[@]}" SHA256SUMS >&2)
