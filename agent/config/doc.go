// Package config owns what the agent is told to do: the env file and its
// parser, the configuration layered over the process environment, the
// image set it resolves to, and where and how to reach the Docker daemon.
package config
