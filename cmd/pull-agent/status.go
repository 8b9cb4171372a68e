package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"regexp"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/docker/go-units"

	"github.com/molecule-ai/pull-agent/agent/state"
	"github.com/molecule-ai/pull-agent/internal/safetext"
)

// statusTimeout is how long the agent has to answer on its socket.
const statusTimeout = time.Second

// runStatus is 'pull-agent status'.
func runStatus(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	setUsage(fs, stderr, "[--json | --quiet] [--wait [--timeout D]]", `
Asks the running agent (its status socket) what is warm; when the agent does
not answer, reads its last saved state and says how old it is.`)
	socket := fs.String("status-socket", defaultStatusSocket, "the agent's status socket")
	stateDir := fs.String("state-dir", "/var/lib/pull-agent", "the agent's state directory (state.json)")
	asJSON := fs.Bool("json", false, "print the state document (schema in the README)")
	quiet := fs.Bool("quiet", false, "print nothing; exit code only")
	wait := fs.Bool("wait", false, "block until every image is warm")
	timeout := fs.Duration("timeout", 30*time.Minute, "with --wait: give up after this long (exit 1)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *asJSON && *quiet {
		return usageErr(errors.New("status: --json and --quiet exclude each other"))
	}
	if *timeout <= 0 {
		return usageErr(fmt.Errorf("--timeout %s: must be positive", *timeout))
	}
	statePath := filepath.Join(*stateDir, state.StateFileName)
	color := isTerminal(stdout) && getenv("NO_COLOR") == "" && getenv("TERM") != "dumb"

	client := state.NewStatusClient(*socket, statusTimeout)
	if *wait {
		doc, err := state.WaitHealthy(ctx, client.Status, *timeout)
		if err == nil && doc.Healthy() {
			return report(doc, nil, statePath, *asJSON, *quiet, color, stdout)
		}
		rep := report(doc, err, statePath, *asJSON, *quiet, color, stdout)
		if err == nil {
			return &exitError{code: statusDegraded, err: fmt.Errorf("not every image warm after %s", *timeout)}
		}
		return rep
	}
	doc, err := client.Status(ctx)
	return report(doc, err, statePath, *asJSON, *quiet, color, stdout)
}

// report prints the live document, or, when the agent did not answer
// (liveErr), the saved one, and returns the exit code.
func report(doc state.StateDoc, liveErr error, statePath string, asJSON, quiet, color bool, out io.Writer) error {
	live := liveErr == nil
	if !live {
		var err error
		doc, err = state.ReadStateFile(statePath)
		if err != nil {
			msg := fmt.Sprintf("agent not running or unreachable (%v); no saved state: %v", liveErr, err)
			if !errors.Is(err, state.ErrNoState) {
				msg = fmt.Sprintf("agent not running or unreachable (%v); saved state unusable: %v", liveErr, err)
			}
			return &exitError{code: statusNoState, err: errors.New(msg)}
		}
	}
	if !quiet {
		if asJSON {
			enc := json.NewEncoder(out)
			enc.SetIndent("", "  ")
			if err := enc.Encode(doc); err != nil {
				return err
			}
		} else {
			printHuman(out, doc, live, liveErr, color, time.Now())
		}
	}
	switch {
	case !live:
		return &exitError{code: statusDown}
	case doc.Healthy():
		return nil
	default:
		return &exitError{code: statusDegraded}
	}
}

