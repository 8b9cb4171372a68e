// Package engine owns the agent's side of the Docker Engine API: the small
// Engine interface the agent needs, its Docker SDK adapter (the one place
// the SDK is imported) and the decoder of the daemon's pull stream.
package engine
