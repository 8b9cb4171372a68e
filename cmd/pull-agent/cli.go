package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/term"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/agent/pull"
	"github.com/molecule-ai/pull-agent/auth"
	"github.com/molecule-ai/pull-agent/internal/safetext"
)

// usage is the overview 'pull-agent help' prints.
func usage() string {
	return `pull-agent keeps the workspace-template images warm in the local Docker daemon.

Usage:
  pull-agent images  [--env-file F] [--json]              list the images and where they come from
  pull-agent pull    [--env-file F] [--concurrency N] [--quiet]
                                                          pull and verify every image once
  pull-agent run     [--env-file F] [--refresh-interval D] [flags]
                                                          keep every image warm: watch the env file,
                                                          pull, refresh, retry (the systemd service)
  pull-agent status  [--json | --quiet] [--wait [--timeout D]]
                                                          what is warm, what is not and why
  pull-agent check   [--prefix P] [--compare Q] [--json]
                                                          is every image there and can this host
                                                          authenticate? mirror parity before a flip
  pull-agent version                                      print the version

` + exitOverview() + `
Run 'pull-agent COMMAND -h' for a command's flags and exit codes.
`
}

// run is the whole program; main only wires it to the process.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage())
		return usageErr(errors.New("no command given"))
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "version", "--version":
		fmt.Fprintf(stdout, "pull-agent %s (%s %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return nil
	case "images":
		return runImages(rest, getenv, stdout, stderr)
	case "pull":
		return runPull(ctx, rest, getenv, stdout, stderr)
	case "run":
		return runAgent(ctx, rest, getenv, stderr)
	case "status":
		return runStatus(ctx, rest, getenv, stdout, stderr)
	case "check":
		return runCheck(ctx, rest, getenv, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage())
		return nil
	default:
		fmt.Fprint(stderr, usage())
		return usageErr(fmt.Errorf("unknown command %q", cmd))
	}
}

// common holds the flags every command that reads the configuration has.
type common struct {
	envFile   string
	stateDir  string
	logLevel  string
	logFormat string
	// helperTimeout bounds each credential helper run.
	helperTimeout time.Duration
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.envFile, "env-file", config.DefaultEnvFile, "env file with MOLECULE_IMAGE_REGISTRY and the other settings")
	fs.StringVar(&c.stateDir, "state-dir", "/var/lib/pull-agent", "state directory (the ECR token cache lives here)")
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "text", "log format: text or json")
	fs.DurationVar(&c.helperTimeout, "helper-timeout", auth.DefaultHelperTimeout, "a credential helper that has not answered after this long is killed, and an ECR token fetch stopped (the pull is retried)")
}

// parseFlags parses args; -h exits 0, a bad flag or a stray argument is a
// usage error.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return &exitError{code: exitOK}
		}
		return usageErr(err)
	}
	if fs.NArg() > 0 {
		return usageErr(fmt.Errorf("%s: unexpected argument %q", fs.Name(), fs.Arg(0)))
	}
	return nil
}

// logger builds the logger of --log-level and --log-format on stderr. When
// stderr is the journal (onJournal), each line starts with its priority and
// carries no time of its own; elsewhere the lines are slog's as they are.
func (c *common) logger(stderr io.Writer, getenv func(string) string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.logLevel)); err != nil {
		return nil, usageErr(fmt.Errorf("--log-level %q: use debug, info, warn or error", c.logLevel))
	}
	switch {
	case c.logFormat != "text" && c.logFormat != "json":
		return nil, usageErr(fmt.Errorf("--log-format %q: use text or json", c.logFormat))
	case onJournal(getenv, stderr):
		return slog.New(newJournalHandler(stderr, c.logFormat, lvl)), nil
	case c.logFormat == "json":
		return slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: lvl})), nil
	default:
		return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl})), nil
	}
}

// loadConfig reads the env file and builds the configuration. A missing
// file is fine at the default path (the defaults and the process
// environment apply) and an error when named explicitly.
func (c *common) loadConfig(fs *flag.FlagSet, getenv func(string) string, log *slog.Logger) (config.Config, error) {
	explicit := false
	fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "env-file" })
	vars, err := config.ReadEnvFile(c.envFile)
	switch {
	case err == nil:
	case config.IsNotExist(err) && !explicit:
		log.Debug("env file absent; using the process environment and defaults", "env_file", c.envFile)
	default:
		return config.Config{}, usageErr(err)
	}
	cfg, err := config.LoadConfig(c.envFile, vars, getenv)
	if err != nil {
		return config.Config{}, usageErr(fmt.Errorf("configuration refused:\n%w", err))
	}
	config.WarnEnvFileMode(log, c.envFile, vars)
	config.WarnUnusedKeys(log, c.envFile, vars)
	return cfg, nil
}

