#!/usr/bin/env bash
# install.sh: installs pull-agent as a systemd service (what EC2 user-data
# runs). Idempotent: a second run with the same inputs changes nothing and
# restarts nothing.
#
#   install.sh [--binary PATH | --url URL --sha256 HEX] [--registry PREFIX]
#              [--ghcr-user USER --ghcr-token-file FILE] [--wait-warm [SECONDS]]
#              [--root DIR]
#   install.sh --uninstall [--purge] [--root DIR]
#
# Without --binary or --url, the binary is built from this checkout (Go
# needed). --root installs into another root (packaging, tests): no
# systemctl there.
#
# Exit codes: 0 done; 2 usage; 3 not root; 4 no systemd; 5 checksum
# mismatch or download failed; 6 unusable binary; 7 images not warm in time.
set -euo pipefail

readonly UNIT_NAME=pull-agent.service
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

binary="" url="" sha256="" registry="" ghcr_user="" ghcr_token_file=""
wait_warm="" root="" uninstall=0 purge=0

die() { # code message hint
	echo "install.sh: error: $2" >&2
	[ -n "${3:-}" ] && echo "install.sh: hint: $3" >&2
	exit "$1"
}
warn() { echo "install.sh: warning: $*" >&2; }
say() { echo "install.sh: $*" >&2; }

usage() {
	sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
	case "$1" in
	--binary) binary=${2:?--binary needs a path}; shift 2 ;;
	--url) url=${2:?--url needs a URL}; shift 2 ;;
	--sha256) sha256=${2:?--sha256 needs a hex digest}; shift 2 ;;
	--registry) registry=${2:?--registry needs a prefix}; shift 2 ;;
	--ghcr-user) ghcr_user=${2:?--ghcr-user needs a name}; shift 2 ;;
	--ghcr-token-file) ghcr_token_file=${2:?--ghcr-token-file needs a file}; shift 2 ;;
	--ghcr-token | --ghcr-token=*) die 2 "--ghcr-token is not accepted: a token on the command line shows in ps" "put it in a file (mode 0600) and pass --ghcr-token-file FILE" ;;
	--wait-warm)
		if [[ ${2:-} =~ ^[0-9]+$ ]]; then
			wait_warm=$2
			shift 2
		else
			wait_warm=900
			shift
		fi
		;;
	--root) root=${2:?--root needs a directory}; shift 2 ;;
	--uninstall) uninstall=1; shift ;;
	--purge) purge=1; shift ;;
	-h | --help) usage; exit 0 ;;
	*) die 2 "unknown option '$1'" "run install.sh --help" ;;
	esac
done

[ -n "$url" ] && [ -z "$sha256" ] && die 2 "--url needs --sha256" "publish the binary's sha256 next to it and pass it here"
[ -n "$url" ] && [ -n "$binary" ] && die 2 "--binary and --url exclude each other" ""
[ "$purge" = 1 ] && [ "$uninstall" = 0 ] && die 2 "--purge goes with --uninstall" ""
if [ -n "$ghcr_token_file" ] && [ -z "$ghcr_user" ]; then
	die 2 "--ghcr-token-file needs --ghcr-user" ""
fi
if [ -n "$root" ]; then
	mkdir -p "$root"
	root=$(cd "$root" && pwd)
fi

bin_path="$root/usr/local/bin/pull-agent"
unit_path="$root/etc/systemd/system/$UNIT_NAME"
env_dir="$root/etc/pull-agent"
env_path="$env_dir/pull-agent.env"
state_dir="$root/var/lib/pull-agent"

live() { [ -z "$root" ]; } # acting on this machine's systemd

if live; then
	[ "$(id -u)" -eq 0 ] || die 3 "must run as root" "run with sudo, or from EC2 user-data (root)"
	[ -d /run/systemd/system ] || die 4 "systemd is not running here (no /run/systemd/system)" "install on a systemd host, or use --root DIR to stage files"
	command -v systemctl >/dev/null 2>&1 || die 4 "systemctl not found" "install systemd"
fi

# ---- uninstall ---------------------------------------------------------
if [ "$uninstall" = 1 ]; then
	if live && systemctl list-unit-files "$UNIT_NAME" >/dev/null 2>&1; then
		systemctl disable --now "$UNIT_NAME" >/dev/null 2>&1 || true
	fi
	rm -f "$bin_path" "$unit_path"
	live && systemctl daemon-reload
	if [ "$purge" = 1 ]; then
		rm -rf "$env_dir" "$state_dir"
		say "removed pull-agent, its settings and its state"
	else
		say "removed pull-agent; kept $env_path and $state_dir (--purge removes them)"
	fi
	exit 0
fi

# ---- the binary ----------------------------------------------------------
tmpdir=$(mktemp -d)
trap 'rm -rf "$tmpdir"' EXIT

if [ -n "$url" ]; then
	command -v curl >/dev/null 2>&1 || die 5 "curl is needed for --url" "apt-get install curl, or pass --binary"
	curl -fsSL --retry 3 -o "$tmpdir/pull-agent" "$url" || die 5 "downloading $url failed" "check the URL and the network"
	got=$(sha256sum "$tmpdir/pull-agent" | cut -d' ' -f1)
	[ "$got" = "${sha256,,}" ] || die 5 "checksum mismatch for $url: got $got, want $sha256" "the download is corrupt or not the published build; nothing was installed"
	chmod 0755 "$tmpdir/pull-agent"
	binary="$tmpdir/pull-agent"