func printHuman(w io.Writer, doc state.StateDoc, live bool, liveErr error, color bool, now time.Time) {
	paint := func(code, s string) string {
		if !color {
			return s
		}
		return "\x1b[" + code + "m" + s + "\x1b[0m"
	}
	a := doc.Agent
	summary := "running"
	switch {
	case !live:
		summary = paint("31", fmt.Sprintf("NOT RUNNING (%s); saved state from %s ago", plain(fmt.Sprint(liveErr)), age(now, doc.WrittenAt)))
	case doc.Healthy():
		summary = paint("32", "running, all warm")
	case a.Flip != nil:
		summary = paint("33", "running, flip scheduled")
	default:
		summary = paint("33", "running, degraded")
	}
	fmt.Fprintf(w, "agent:          %s (pid %d, version %s, up since %s)\n", summary, a.PID, plain(a.Version), a.StartedAt.Format(time.RFC3339))
	fmt.Fprintf(w, "prefix:         %s\n", dash(plain(a.Prefix)))
	if len(a.Fallbacks) > 0 {
		fmt.Fprintf(w, "fallbacks:      %s\n", plain(strings.Join(a.Fallbacks, ", ")))
	}
	fmt.Fprintf(w, "images warm:    %d/%d\n", a.Warm, a.Total)
	if f := a.Flip; f != nil {
		fmt.Fprintf(w, "flip:           to %s scheduled at %s (in %s; MOLECULE_FLIP_SPREAD)\n", plain(f.To), f.At.Format(time.RFC3339), f.At.Sub(now).Round(time.Second))
	}
	for _, h := range doc.Hosts {
		line := plain(h.CredentialSource)
		if h.CooldownUntil != nil && h.CooldownUntil.After(now) {
			line += fmt.Sprintf("; rate-limited, backing off until %s", h.CooldownUntil.Format(time.RFC3339))
		}
		fmt.Fprintf(w, "credentials:    %s: %s\n", plain(h.Host), dash(line))
	}
	if a.LastReconcile != nil {
		fmt.Fprintf(w, "last reconcile: %s ago\n", age(now, *a.LastReconcile))
	} else {
		fmt.Fprintf(w, "last reconcile: never\n")
	}
	if a.NextRefresh != nil {
		fmt.Fprintf(w, "next refresh:   in %s\n", a.NextRefresh.Sub(now).Round(time.Second))
	}
	if !a.DockerUp {
		fmt.Fprintf(w, "docker:         %s\n", paint("31", "unreachable"))
	}
	if a.ConfigError != "" {
		fmt.Fprintf(w, "config error:   %s\n", paint("31", plain(a.ConfigError)))
	}
	fmt.Fprintln(w)
	printImages(w, doc, paint, now)
}

// printImages is status's table of images.
func printImages(w io.Writer, doc state.StateDoc, paint func(code, s string) string, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RUNTIME\tSTATE\tSOURCE\tDIGEST\tSIZE\tAGE\tERROR")
	for _, i := range doc.Images {
		st := plain(i.State)
		if i.Progress != nil && i.Progress.TotalBytes > 0 {
			st += fmt.Sprintf(" %d%%", 100*i.Progress.Bytes/i.Progress.TotalBytes)
		}
		switch i.State {
		case state.Warm:
			st = paint("32", st)
		case state.Failed, state.Stale:
			st = paint("31", st)
		}
		dg := safetext.ShortDigest(i.LocalDigest)
		size := "-"
		if i.SizeBytes > 0 {
			size = units.HumanSize(float64(i.SizeBytes))
		}
		ago := "-"
		if i.LastSuccess != nil {
			ago = age(now, *i.LastSuccess)
		}
		errText := "-"
		if i.LastError != "" {
			errText = "[" + i.LastErrorClass + "] " + briefError(i.LastError, i.Image)
			if i.FromFallback() {
				errText = "primary: " + errText
			}
			errText = safetext.Line(errText, 120)
		}
		source := dash(plain(i.Source))
		if i.FromFallback() {
			source = paint("33", source)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", plain(i.Runtime), st, source, dg, size, ago, errText)
	}
	tw.Flush()
}

func age(now, t time.Time) string {
	d := now.Sub(t)
	switch {
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < time.Hour:
		return d.Round(time.Minute).String()
	default:
		return d.Round(time.Hour).String()
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// plain is text from a state document as printed on a terminal: one line,
// no escape sequences (the document is sanitised when read; this holds
// for whatever reaches printHuman).
func plain(s string) string { return safetext.Line(s, 0) }

// daemonBoilerplate is what the daemon wraps a registry's words in.
var daemonBoilerplate = regexp.MustCompile(`Error response from daemon: |pull access denied for [^,]+, repository does not exist or may require 'docker login': `)

// briefError is an image's error for the table, where the row already
// names the image: without the agent's "pulling <image>: " and the
// daemon's boilerplate, so that the registry's own words fit the column.
func briefError(e, image string) string {
	e = strings.TrimPrefix(e, "pulling "+image+": ")
	return daemonBoilerplate.ReplaceAllString(e, "")
}
