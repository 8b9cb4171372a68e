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
each runtime: how to prove a mirror complete before a flip. An image is
the same when the manifest for the platform has the same config digest,
even where a mirror re-packed the manifests around it (docker push,
skopeo copy without --all). Without --compare, each fallback prefix
(MOLECULE_IMAGE_FALLBACK_REGISTRY) is compared with P in turn: a fallback
that lacks an image, or serves another, is not ready to take over.`)
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
	fallbacks := *compare == "" && len(cfg.Fallbacks) > 0
	switch {
	case *compare != "":
		q, err := config.ParsePrefix(*compare)
		if err != nil {
			return usageErr(fmt.Errorf("--compare %q: %v", *compare, err))
		}
		prefixes = append(prefixes, q)
	case fallbacks:
		prefixes = append(prefixes, cfg.Fallbacks...)
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
	return reportCheck(stdout, reports, *asJSON, fallbacks)
}

// reportCheck prints reports, each prefix after the first compared with
// it, and returns check's exit.
func reportCheck(stdout io.Writer, reports []pull.CheckReport, asJSON, fallbacks bool) error {
	ok := true
	for _, r := range reports {
		ok = ok && r.OK()
	}
	// Each prefix after P is compared with P.
	var parities []map[string]pull.Comparison
	for _, q := range reports[1:] {
		parity := pull.Compare(reports[0], q)
		for _, p := range parity {
			ok = ok && p.Parity == pull.ParitySame
		}
		parities = append(parities, parity)
	}
	if asJSON {
		if err := printCheckJSON(stdout, ok, reports, parities, fallbacks); err != nil {
			return err
		}
		return checkExit(ok)
	}
	if len(parities) == 0 {
		printCheck(stdout, reports, nil)
	}
	for i, parity := range parities {
		if i > 0 {
			fmt.Fprintln(stdout)
		}
		if fallbacks {
			fmt.Fprintf(stdout, "fallback %d of %d (%s):\n", i+1, len(parities), config.KeyFallback)
		}
		printCheck(stdout, []pull.CheckReport{reports[0], reports[i+1]}, parity)
	}
	return checkExit(ok)
}

// checkExit is check's exit: checkFailed unless ok.
func checkExit(ok bool) error {
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

// comparedJSON is one runtime of 'check --json --compare': both levels.
type comparedJSON struct {
	Parity       string `json:"parity"`
	SameManifest bool   `json:"same_manifest"`
	SameImage    bool   `json:"same_image"`
}

// fallbackJSON is one fallback prefix compared with P in 'check --json'.
type fallbackJSON struct {
	Prefix   string                  `json:"prefix"`
	Parity   map[string]string       `json:"parity"`
	Compared map[string]comparedJSON `json:"compared"`
}

// printCheckJSON is 'check --json'. With --compare, parity and compared
// are Q's; with fallbacks, the first fallback's, and fallbacks lists each.
func printCheckJSON(w io.Writer, ok bool, reports []pull.CheckReport, parities []map[string]pull.Comparison, fallbacks bool) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	doc := struct {
		OK        bool                    `json:"ok"`
		Reports   []pull.CheckReport      `json:"reports"`
		Parity    map[string]string       `json:"parity,omitempty"`
		Compared  map[string]comparedJSON `json:"compared,omitempty"`
		Fallbacks []fallbackJSON          `json:"fallbacks,omitempty"`
	}{OK: ok, Reports: reports}
	for i, parity := range parities {
		compared := make(map[string]comparedJSON, len(parity))
		for rt, c := range parity {
			compared[rt] = comparedJSON{parityLabel(c.Parity), c.SameManifest, c.SameImage}
		}
		if i == 0 {
			doc.Parity, doc.Compared = parityLabels(parity), compared
		}
		if fallbacks {
			doc.Fallbacks = append(doc.Fallbacks, fallbackJSON{reports[i+1].Prefix, parityLabels(parity), compared})
		}
	}
	return enc.Encode(doc)
}

func printCheck(w io.Writer, reports []pull.CheckReport, parity map[string]pull.Comparison) {
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
		head = append(head, "STATUS"+l, "DIGEST"+l, "IMAGE"+l, "PLATFORMS"+l)
	}
	if parity != nil {
		head = append(head, "MANIFEST", "PARITY")
	}
	fmt.Fprintln(tw, strings.Join(head, "\t"))
	repacked := false
	for n := range reports[0].Images {
		row := []string{plain(reports[0].Images[n].Runtime)}
		for _, r := range reports {
			row = append(row, checkCells(r, r.Images[n])...)
		}
		if parity != nil {
			c := parity[reports[0].Images[n].Runtime]
			manifest := "-"
			if c.Parity == pull.ParitySame || c.Parity == pull.ParityDiffers || c.Parity == pull.ParityUnknown {
				manifest = map[bool]string{true: "same", false: "differs"}[c.SameManifest]
			}
			repacked = repacked || c.Parity == pull.ParitySame && !c.SameManifest
			row = append(row, manifest, parityLabel(c.Parity))
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	tw.Flush()
	if repacked {
		fmt.Fprintf(w, "\nsame with MANIFEST differs: the image for %s (its config digest) is identical; the\nmirror re-packed the manifests around it (docker push, skopeo copy without --all).\n", plain(reports[0].Platform))
	}
}

// checkCells are the status, digest, image and platforms cells of one
// image of a report.
func checkCells(r pull.CheckReport, im pull.CheckResult) []string {
	st, dg, id := "present", "-", "-"
	if !im.Present {
		st = "MISSING"
		if im.Class != "" && im.Class != pull.ClassNotFound {
			st = "ERROR [" + plain(string(im.Class)) + "]"
		}
	} else {
		dg = safetext.ShortDigest(im.Digest.String())
		if im.ImageDigest != "" {
			id = safetext.ShortDigest(im.ImageDigest.String())
		}
		if !im.PlatformOK {
			st = "NO " + plain(r.Platform)
		}
	}
	pl := dashJoin(im.Platforms)
	if im.Attestations > 0 {
		pl += fmt.Sprintf(" (+%d attestations)", im.Attestations)
	}
	return []string{st, dg, id, pl}
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
	case pull.ParityUnknown:
		return "unknown"
	}
	return "-"
}

// parityLabels labels each runtime's parity; nil for nil.
func parityLabels(parity map[string]pull.Comparison) map[string]string {
	if parity == nil {
		return nil
	}
	out := make(map[string]string, len(parity))
	for rt, c := range parity {
		out[rt] = parityLabel(c.Parity)
	}
	return out
}
