# pull-agent: see README.md.
GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
TESTBED_DIR ?= /tmp/pull-agent-testbed
# A count, not a duration: with a duration, Go 1.26's fuzz coordinator can
# report "context deadline exceeded" as a failure at the deadline
# (golang/go#75804, fixed in Go 1.27). 3000 executions take a few seconds.
FUZZTIME  ?= 3000x

.PHONY: all build testbedctl deps trixie-rootfs lint unit test test-go test-rules test-engines fuzz chaos soak bench fleet baseline demo testbed-up testbed-down clean

all: build

## build: static bin/pull-agent, version stamped
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/pull-agent ./cmd/pull-agent

testbedctl:
	$(GO) build -o bin/testbedctl ./internal/testbed/testbedctl

## deps: install the Debian packages the test bed needs (as root)
deps:
	scripts/deps.sh

## dist: the release in DISTDIR: static linux/amd64 and linux/arm64 builds,
## each in pull-agent-VERSION-linux-ARCH.tar.gz, and SHA256SUMS; the same
## commit gives the same bytes (make dist VERSION=1.2.3)
DISTDIR ?= dist
.PHONY: dist
dist:
	scripts/dist.sh '$(VERSION)' '$(DISTDIR)'

## unit: the fast tier for the inner loop: every test that needs no root,
## no dockerd and no network, with -race (go test -short: integration
## tests skip, CI or not); under a minute, as any user
## (scripts/unit-as-nobody.sh, run as root, runs it as nobody without dockerd)
unit:
	AWS_EC2_METADATA_DISABLED=true $(GO) test -short -race -count=1 -timeout 5m ./...

