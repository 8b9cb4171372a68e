#!/usr/bin/env bash
# install.sh: installs pull-agent as a systemd service (what EC2 user-data
# runs). Idempotent: a second run with the same inputs changes nothing and
# restarts nothing.
#
#   install.sh [--binary PATH [--sha256 HEX] | --url URL --sha256 HEX]
#              [--registry PREFIX] [--ghcr-user USER --ghcr-token-file FILE]
#              [--wait-warm [SECONDS]] [--root DIR]
#   install.sh --uninstall [--purge] [--root DIR]
#
# Without --binary or --url: the binary next to install.sh in an extracted
# release (pull-agent-VERSION-linux-ARCH.tar.gz), else built from this
# checkout (Go needed). --root installs into another root (packaging,
# tests): no systemctl there. Every input is checked before anything on
# disk changes; the token is read by bash itself, on no command line.
#
# Exit codes: 0 done; 2 usage; 3 not root; 4 no systemd; 5 checksum
# mismatch or download failed; 6 unusable binary; 7 images not warm in time.
set -euo pipefail
# The caller's umask may be 077 (user-data handling a secret): directories
# made here are for everyone to read; the env file gets its own umask.
umask 022

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

# need OPTION VALUE WHAT: exit 2 unless the option has a non-empty value.
need() {
	[ -n "$2" ] || die 2 "$1 needs $3" "run install.sh --help"
}

while [ $# -gt 0 ]; do
	case "$1" in
	--binary) need "$1" "${2:-}" "a path"; binary=$2; shift 2 ;;
	--url) need "$1" "${2:-}" "a URL"; url=$2; shift 2 ;;
	--sha256) need "$1" "${2:-}" "a hex digest"; sha256=$2; shift 2 ;;
	--registry) need "$1" "${2:-}" "a prefix"; registry=$2; shift 2 ;;
	--ghcr-user) need "$1" "${2:-}" "a name"; ghcr_user=$2; shift 2 ;;
	--ghcr-token-file) need "$1" "${2:-}" "a file"; ghcr_token_file=$2; shift 2 ;;
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
	--root) need "$1" "${2:-}" "a directory"; root=$2; shift 2 ;;
	--uninstall) uninstall=1; shift ;;
	--purge) purge=1; shift ;;
	-h | --help) usage; exit 0 ;;
	*) die 2 "unknown option '$1'" "run install.sh --help" ;;
	esac
done

[ -n "$url" ] && [ -z "$sha256" ] && die 2 "--url needs --sha256" "publish the binary's sha256 next to it and pass it here"
[ -n "$url" ] && [ -n "$binary" ] && die 2 "--binary and --url exclude each other" ""
if [ -n "$sha256" ]; then
	[ -n "$url" ] || [ -n "$binary" ] || die 2 "--sha256 goes with --url or --binary" ""
	[[ $sha256 =~ ^[0-9a-fA-F]{64}$ ]] || die 2 "--sha256 needs the 64 hex digits sha256sum prints, not '$sha256'" ""
fi
[ "$purge" = 1 ] && [ "$uninstall" = 0 ] && die 2 "--purge goes with --uninstall" ""
if [ -n "$ghcr_token_file" ] && [ -z "$ghcr_user" ]; then
	die 2 "--ghcr-token-file needs --ghcr-user" ""
fi
# An absolute --root, not created yet: nothing is written before every
# input has been checked.
if [ -d "$root" ]; then
	root=$(cd "$root" && pwd)
elif [ -n "$root" ] && [ "${root#/}" = "$root" ]; then
	root="$PWD/$root"
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

# ---- check every input before anything changes ---------------------------

# check_value WHAT VALUE: VALUE is written between single quotes into the env
# file, so it must be non-empty, hold no quote (it would end the value) and
# no control character such as a newline (it would start another line). The
# value is never printed: it may be the token.
check_value() {
	case "$2" in
	"") die 2 "$1 is empty" "pass a non-empty value" ;;
	*"'"* | *[[:cntrl:]]*) die 2 "$1 contains a quote, a newline or another control character" "use a value without them" ;;
	esac
}