// authorizer builds the credential selection for cfg.
func (c *common) authorizer(cfg config.Config, getenv func(string) string, log *slog.Logger) (*auth.Selector, error) {
	return auth.NewSelector(auth.Options{
		GHCRUser:        cfg.GHCRUser,
		GHCRToken:       cfg.GHCRToken,
		DockerConfigDir: auth.DockerConfigDir(getenv),
		ECRCacheDir:     filepath.Join(c.stateDir, "ecr-cache"),
		HelperTimeout:   c.helperTimeout,
		Logger:          log.With("component", "auth"),
	})
}

// prepared is what every command that works on the image set starts from.
type prepared struct {
	log    *slog.Logger
	cfg    config.Config
	images []config.Image
	sel    *auth.Selector
}

// prepare builds the logger, loads the configuration and resolves the image
// set and the credential selector.
func (c *common) prepare(fs *flag.FlagSet, getenv func(string) string, stderr io.Writer) (prepared, error) {
	var p prepared
	var err error
	if p.log, err = c.logger(stderr, getenv); err != nil {
		return p, err
	}
	if p.cfg, err = c.loadConfig(fs, getenv, p.log); err != nil {
		return p, err
	}
	if p.images, err = p.cfg.Images(); err != nil {
		return p, usageErr(fmt.Errorf("configuration refused:\n%w", err))
	}
	auth.RouteECRLogs(p.log)
	p.sel, err = c.authorizer(p.cfg, getenv, p.log)
	return p, err
}

type imageRow struct {
	Runtime string `json:"runtime"`
	Image   string `json:"image"`
	Host    string `json:"host"`
	Auth    string `json:"auth"`
	Pinned  string `json:"pinned_digest,omitempty"`
}

func runImages(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("images", flag.ContinueOnError)
	fs.SetOutput(stderr)
	setUsage(fs, stderr, "[--env-file F] [--json]", `
Lists the images of the configuration (the env file over the process
environment), their registry hosts and the credentials each host would get.
Nothing is pulled and the Docker daemon is not asked.`)
	var c common
	c.register(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	env, err := c.prepare(fs, getenv, stderr)
	if err != nil {
		return err
	}
	cfg, images, sel := env.cfg, env.images, env.sel
	rows := make([]imageRow, 0, len(images))
	for _, img := range images {
		rows = append(rows, imageRow{Runtime: img.Runtime, Image: img.Ref, Host: img.Host(), Auth: string(sel.Describe(img.Host())), Pinned: img.Pin.String()})
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			Prefix   string     `json:"prefix"`
			Platform string     `json:"platform,omitempty"`
			Images   []imageRow `json:"images"`
		}{cfg.Prefix, cfg.Platform, rows})
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RUNTIME\tIMAGE\tHOST\tAUTH")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n",
			safetext.Line(r.Runtime, maxLineRunes), safetext.Line(r.Image, maxLineRunes),
			safetext.Line(r.Host, maxLineRunes), safetext.Line(r.Auth, maxLineRunes))
	}
	return tw.Flush()
}

func runPull(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pull", flag.ContinueOnError)
	fs.SetOutput(stderr)
	setUsage(fs, stderr, "[--env-file F] [--concurrency N] [--quiet]", `
Pulls every image of the configuration once and verifies that the daemon
holds the digest the registry served. One failed image never stops the
others.`)
	var c common
	c.register(fs)
	concurrency := fs.Int("concurrency", pull.DefaultConcurrency, "how many images to pull at once")
	quiet := fs.Bool("quiet", false, "no progress output; failures are still printed to stderr")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *concurrency < 1 {
		return usageErr(fmt.Errorf("--concurrency %d: must be 1 or more", *concurrency))
	}
	env, err := c.prepare(fs, getenv, stderr)
	if err != nil {
		return err
	}
	log, cfg, images, sel := env.log, env.cfg, env.images, env.sel
	engine, err := engine.NewDockerEngine(cfg.DockerEndpoint())
	if err != nil {
		return usageErr(err)
	}
	defer engine.Close()
	config.WarnDockerSocketOwner(log, cfg.DockerHost)
	if err := engine.Ping(ctx); err != nil {
		return &exitError{code: exitFailed, err: fmt.Errorf("no image can be pulled: %w", err)}
	}
	puller, err := pull.NewPuller(engine, sel, log, pull.OptionsFor(cfg, *concurrency, pull.DefaultPullTimeouts()))
	if err != nil {
		return err
	}

	var obs pull.Observer = pull.NopObserver{}
	var display *ttyDisplay
	switch {
	case *quiet:
	case isTerminal(stdout) && getenv("TERM") != "dumb":
		display = newTTYDisplay(stdout, images, getenv("NO_COLOR") == "")
		obs = display
	default:
		obs = logObserver{log: log.With("component", "pull")}
	}
	results := puller.PullAll(ctx, images, obs)
	if display != nil {
		display.Stop()
	}
	if len(cfg.Fallbacks) > 0 {
		var fobs pull.Observer = pull.NopObserver{}
		if !*quiet {
			fobs = logObserver{log: log.With("component", "pull")}
		}
		pullFallbacks(ctx, puller, engine, cfg.Fallbacks, results, fobs, *quiet, stdout)
	}
	return summarize(results, *quiet, stdout, stderr)
}

