// Command pull-agent keeps the workspace-template images warm in the local
// Docker daemon, with the right credentials for each registry.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// version is stamped at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		var ee *exitError
		if errors.As(err, &ee) {
			if ee.err != nil {
				fmt.Fprintln(os.Stderr, journalText(os.Getenv, os.Stderr, "pull-agent: "+terminalText(ee.err.Error())))
			}
			os.Exit(ee.code)
		}
		fmt.Fprintln(os.Stderr, journalText(os.Getenv, os.Stderr, "pull-agent: "+terminalText(err.Error())))
		os.Exit(exitFailed)
	}
}
