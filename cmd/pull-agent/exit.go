package main

import (
	"flag"
	"fmt"
	"io"
	"strings"
)

// Exit codes: the one table of every command. 0 is success and 64
// (EX_USAGE in sysexits.h) a usage error, whatever the command, so that a
// script can tell "called wrongly" from an answer; 1 to 3 are each command's
// answers. exitCodes says which command uses which, and every help text is
// printed from it.
const (
	exitOK    = 0
	exitUsage = 64 // bad flags, a refused configuration or env file: nothing was done

	exitFailed = 1 // pull: an image failed or the daemon is unreachable; images, run: the command failed

	statusDegraded = 1 // an image not warm (failed, stale, pending, pulling) or the config refused
	statusDown     = 2 // the agent is not running or cannot be reached (saved state shown if any)
	statusNoState  = 3 // no state at all

	checkFailed      = 1 // an image missing, a host refused, or the digests differ
	checkUnreachable = 2 // the Docker daemon cannot be reached
)

// exitMeaning is one row of a command's exit-code table.
type exitMeaning struct {
	code  int
	short string // in the overview of 'pull-agent help'
	long  string // in 'pull-agent COMMAND -h'
}

// exitCodes is cmd's exit-code table; nil for a command without one.
func exitCodes(cmd string) []exitMeaning {
	usage := exitMeaning{exitUsage, "usage", "usage error: a bad flag, or the configuration or env file refused"}
	switch cmd {
	case "images":
		return []exitMeaning{
			{exitOK, "listed", "the images listed"},
			{exitFailed, "failed", "the list could not be written"},
			usage,
		}
	case "pull":
		return []exitMeaning{
			{exitOK, "every image present and verified", "every image present and verified"},
			{exitFailed, "an image failed or Docker unreachable", "an image failed (each is named with its error class), or the Docker daemon cannot be reached"},
			usage,
		}
	case "run":
		return []exitMeaning{
			{exitOK, "stopped by SIGTERM or SIGINT", "stopped by SIGTERM or SIGINT"},
			{exitFailed, "failed", "the agent could not start or failed (state directory, status socket, file watching)"},
			{exitUsage, "usage", "usage error: a bad flag (a refused env file does not stop the agent, which waits for a good one)"},
		}
	case "status":
		return []exitMeaning{
			{exitOK, "all warm", "every image warm and the configuration valid"},
			{statusDegraded, "degraded", "degraded: an image failed, stale, pending or still pulling, or the last configuration load failed (with --wait: not all warm by the timeout)"},
			{statusDown, "agent down", "the agent is not running or cannot be reached (saved state shown if any)"},
			{statusNoState, "no state", "no state at all (nothing saved, or the saved file is unusable)"},
			{exitUsage, "usage", "usage error: a bad flag"},
		}
	case "check":
		return []exitMeaning{
			{exitOK, "ok", "every image present with the platform, every host authenticated (with --compare: every digest the same)"},
			{checkFailed, "not ok", "not ok: an image missing or without the platform, a host refused, or (with --compare) a digest differs"},
			{checkUnreachable, "Docker unreachable", "the Docker daemon cannot be reached"},
			usage,
		}
	}
	return nil
}

// commands are the commands with an exit-code table, in the order of the
// usage text.
func commands() []string { return []string{"images", "pull", "run", "status", "check"} }

// exitOverview is the exit codes of every command, for the usage text.
func exitOverview() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Exit codes (%d is a usage error in every command: a bad flag, or the\nconfiguration or env file refused):\n", exitUsage)
	for _, cmd := range commands() {
		var parts []string
		for _, m := range exitCodes(cmd) {
			if m.code != exitUsage {
				parts = append(parts, fmt.Sprintf("%d %s", m.code, m.short))
			}
		}
		fmt.Fprintf(&b, "  %-8s %s\n", cmd, strings.Join(parts, ", "))
	}
	return b.String()
}

// setUsage makes fs's -h print the command's synopsis, what it does, its
// exit codes and its flags.
func setUsage(fs *flag.FlagSet, w io.Writer, synopsis, about string) {
	fs.Usage = func() {
		fmt.Fprintf(w, "Usage: pull-agent %s %s\n\n%s\n\nExit codes:\n", fs.Name(), synopsis, strings.TrimSpace(about))
		for _, m := range exitCodes(fs.Name()) {
			fmt.Fprintf(w, "  %-3d %s\n", m.code, wrap(m.long, 72, "      "))
		}
		fmt.Fprintf(w, "\nFlags:\n")
		fs.PrintDefaults()
	}
}

// wrap breaks s into lines of at most width bytes at spaces, indenting
// every line but the first.
func wrap(s string, width int, indent string) string {
	var b strings.Builder
	n := 0
	for i, word := range strings.Fields(s) {
		switch {
		case i == 0:
		case n+1+len(word) > width:
			b.WriteString("\n" + indent)
			n = 0
		default:
			b.WriteByte(' ')
			n++
		}
		b.WriteString(word)
		n += len(word)
	}
	return b.String()
}

// exitError carries an exit code; a nil err means the command already said
// what went wrong.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

// usageErr is err as a usage error: exit 64 whatever the command.
func usageErr(err error) error { return &exitError{code: exitUsage, err: err} }
