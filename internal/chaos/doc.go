// Package chaos holds pull-agent's fault matrix and soak run (see
// docs/RELIABILITY.md). Its tests start the real agent binary against the
// test bed (a real Docker daemon, real registries, toxiproxy and a fault
// injecting HTTP proxy), inject one fault per row, remove it, and check
// the same invariants after every row: the agent is alive, converges,
// removed no warm image, left a state file that parses, printed no secret
// and leaked no goroutine or file descriptor.
//
//	go test ./internal/chaos                      # the fast rows (make test)
//	go test ./internal/chaos -chaos.all           # every row (make chaos)
//	go test ./internal/chaos -run Soak -soak.duration 10m   (make soak)
package chaos
