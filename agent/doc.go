// Package agent is the scheduler: it watches the env file, keeps the
// configured image set warm with the puller (retries, cooldowns, refresh,
// alias tags, pruning), and publishes what it knows as the state document,
// on the status socket, to Prometheus and to systemd.
package agent