## lint: shellcheck the scripts, systemd-analyze verify the unit
lint: build
	shellcheck install.sh scripts/*.sh .ci/run
	@tmp=$$(mktemp -d) && \
	sed 's#/usr/local/bin/pull-agent#$(CURDIR)/bin/pull-agent#g' systemd/pull-agent.service >$$tmp/pull-agent.service && \
	out=$$(systemd-analyze verify $$tmp/pull-agent.service 2>&1); rc=$$?; rm -rf $$tmp; \
	if [ $$rc -ne 0 ] || [ -n "$$out" ]; then echo "$$out" >&2; exit 1; fi; echo "systemd-analyze verify: clean"
	systemd-analyze security --offline=yes systemd/pull-agent.service | tail -1

## test: everything CI runs: vet, the alerting rules (test-rules), unit and
## integration tests (real dockerd and registries), a short run of every
## fuzz target, a static build check,
## then the Docker-facing suites again on Debian 13's Docker 26.1.5 in both
## image stores (test-engines). Not side by side with test-go: at a load
## of three race-built suites on two cores, its timing tests measure the
## machine rather than the agent.
test: deps build lint trixie-rootfs
	@if ldd bin/pull-agent >/dev/null 2>&1; then echo "bin/pull-agent is not static" >&2; exit 1; fi
	bin/pull-agent version
	$(GO) vet ./...
	$(MAKE) test-rules
	$(MAKE) fuzz
	$(MAKE) test-go
	$(MAKE) test-engines

## test-rules: promtool checks the Prometheus alerting rules and runs their
## unit tests (promtool comes with Debian's prometheus package: make deps)
RULES_DIR := deploy/prometheus
test-rules: deps
	promtool check rules $(RULES_DIR)/pull-agent.rules.yml
	cd $(RULES_DIR) && promtool test rules pull-agent.rules.test.yml

## test-go: every package's tests on Debian 12's Docker 20.10 (vfs)
test-go:
	@start=$$(date +%s); AWS_EC2_METADATA_DISABLED=true $(GO) test -race -count=1 -timeout 15m ./...; \
	rc=$$?; echo "debian12 (all packages): $$(($$(date +%s) - start)) s"; exit $$rc

## test-engines: the suites that talk to Docker (pull and its verification,
## every auth path, disk guard, run, flips, refresh cost, stall and extract
## timeouts, status, check, aliases, prune) on Debian 13's docker.io 26.1.5
## with its containerd 1.7, classic image store (overlay2) and containerd
## image store, the two engines in parallel. The trixie tree is built once
## (scripts/trixie-rootfs.sh) and cached.
TRIXIE_ENGINES := trixie-classic trixie-containerd
ENGINE_PKGS    := ./internal/testbed ./agent ./agent/pull ./cmd/pull-agent
test-engines: deps trixie-rootfs
	$(MAKE) -j2 --output-sync=target $(addprefix test-engine-,$(TRIXIE_ENGINES))

test-engine-%:
	@start=$$(date +%s); PULL_AGENT_TEST_ENGINE=$* AWS_EC2_METADATA_DISABLED=true \
	$(GO) test -race -count=1 -p 1 -timeout 20m $(ENGINE_PKGS); \
	rc=$$?; echo "$* ($(ENGINE_PKGS)): $$(($$(date +%s) - start)) s"; exit $$rc

## trixie-rootfs: debootstrap, once, the Debian 13 tree the engine matrix
## runs Docker 26.1.5 from (as root; skipped with a note otherwise)
trixie-rootfs: deps
	@if [ "$$(id -u)" -eq 0 ]; then scripts/trixie-rootfs.sh; \
	else echo "trixie-rootfs: not root; the engine matrix will skip (or fail under CI)" >&2; fi

## fuzz: each fuzz target for FUZZTIME (a count such as 3000x, or a
## duration such as 5m for a long run)
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParseEnvFile$$' -fuzztime $(FUZZTIME) ./agent/config
	$(GO) test -run '^$$' -fuzz '^FuzzParsePrefix$$' -fuzztime $(FUZZTIME) ./agent/config
	$(GO) test -run '^$$' -fuzz '^FuzzParseRuntimesAndPins$$' -fuzztime $(FUZZTIME) ./agent/config
	$(GO) test -run '^$$' -fuzz '^FuzzParseFallbacks$$' -fuzztime $(FUZZTIME) ./agent/config
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeStream$$' -fuzztime $(FUZZTIME) ./agent/engine
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeState$$' -fuzztime $(FUZZTIME) ./agent/state
	$(GO) test -run '^$$' -fuzz '^FuzzHelperOutput$$' -fuzztime $(FUZZTIME) ./auth
	$(GO) test -run '^$$' -fuzz '^FuzzParseDockerConfig$$' -fuzztime $(FUZZTIME) ./auth
	$(GO) test -run '^$$' -fuzz '^FuzzLine$$' -fuzztime $(FUZZTIME) ./internal/safetext
	$(GO) test -run '^$$' -fuzz '^FuzzRenderStatus$$' -fuzztime $(FUZZTIME) ./cmd/pull-agent
	$(GO) test -run '^$$' -fuzz '^FuzzRenderCheck$$' -fuzztime $(FUZZTIME) ./cmd/pull-agent

## chaos: every row of the fault matrix against the real bed; writes the
## results into docs/RELIABILITY.md (the fast rows also run in 'make test')
chaos: deps build
	AWS_EC2_METADATA_DISABLED=true $(GO) test -count=1 -timeout 45m -run '^TestChaos$$' ./internal/chaos \
		-v -chaos.all -chaos.report $(CURDIR)/docs/RELIABILITY.md

## soak: the agent under random prefix flips, faults and credential
## rotations for DURATION; writes the numbers into docs/RELIABILITY.md
DURATION ?= 10m
SOAK_TIMEOUT ?= 3h
soak: deps build
	AWS_EC2_METADATA_DISABLED=true $(GO) test -count=1 -timeout $(SOAK_TIMEOUT) -run '^TestSoak$$' ./internal/chaos \
		-v -soak.duration $(DURATION) -chaos.report $(CURDIR)/docs/RELIABILITY.md

## bench: pull-agent against a docker pull loop, xargs -P 3 and itself, on a
## shaped link; writes its profile's part of docs/BENCHMARKS.md and
## docs/benchmarks.json, keeping the other profiles'.
##   PROFILE=wan (default): toxiproxy, 20 ms each way, 200 Mbit/s per connection, vfs
##   PROFILE=lan: unshaped
##   PROFILE=ec2: one link of LINK_MBIT (400) Mbit/s shared by every connection
##     (tbf on a veth pair into a network namespace holding the registry) and
##     RTT_MS (20) of round trip; two workloads of nine buildx images (SHAPES=A,B)
##     on Docker 20.10 with overlay2, then on Docker 26's containerd store (from
##     make trixie-rootfs); bin/pull-agent against bin/pull-agent-baseline, built
##     from BASELINE_REF, and the shell loops; RUNS (3) runs each; draws
##     docs/bench-ec2.png. About 16 min; RUNS=1 SHAPES=B for a smoke run.
PROFILE  ?= wan
RUNS     ?= 3
LINK_MBIT ?= 400
RTT_MS   ?= 20
SHAPES   ?= A,B
BASELINE_REF ?= 8c7c99d
BENCH_DEPS_ec2  := baseline trixie-rootfs
BENCH_FLAGS_ec2 := --link-mbit $(LINK_MBIT) --rtt-ms $(RTT_MS) --shapes $(SHAPES) \
	--baseline-bin bin/pull-agent-baseline --baseline-ref $(BASELINE_REF)
bench: deps build $(BENCH_DEPS_$(PROFILE))
	$(GO) run ./bench/harness --profile $(PROFILE) --runs $(RUNS) $(BENCH_FLAGS_$(PROFILE))

## fleet: HOSTS (8) hosts on this machine, each a Docker daemon (vfs) with
## bin/pull-agent, against one origin behind a shared link of FLEET_MBIT
## (200) Mbit/s and a front door that answers 429 above FLEET_RATE (15)
## manifest and blob GETs a second (burst FLEET_BURST, 60); four
## scenarios (at once or with MOLECULE_FLIP_SPREAD=FLEET_SPREAD, straight
## to the origin or through a pull-through cache), each from cold and at
## a flip; writes docs/fleet.json and docs/fleet-origin.png, prints the
## table of docs/FLEET.md. Not part of 'make test'; about 7 min at 8 hosts.
HOSTS        ?= 8
FLEET_MBIT   ?= 200
FLEET_RATE   ?= 15
FLEET_BURST  ?= 60
FLEET_SPREAD ?= 120s
fleet: deps build
	$(GO) run ./bench/fleet --hosts $(HOSTS) --bin bin/pull-agent --link-mbit $(FLEET_MBIT) \
		--rate $(FLEET_RATE) --burst $(FLEET_BURST) --spread $(FLEET_SPREAD)

## baseline: bin/pull-agent-baseline, pull-agent as of BASELINE_REF, built
## from a git archive of that commit in a temporary directory
baseline:
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	git archive '$(BASELINE_REF)' | tar -x -C "$$tmp" && \
	(cd "$$tmp" && CGO_ENABLED=0 $(GO) build -trimpath -o '$(CURDIR)/bin/pull-agent-baseline' ./cmd/pull-agent) && \
	echo "bin/pull-agent-baseline: pull-agent at $(BASELINE_REF)"

## demo: sandbox daemon + registries, pull the nine images, show them (KEEP=1 keeps it)
demo: deps build testbedctl
	scripts/demo.sh

## testbed-up / testbed-down: a bed that outlives the command, in TESTBED_DIR
testbed-up: deps testbedctl
	bin/testbedctl up --dir $(TESTBED_DIR)

testbed-down: testbedctl
	bin/testbedctl down --dir $(TESTBED_DIR)

clean:
	rm -rf bin