elif [ -z "$binary" ]; then
	if [ -f "$here/go.mod" ] && command -v go >/dev/null 2>&1; then
		say "building pull-agent from $here"
		(cd "$here" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$(git -C "$here" describe --tags --always --dirty 2>/dev/null || echo dev)" -o "$tmpdir/pull-agent" ./cmd/pull-agent) ||
			die 6 "building pull-agent failed" "pass --binary PATH or --url URL --sha256 HEX"
		binary="$tmpdir/pull-agent"
	else
		die 2 "no binary: pass --binary PATH or --url URL --sha256 HEX" "or run install.sh inside the pull-agent checkout with Go installed"
	fi
fi

[ -r "$binary" ] || die 6 "cannot read the binary $binary" "check the path and its permissions"
# An ELF executable for this machine's architecture?
magic=$(head -c 4 "$binary" | od -An -tx1 | tr -d ' \n')
[ "$magic" = "7f454c46" ] || die 6 "$binary is not an ELF executable" "pass the pull-agent binary for Linux"
machine=$(od -An -tu2 -j18 -N2 "$binary" | tr -d ' ')
case "$(uname -m)" in
x86_64) want=62 ;;
aarch64) want=183 ;;
*) want="" ;;
esac
if [ -n "$want" ] && [ "$machine" != "$want" ]; then
	die 6 "$binary is built for another architecture (ELF machine $machine, this host is $(uname -m))" "download the $(uname -m) build"
fi
"$binary" version >/dev/null 2>&1 || die 6 "$binary does not run ('$binary version' failed)" "is it a pull-agent binary for this platform?"

# ---- files -----------------------------------------------------------------
changed_bin=0 changed_unit=0

# put SRC DEST MODE: install SRC at DEST unless identical; 0 if changed.
put() {
	local src=$1 dest=$2 mode=$3
	if [ -f "$dest" ] && cmp -s "$src" "$dest" && [ "$(stat -c %a "$dest")" = "${mode#0}" ]; then
		return 1
	fi
	mkdir -p "$(dirname "$dest")"
	install -m "$mode" "$src" "$dest.new"
	mv -f "$dest.new" "$dest"
	return 0
}

if put "$binary" "$bin_path" 0755; then changed_bin=1; fi
if put "$here/systemd/pull-agent.service" "$unit_path" 0644; then changed_unit=1; fi

mkdir -p "$env_dir"
chmod 0750 "$env_dir"
if [ ! -e "$env_path" ]; then
	install -m 0600 "$here/systemd/pull-agent.env" "$env_path"
	say "installed the example settings at $env_path"
fi

# set_key KEY VALUE: set KEY in the env file, atomically, mode 0600. The
# file is read, compared and written by bash alone (read, printf and [[ ]]
# are builtins): a value handed to grep or sed would show in every user's
# ps and /proc/*/cmdline, and GHCR_TOKEN is a secret.
set_key() {
	local key=$1 value=$2 tmp content="" found=0 l
	case "$value" in
	*"'"* | *$'\n'*) die 2 "$key: the value contains a quote or a newline" "use a value without them" ;;
	esac
	local want="$key='$value'"
	local -a lines=()
	mapfile -t lines <"$env_path"
	for l in "${lines[@]}"; do
		if [[ $l =~ ^[[:space:]]*"$key"= ]]; then
			[ "$l" = "$want" ] && found=1
			continue
		fi
		content+="$l"$'\n'
	done
	if [ "$found" = 1 ]; then
		return 0
	fi
	tmp=$(mktemp "$env_dir/.pull-agent.env.XXXXXX")
	chmod 0600 "$tmp"
	printf '%s%s\n' "$content" "$want" >"$tmp"
	mv -f "$tmp" "$env_path"
}
[ -n "$registry" ] && set_key MOLECULE_IMAGE_REGISTRY "$registry"
if [ -n "$ghcr_user" ]; then
	set_key GHCR_USER "$ghcr_user"
	if [ -n "$ghcr_token_file" ]; then
		[ -r "$ghcr_token_file" ] || die 2 "cannot read $ghcr_token_file" "the token file must be readable by root"
		token=$(<"$ghcr_token_file")
		token=${token//$'\r'/}
		set_key GHCR_TOKEN "${token//$'\n'/}"
	fi
fi
chmod 0600 "$env_path"

if ! live; then
	say "installed into $root (no systemctl with --root)"
	exit 0
fi

# ---- systemd ---------------------------------------------------------------
if [ ! -S /run/docker.sock ] && [ ! -S /var/run/docker.sock ]; then
	warn "no Docker socket yet; the agent waits for Docker to come up"
fi
if ! systemctl list-unit-files docker.service >/dev/null 2>&1; then
	warn "no docker.service; install Docker (the agent waits for it)"
fi

[ "$changed_unit" = 1 ] && systemctl daemon-reload
if systemctl is-active --quiet "$UNIT_NAME"; then
	if [ "$changed_bin" = 1 ] || [ "$changed_unit" = 1 ]; then
		say "binary or unit changed: restarting $UNIT_NAME"
		systemctl restart "$UNIT_NAME"
	else
		say "$UNIT_NAME already running and up to date"
	fi
	systemctl enable --quiet "$UNIT_NAME"
else
	# Type=notify: returns once the agent said READY=1.
	systemctl enable --now --quiet "$UNIT_NAME"
	say "$UNIT_NAME started"
fi

if [ -n "$wait_warm" ]; then
	say "waiting up to ${wait_warm}s for every image to be warm"
	if ! "$bin_path" status --wait --timeout "${wait_warm}s"; then
		die 7 "not every image is warm after ${wait_warm}s" "see 'pull-agent status' and 'journalctl -u pull-agent'"
	fi
fi
