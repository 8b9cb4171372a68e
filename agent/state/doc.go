// Package state owns the agent's state document (state.json and the
// status socket's answer): its types and file format, atomic writes, the
// state directory and its lock, and the client 'run' and 'status' use to
// ask a running agent.
package state