# read_token FILE: sets token to FILE's content without its trailing line
# ends. Read by bash itself (read is a builtin), so the token is on no
# command line; read -d '' stops at the first NUL, which a token never holds.
read_token() {
	local file=$1 rc=""
	if [ ! -r "$file" ] || [ -d "$file" ]; then
		die 2 "cannot read the token file $file" "the token file must be a file readable by root"
	fi
	token=""
	{ IFS= read -r -d '' token; rc=$?; } 2>/dev/null <"$file" || true
	case "$rc" in
	"") die 2 "cannot read the token file $file" "the token file must be a file readable by root" ;;
	0) die 2 "the token file $file contains a NUL byte" "write the token alone into the file" ;;
	esac
	while [[ $token == *[$'\r\n'] ]]; do
		token=${token%?}
	done
	check_value "the token in $file" "$token"
}

# The keys to set, in the order they are appended to the env file.
keys=() values=()
if [ -n "$registry" ]; then
	check_value "--registry" "$registry"
	keys+=(MOLECULE_IMAGE_REGISTRY) values+=("$registry")
fi
if [ -n "$ghcr_user" ]; then
	check_value "--ghcr-user" "$ghcr_user"
	keys+=(GHCR_USER) values+=("$ghcr_user")
fi
if [ -n "$ghcr_token_file" ]; then
	read_token "$ghcr_token_file"
	keys+=(GHCR_TOKEN) values+=("$token")
fi

for f in "$here/systemd/pull-agent.service" "$here/systemd/pull-agent.env"; do
	[ -r "$f" ] || die 2 "cannot read $f" "run install.sh from the pull-agent checkout or release, next to its systemd/ directory"
done
if [ -e "$env_path" ] && { [ ! -f "$env_path" ] || [ ! -r "$env_path" ]; }; then
	die 2 "$env_path is not a readable file" "move it away; install.sh writes a new one"
fi

# The binary.
tmpdir=$(mktemp -d)
staged=() # files written next to their destination, renamed at the end
cleanup() {
	rm -rf "$tmpdir"
	if [ ${#staged[@]} -gt 0 ]; then rm -f "${staged[@]}"; fi
}
trap cleanup EXIT

# The binary is copied into $tmpdir (downloaded, or built there): the file
# checked below is the file installed, whatever happens to its source.
if [ -n "$url" ]; then
	command -v curl >/dev/null 2>&1 || die 5 "curl is needed for --url" "apt-get install curl, or pass --binary"
	curl -fsSL --retry 3 -o "$tmpdir/pull-agent" "$url" || die 5 "downloading $url failed" "check the URL and the network"
	name=$url
elif [ -n "$binary" ]; then
	if [ ! -f "$binary" ] || [ ! -r "$binary" ] || ! cp -- "$binary" "$tmpdir/pull-agent"; then
		die 6 "cannot read the binary $binary" "check the path and its permissions"
	fi
	name=$binary
elif [ ! -e "$here/go.mod" ] && [ -e "$here/pull-agent" ]; then
	# An extracted release: its own binary (checked below like any other).
	if [ ! -f "$here/pull-agent" ] || [ ! -r "$here/pull-agent" ] || ! cp -- "$here/pull-agent" "$tmpdir/pull-agent"; then
		die 6 "cannot read the release's binary $here/pull-agent" "extract the release tarball again"
	fi
	name="the release's binary $here/pull-agent"
elif [ -f "$here/go.mod" ] && command -v go >/dev/null 2>&1; then
	say "building pull-agent from $here"
	(cd "$here" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$(git -C "$here" describe --tags --always --dirty 2>/dev/null || echo dev)" -o "$tmpdir/pull-agent" ./cmd/pull-agent) ||
		die 6 "building pull-agent failed" "pass --binary PATH or --url URL --sha256 HEX"
	name="pull-agent built from $here"
else
	die 2 "no binary: pass --binary PATH or --url URL --sha256 HEX" "or run the install.sh of an extracted release, or inside the pull-agent checkout with Go installed"
fi
binary="$tmpdir/pull-agent"
if [ -n "$sha256" ]; then
	got=$(sha256sum "$binary" | cut -d' ' -f1)
	[ "$got" = "${sha256,,}" ] || die 5 "checksum mismatch for $name: got $got, want $sha256" "the file is corrupt or not the published build; nothing was installed"
fi
chmod 0755 "$binary"

# An ELF executable for this machine's architecture?
magic=$(head -c 4 "$binary" | od -An -tx1 | tr -d ' \n')
[ "$magic" = "7f454c46" ] || die 6 "$name is not an ELF executable" "pass the pull-agent binary for Linux"
# Architectures by the names of Go and the release tarballs.
machine=$(od -An -tu2 -j18 -N2 "$binary" | tr -d ' ')
case "$machine" in
62) bin_arch=linux/amd64 ;;
183) bin_arch=linux/arm64 ;;
*) bin_arch="ELF machine $machine" ;;
esac
case "$(uname -m)" in
x86_64) host_arch=amd64 ;;
aarch64 | arm64) host_arch=arm64 ;;
*) host_arch="" ;;
esac
if [ -n "$host_arch" ] && [ "$bin_arch" != "linux/$host_arch" ]; then
	die 6 "$name is built for another architecture: $bin_arch, and this host is linux/$host_arch ($(uname -m))" \
		"use the linux/$host_arch build: pull-agent-VERSION-linux-$host_arch.tar.gz"
