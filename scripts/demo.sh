#!/usr/bin/env bash
# The demo: a sandbox Docker daemon and two seeded registries, pull-agent
# pulling the nine images into it, then what the daemon holds. Set KEEP=1 to
# leave the sandbox running (stop it with 'make testbed-down TESTBED_DIR=…').
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${TESTBED_DIR:-/tmp/pull-agent-demo}
keep=${KEEP:-0}
ctl=bin/testbedctl

"$ctl" down --dir "$dir" >/dev/null
cleanup() {
	if [ "$keep" = 1 ]; then
		echo
		echo "sandbox kept: . $dir/testbed.env; bin/pull-agent images --env-file $dir/pull-agent.env"
	else
		"$ctl" down --dir "$dir"
	fi
}
trap cleanup EXIT

echo "== starting the sandbox (dockerd + two registries) in $dir"
# Images big enough for the progress display to show something: a shared
# 32 MiB base layer and 8 MiB of each image's own.
"$ctl" up --dir "$dir" --base-size $((32 << 20)) --layer-size $((8 << 20))
# shellcheck disable=SC1091
. "$dir/testbed.env"

echo
echo "== pull-agent pull --env-file $dir/pull-agent.env"
cat "$dir/pull-agent.env"
bin/pull-agent pull --env-file "$dir/pull-agent.env"

echo
echo "== pull-agent images"
bin/pull-agent images --env-file "$dir/pull-agent.env"

echo
echo "== docker images (the sandbox daemon, $DOCKER_HOST)"
docker -H "$DOCKER_HOST" images --format 'table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.Size}}' |
	{
		read -r header
		echo "$header"
		sort
	}