// pullFallbacks serves from the fallback prefixes each image that failed
// for a reason another registry cures and that the daemon does not hold
// under its name (a one-shot pull has no retries to wait for), and
// replaces its result with the fallback's.
func pullFallbacks(ctx context.Context, p *pull.Puller, e engine.Engine, prefixes []string, results []pull.PullResult, obs pull.Observer, quiet bool, stdout io.Writer) {
	for i, r := range results {
		if r.Err == nil || !pull.FallbackCures(pull.ClassOf(r.Err), pull.FallbackAttempts) {
			continue
		}
		if r.Image.Pin == "" {
			if _, err := e.ImageInspect(ctx, r.Image.Ref); !errors.Is(err, engine.ErrImageNotFound) {
				continue // held from the primary: never switched
			}
		}
		fb := p.PullFallback(ctx, r.Image, prefixes, obs)
		if fb.Err != nil {
			results[i].Err = fmt.Errorf("%w; %s", r.Err, safetext.Line(fb.Err.Error(), maxLineRunes))
			continue
		}
		if !quiet {
			fmt.Fprintf(stdout, "%s: the primary refused it (%s); served from fallback %s as %s\n", r.Image.Runtime, pull.ClassOf(r.Err), plain(fb.Prefix), plain(fb.Image.Ref))
		}
		fb.PullResult.Image = r.Image
		results[i] = fb.PullResult
	}
}

// summarize prints what happened and returns an exit error if any image is
// missing.
func summarize(results []pull.PullResult, quiet bool, stdout, stderr io.Writer) error {
	var failed []pull.PullResult
	for _, r := range results {
		if r.Err != nil {
			failed = append(failed, r)
		}
	}
	if !quiet {
		fmt.Fprintf(stdout, "%d/%d images present and verified\n", len(results)-len(failed), len(results))
	}
	if len(failed) == 0 {
		return nil
	}
	fmt.Fprintf(stderr, "%d image(s) failed:\n", len(failed))
	for _, r := range failed {
		fmt.Fprintf(stderr, "  %s  %s  [%s] %s\n", r.Image.Runtime, r.Image.Ref, pull.ClassOf(r.Err), safetext.Line(r.Err.Error(), maxLineRunes))
	}
	return &exitError{code: exitFailed}
}

// maxLineRunes bounds text from outside (a registry's or the daemon's
// words) as printed or logged, one sanitised line by safetext.Line.
const maxLineRunes = 500

// terminalText is an error as printed on stderr: each of its lines
// sanitised, so that a registry's words cannot drive the terminal.
func terminalText(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = safetext.Line(l, 0)
	}
	return strings.Join(lines, "\n")
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// logObserver writes one structured line per pull start and finish.
type logObserver struct {
	log *slog.Logger
}

func (o logObserver) PullStarted(img config.Image, src auth.Source) {
	o.log.Info("pull started", "runtime", img.Runtime, "image", img.Ref, "auth", string(src))
}

func (o logObserver) PullProgress(config.Image, engine.Progress) {}

func (o logObserver) PullFinished(r pull.PullResult) {
	if r.Err != nil {
		o.log.Error("pull failed", "runtime", r.Image.Runtime, "image", r.Image.Ref, "class", string(pull.ClassOf(r.Err)), "error", safetext.Line(r.Err.Error(), maxLineRunes), "duration_s", r.Duration.Seconds())
		return
	}
	o.log.Info("image pulled", "runtime", r.Image.Runtime, "image", r.Image.Ref, "digest", r.Digest.String(), "bytes", r.Bytes, "size", r.Size, "up_to_date", r.UpToDate, "duration_s", r.Duration.Seconds())
}
