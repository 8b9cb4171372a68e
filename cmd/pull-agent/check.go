package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"text/tabwriter"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/agent/pull"
	"github.com/molecule-ai/pull-agent/internal/safetext"
)

// runCheck is 'pull-agent check': what the registry holds, before a flip.
func runCheck(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	setUsage(fs, stderr, "[--prefix P] [--compare Q] [--json]", `
Asks the registry, through the daemon and with the credentials a pull
would use, about every image under prefix P (default: the configured one):
present or missing, digest, platforms, and whether each host authenticated.
Nothing is pulled. --compare Q does the same for Q and reports the parity of
each runtime: how to prove a mirror complete before a flip.`)
	var c common
	c.register(fs)
	prefixFlag := fs.String("prefix", "", "prefix to check (default: the configured one)")
	compare := fs.String("compare", "", "a second prefix to compare digests with (a mirror)")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	env, err := c.prepare(fs, getenv, stderr)
	if err != nil {
		return err
	}
	cfg := env.cfg
	prefixes := []string{cfg.Prefix}
	if *prefixFlag != "" {
		p, err := config.ParsePrefix(*prefixFlag)
		if err != nil {
			return usageErr(fmt.Errorf("--prefix %q: %v", *prefixFlag, err))
		}
		prefixes[0] = p
	}
	if *compare != "" {
		q, err := config.ParsePrefix(*compare)
		if err != nil {
			return usageErr(fmt.Errorf("--compare %q: %v", *compare, err))
		}
		prefixes = append(prefixes, q)
	}
	eng, err := engine.NewDockerEngine(cfg.DockerEndpoint())
	if err != nil {
		return usageErr(err)
	}
	defer eng.Close()
	config.WarnDockerSocketOwner(env.log, cfg.DockerHost)
	if err := eng.Ping(ctx); err != nil {
		return &exitError{code: checkUnreachable, err: err}
	}
	reports, err := checkPrefixes(ctx, eng, cfg, prefixes, func(pc config.Config) (pull.Authorizer, error) {
		return c.authorizer(pc, getenv, env.log)
	}, env.log)
	if err != nil {
		return err
	}
	ok := true
	for _, r := range reports {
		ok = ok && r.OK()
	}
	var parity map[string]pull.Parity
	if len(reports) == 2 {
		parity = pull.Compare(reports[0], reports[1])
		for _, p := range parity {
			ok = ok && p == pull.ParitySame
		}
	}
	if *asJSON {
		if err := printCheckJSON(stdout, ok, reports, parity); err != nil {
			return err
		}
	} else {
		printCheck(stdout, reports, parity)
	}
	if !ok {
		return &exitError{code: checkFailed}
	}
	return nil
}

// checkPrefixes checks cfg's image set under each of prefixes, with the
// credentials authz chooses for each.
func checkPrefixes(ctx context.Context, eng engine.Engine, cfg config.Config, prefixes []string, authz func(config.Config) (pull.Authorizer, error), log *slog.Logger) ([]pull.CheckReport, error) {
	platform := cfg.TargetPlatform()
	var reports []pull.CheckReport
	for _, p := range prefixes {
		pc := cfg
		pc.Prefix = p
		images, err := pc.Images()
		if err != nil {
			return nil, usageErr(err)
		}
		sel, err := authz(pc)
		if err != nil {
			return nil, err
		}
		// Check only asks the registry (Remote): the timeouts of a pull
		// do not apply.
		puller, err := pull.NewPuller(eng, sel, log, pull.OptionsFor(pc, 0, pull.PullTimeouts{}))
		if err != nil {
			return nil, err
		}
		reports = append(reports, pull.Check(ctx, puller, p, platform, images))
	}
	return reports, nil
}

// printCheckJSON is 'check --json'.
func printCheckJSON(w io.Writer, ok bool, reports []pull.CheckReport, parity map[string]pull.Parity) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	doc := struct {
		OK      bool               `json:"ok"`
		Reports []pull.CheckReport `json:"reports"`
		Parity  map[string]string  `json:"parity,omitempty"`
	}{ok, reports, parityLabels(parity)}
	return enc.Encode(doc)
}

func printCheck(w io.Writer, reports []pull.CheckReport, parity map[string]pull.Parity) {
	for i, r := range reports {
		label := "P"
		if i == 1 {
			label = "Q"
		}
		if len(reports) == 1 {
			fmt.Fprintf(w, "prefix:   %s (platform %s)\n", plain(r.Prefix), plain(r.Platform))
		} else {
			fmt.Fprintf(w, "%s:        %s (platform %s)\n", label, plain(r.Prefix), plain(r.Platform))
		}
		for _, h := range r.Hosts {
			state := "authentication ok"
			if !h.AuthOK {
				state = "AUTHENTICATION FAILED: " + plain(h.Error)
			}
			fmt.Fprintf(w, "  host %s: %s; %s\n", plain(h.Host), plain(h.Source), state)
		}
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	head := []string{"RUNTIME"}
	for i := range reports {
		l := ""
		if len(reports) == 2 {
			l = []string{" P", " Q"}[i]
		}
		head = append(head, "STATUS"+l, "DIGEST"+l, "PLATFORMS"+l)
	}
	if parity != nil {
		head = append(head, "PARITY")
	}
	fmt.Fprintln(tw, strings.Join(head, "\t"))
	for n := range reports[0].Images {
		row := []string{plain(reports[0].Images[n].Runtime)}
		for _, r := range reports {
			im := r.Images[n]
			st, dg := "present", "-"
			if !im.Present {
				st = "MISSING"
				if im.Class != "" && im.Class != pull.ClassNotFound {
					st = "ERROR [" + plain(string(im.Class)) + "]"
				}
			} else {
				dg = safetext.ShortDigest(im.Digest.String())
				if !im.PlatformOK {
					st = "NO " + plain(r.Platform)
				}
			}
			row = append(row, st, dg, dashJoin(im.Platforms))
		}
		if parity != nil {
			row = append(row, parityLabel(parity[reports[0].Images[n].Runtime]))
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	tw.Flush()
}

func dashJoin(s []string) string {
	if len(s) == 0 {
		return "-"
	}
	return plain(strings.Join(s, ","))
}

// parityLabel is how check names a parity, in its table and its JSON.
func parityLabel(p pull.Parity) string {
	switch p {
	case pull.ParitySame:
		return "same"
	case pull.ParityDiffers:
		return "differs"
	case pull.ParityMissingP:
		return "missing in P"
	case pull.ParityMissingQ:
		return "missing in Q"
	case pull.ParityMissingB:
		return "missing in both"
	}
	return "-"
}

// parityLabels labels each runtime's parity; nil for nil.
func parityLabels(parity map[string]pull.Parity) map[string]string {
	if parity == nil {
		return nil
	}
	out := make(map[string]string, len(parity))
	for rt, p := range parity {
		out[rt] = parityLabel(p)
	}
	return out
}