fi
"$binary" version >/dev/null 2>&1 || die 6 "$name does not run ('pull-agent version' failed)" "is it a pull-agent binary for this platform?"

# The env file's new content: the current file (or the example settings),
# each key's first line replaced, its later lines dropped, keys not there
# appended. Built and compared in bash (mapfile, [[ ]] and printf are
# builtins): a value handed to grep or sed would be on a command line, and
# GHCR_TOKEN is a secret.
env_src=$env_path
[ -e "$env_path" ] || env_src="$here/systemd/pull-agent.env"
mapfile lines <"$env_src" # each line keeps its newline
env_old="" env_new=""
set_done=()
for l in "${lines[@]}"; do
	env_old+=$l
	hit=""
	for i in "${!keys[@]}"; do
		if [[ $l =~ ^[[:space:]]*"${keys[i]}"[[:space:]]*= ]]; then
			hit=$i
			break
		fi
	done
	if [ -z "$hit" ]; then
		env_new+=$l
	elif [ -z "${set_done[hit]:-}" ]; then
		env_new+="${keys[hit]}='${values[hit]}'"$'\n'
		set_done[hit]=1
	fi
done
for i in "${!keys[@]}"; do
	[ -n "${set_done[i]:-}" ] && continue
	if [ -n "$env_new" ] && [[ $env_new != *$'\n' ]]; then
		env_new+=$'\n'
	fi
	env_new+="${keys[i]}='${values[i]}'"$'\n'
done

# ---- write: stage every file next to its destination, then rename -------
changed_bin=0 changed_unit=0

# stage SRC DEST MODE: copy SRC to DEST.new unless DEST already has its
# content and MODE; 0 if staged.
stage() {
	local src=$1 dest=$2 mode=$3
	if [ -f "$dest" ] && cmp -s "$src" "$dest" && [ "$(stat -c %a "$dest")" = "${mode#0}" ]; then
		return 1
	fi
	mkdir -p "$(dirname "$dest")"
	staged+=("$dest.new")
	install -m "$mode" "$src" "$dest.new"
}

if stage "$binary" "$bin_path" 0755; then changed_bin=1; fi
if stage "$here/systemd/pull-agent.service" "$unit_path" 0644; then changed_unit=1; fi

mkdir -p "$env_dir"
chmod 0750 "$env_dir"
env_tmp=""
if [ ! -e "$env_path" ] || [ "$env_new" != "$env_old" ]; then
	# One complete file, renamed over the old one: the agent watches it and
	# must never see GHCR_USER without GHCR_TOKEN. 0600 from its creation.
	old_umask=$(umask)
	umask 077
	env_tmp=$(mktemp "$env_dir/.pull-agent.env.XXXXXX")
	staged+=("$env_tmp")
	printf '%s' "$env_new" >"$env_tmp"
	umask "$old_umask"
fi

if [ "$changed_bin" = 1 ]; then mv -f "$bin_path.new" "$bin_path"; fi
if [ "$changed_unit" = 1 ]; then mv -f "$unit_path.new" "$unit_path"; fi
if [ -n "$env_tmp" ]; then
	[ -e "$env_path" ] || say "installed the example settings at $env_path"
	mv -f "$env_tmp" "$env_path"
fi
staged=()
chmod 0600 "$env_path"
# The unit binds /root/.docker read-only into an otherwise empty /root
# (ProtectHome=tmpfs): it must exist when the service starts, or a later
# 'docker login' is not seen until a restart.
if [ ! -e "$root/root/.docker" ]; then
	mkdir -p "$root/root"
	mkdir -m 0700 "$root/root/.docker"
fi

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
