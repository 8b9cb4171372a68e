#!/usr/bin/env bash
# The unit tier (make unit) as user nobody, with no dockerd on PATH: the
# proof that it needs neither root nor a Docker daemon.
#
# Run as root. The test binaries are built as root (who has the module
# cache); each then runs as nobody in its package directory with -short and
# a GOCACHE of its own (the auth tests build a credential helper with go).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
	echo "unit-as-nobody: run as root; it drops to nobody (65534) itself" >&2
	exit 2
fi
tmp=$(mktemp -d /tmp/pa-unit-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/bin" "$tmp/home"

# dockerd lives in /usr/sbin: this PATH has go and the usual tools only.
path=$(dirname "$(command -v go)"):/usr/local/bin:/usr/bin:/bin
if PATH=$path command -v dockerd >/dev/null; then
	echo "unit-as-nobody: dockerd is on $path" >&2
	exit 1
fi

pkgs=$(go list -f '{{if or .TestGoFiles .XTestGoFiles}}{{.ImportPath}} {{.Dir}}{{end}}' ./...)
n=0
while read -r pkg dir; do
	n=$((n + 1))
	go test -c -race -o "$tmp/bin/$n.test" "$pkg"
	echo "$n $pkg $dir" >>"$tmp/list"
done <<<"$pkgs"
chmod a+rx "$tmp"
chmod -R a+rX "$tmp/bin"
chown 65534:65534 "$tmp/home"

start=$(date +%s)
rc=0
while read -r n pkg dir; do
	echo "== $pkg (as nobody)"
	(cd "$dir" && setpriv --reuid=65534 --regid=65534 --clear-groups \
		env -i PATH="$path" HOME="$tmp/home" TMPDIR=/tmp GOCACHE="$tmp/home/go-build" \
		GOFLAGS=-buildvcs=false GOPROXY=off GOTOOLCHAIN=local CI="${CI:-}" \
		AWS_EC2_METADATA_DISABLED=true \
		"$tmp/bin/$n.test" -test.short -test.count=1 -test.timeout=5m "$@") || rc=1
done <"$tmp/list"
echo "unit-as-nobody: $(($(date +%s) - start)) s of tests, exit $rc"
exit "$rc"
