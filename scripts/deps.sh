#!/usr/bin/env bash
# Installs the Debian packages the test bed runs: dockerd (docker.io), the
# CNCF distribution registry (docker-registry) and Amazon's ECR credential
# helper (amazon-ecr-credential-helper, a real docker-credential-ecr-login for
# the credHelpers tests), and for the systemd end-to-end test and the lint
# step systemd-container, debootstrap, shellcheck and systemd-analyze, and
# strace for the install test that watches every command line install.sh
# starts, skopeo, one of the ways the mirror tests copy images, and
# prometheus for its promtool, which checks and unit-tests the alerting
# rules in deploy/prometheus (policy-rc.d below keeps its service from
# starting now; the package still enables it for the next boot).
# Nothing happens when they are already there; without root it only says
# what is missing.
set -euo pipefail

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v docker >/dev/null 2>&1 || missing+=(docker.io)
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v docker-credential-ecr-login >/dev/null 2>&1 || missing+=(amazon-ecr-credential-helper)
for tool in unshare nsenter; do
	command -v "$tool" >/dev/null 2>&1 || missing+=(util-linux)
done
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
command -v strace >/dev/null 2>&1 || missing+=(strace)
command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v systemd-nspawn >/dev/null 2>&1 || missing+=(systemd-container)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
[ -x /bin/kill ] || missing+=(procps)
if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if [ "$(id -u)" -ne 0 ]; then
	echo "deps: missing ${missing[*]}; run as root (or apt-get install ${missing[*]}); integration tests will skip" >&2
	exit 0
fi
echo "deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# Keep package scripts from starting services: the test bed starts its own.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' >"$policy"
	chmod 755 "$policy"
	created_policy=1
fi
trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT
apt-get install -y -q --no-install-recommends "${missing[@]}"
