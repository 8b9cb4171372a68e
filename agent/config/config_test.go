package config

import (
	"bytes"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/molecule-ai/pull-agent/internal/testbed"
)

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func mustLoad(t *testing.T, file []EnvVar, env map[string]string) Config {
	t.Helper()
	cfg, err := LoadConfig("test.env", file, envOf(env))
	if err != nil {
		t.Fatalf("LoadConfig: %v", err)
	}
	return cfg
}

func mustImages(t *testing.T, cfg Config) []Image {
	t.Helper()
	imgs, err := cfg.Images()
	if err != nil {
		t.Fatal(err)
	}
	return imgs
}

// The resolver rules of the original RegistryPrefix/RuntimeImages, which
// are the contract.
func TestResolverContract(t *testing.T) {
	t.Run("default fallback", func(t *testing.T) {
		cfg := mustLoad(t, nil, nil)
		if cfg.Prefix != "ghcr.io/molecule-ai" {
			t.Fatalf("prefix %q", cfg.Prefix)
		}
		img, _ := LookupImage(mustImages(t, cfg), "claude-code")
		if img.Ref != "ghcr.io/molecule-ai/workspace-template-claude-code:latest" {
			t.Fatalf("ref %q", img.Ref)
		}
	})
	t.Run("env override", func(t *testing.T) {
		cfg := mustLoad(t, nil, map[string]string{KeyRegistry: "123456789012.dkr.ecr.us-east-2.amazonaws.com/molecule-ai"})
		img, _ := LookupImage(mustImages(t, cfg), "codex")
		if img.Ref != "123456789012.dkr.ecr.us-east-2.amazonaws.com/molecule-ai/workspace-template-codex:latest" {
			t.Fatalf("ref %q", img.Ref)
		}
		if img.Host() != "123456789012.dkr.ecr.us-east-2.amazonaws.com" {
			t.Fatalf("host %q", img.Host())
		}
	})
	t.Run("empty env is the default", func(t *testing.T) {
		cfg := mustLoad(t, nil, map[string]string{KeyRegistry: ""})
		if cfg.Prefix != defaultPrefix {
			t.Fatalf("prefix %q", cfg.Prefix)
		}
	})
	t.Run("all nine known runtimes", func(t *testing.T) {
		imgs := mustImages(t, mustLoad(t, nil, nil))
		var got []string
		for _, i := range imgs {
			got = append(got, i.Runtime)
		}
		want := []string{"autogen", "claude-code", "codex", "crewai", "deepagents", "gemini-cli", "hermes", "langgraph", "openclaw"}
		if !slices.Equal(got, want) {
			t.Fatalf("runtimes %v, want %v", got, want)
		}
	})
	t.Run("unknown runtime has no image", func(t *testing.T) {
		if img, ok := LookupImage(mustImages(t, mustLoad(t, nil, nil)), "nonexistent"); ok {
			t.Fatalf("got %v", img)
		}
	})
	t.Run("override applies to every runtime and keeps latest", func(t *testing.T) {
		imgs := mustImages(t, mustLoad(t, nil, map[string]string{KeyRegistry: "registry.example.test:5000/mirror"}))
		for _, i := range imgs {
			want := "registry.example.test:5000/mirror/workspace-template-" + i.Runtime + ":latest"
			if i.Ref != want {
				t.Errorf("%s: %q, want %q", i.Runtime, i.Ref, want)
			}
		}
	})
	t.Run("the order given, de-duplicated: it is the priority order", func(t *testing.T) {
		imgs := mustImages(t, mustLoad(t, nil, map[string]string{KeyRuntimes: "openclaw, autogen,codex,autogen,"}))
		var got []string
		for _, i := range imgs {
			got = append(got, i.Runtime)
		}
		if !slices.Equal(got, []string{"openclaw", "autogen", "codex"}) {
			t.Fatalf("got %v", got)
		}
	})
	t.Run("trailing slashes trimmed", func(t *testing.T) {
		if p := mustLoad(t, nil, map[string]string{KeyRegistry: "ghcr.io/other//"}).Prefix; p != "ghcr.io/other" {
			t.Fatalf("prefix %q", p)
		}
	})
}

func TestLayering(t *testing.T) {
	file := []EnvVar{{Key: KeyRegistry, Value: "ghcr.io/from-file", Line: 3}}
	env := map[string]string{KeyRegistry: "ghcr.io/from-env", KeyRuntimes: "codex", KeyDockerHost: "unix:///tmp/d.sock"}
	cfg := mustLoad(t, file, env)
	if cfg.Prefix != "ghcr.io/from-file" {
		t.Errorf("a key in the file must win: prefix %q", cfg.Prefix)
	}
	if !slices.Equal(cfg.Runtimes, []string{"codex"}) {
		t.Errorf("a key absent from the file falls back to the environment: %v", cfg.Runtimes)
	}
	if cfg.DockerHost != "unix:///tmp/d.sock" {
		t.Errorf("docker host %q", cfg.DockerHost)
	}
	if d := mustLoad(t, nil, nil).DockerHost; d != defaultDockerHost {
		t.Errorf("default docker host %q", d)
	}
	// An empty value in the file still wins over the environment.
	cfg = mustLoad(t, []EnvVar{{Key: KeyRegistry, Value: "", Line: 1}}, env)
	if cfg.Prefix != defaultPrefix {
		t.Errorf("empty in file: prefix %q, want default", cfg.Prefix)
	}
}

func TestConfigRefusals(t *testing.T) {
	pin := "sha256:" + strings.Repeat("a", 64)
	tests := []struct {
		name string
		env  map[string]string
		key  string // the key the *configError names; "" for a pair (one of them a secret: no value quoted)
		want string // in the error
	}{
		{"scheme", map[string]string{KeyRegistry: "https://ghcr.io/molecule-ai"}, KeyRegistry, "no URL scheme"},
		{"whitespace", map[string]string{KeyRegistry: "ghcr.io/molecule-ai # old"}, KeyRegistry, "contains white space"},
		{"upper case", map[string]string{KeyRegistry: "ghcr.io/Molecule-AI"}, KeyRegistry, "upper-case"},
		{"tag inside prefix", map[string]string{KeyRegistry: "ghcr.io/molecule-ai:v1"}, KeyRegistry, "cannot carry a tag"},
		{"tag on bare host", map[string]string{KeyRegistry: "molecule:latest"}, KeyRegistry, "cannot carry a tag"},
		{"digest inside prefix", map[string]string{KeyRegistry: "ghcr.io/molecule-ai@" + pin}, KeyRegistry, "contains a digest"},
		{"empty segment", map[string]string{KeyRegistry: "ghcr.io//molecule-ai"}, KeyRegistry, "empty path segment"},
		{"leading slash", map[string]string{KeyRegistry: "/molecule-ai"}, KeyRegistry, "empty path segment"},
		{"only slashes", map[string]string{KeyRegistry: "///"}, KeyRegistry, "only slashes"},
		{"invalid characters", map[string]string{KeyRegistry: "ghcr.io/molecule_-ai"}, KeyRegistry, "does not form a valid image name"},
		{"bad runtime name", map[string]string{KeyRuntimes: "codex,Claude"}, KeyRuntimes, `runtime "Claude" is not a valid name`},
		{"runtime with underscore", map[string]string{KeyRuntimes: "my_rt"}, KeyRuntimes, `runtime "my_rt" is not a valid name`},
		{"runtime ending in dash", map[string]string{KeyRuntimes: "codex-"}, KeyRuntimes, `runtime "codex-" is not a valid name`},
		{"runtimes only commas", map[string]string{KeyRuntimes: ", ,"}, KeyRuntimes, "names no runtime"},
		{"pin for runtime not in list", map[string]string{KeyRuntimes: "codex", KeyPins: "hermes=" + pin}, KeyPins, `pin for runtime "hermes", which is not in the runtime list`},
		{"pin malformed digest", map[string]string{KeyPins: "codex=sha256:abc"}, KeyPins, "not a digest of the form sha256"},
		{"pin upper-case hex", map[string]string{KeyPins: "codex=sha256:" + strings.Repeat("A", 64)}, KeyPins, "not a digest of the form sha256"},
		{"pin other algorithm", map[string]string{KeyPins: "codex=sha512:" + strings.Repeat("a", 128)}, KeyPins, "not a digest of the form sha256"},
		{"pin without runtime", map[string]string{KeyPins: pin}, KeyPins, "is not runtime=sha256"},
		{"pin twice", map[string]string{KeyPins: "codex=" + pin + ",codex=" + pin}, KeyPins, "pinned twice"},
		{"platform without arch", map[string]string{KeyPlatform: "linux"}, KeyPlatform, "os/arch"},
		{"platform unknown os", map[string]string{KeyPlatform: "plan10/amd64"}, KeyPlatform, `unknown operating system "plan10"`},
		{"platform unknown arch", map[string]string{KeyPlatform: "linux/banana"}, KeyPlatform, `unknown architecture "banana"`},
		{"platform garbage", map[string]string{KeyPlatform: "linux/amd64/v1/x"}, KeyPlatform, "os/arch"},
		{"ghcr user without token", map[string]string{KeyGHCRUser: "bot"}, "", "must be set together"},
	}
	seen := map[string]string{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadConfig("test.env", nil, envOf(tt.env))
			if err == nil {
				t.Fatalf("accepted %v", tt.env)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not say %q", err, tt.want)
			}
			var ce *configError
			switch {
			case tt.key == "":
				if errors.As(err, &ce) {
					t.Fatalf("a pair with a secret refused as one key's value: %v", err)
				}
			case !errors.As(err, &ce) || ce.Key != tt.key:
				t.Fatalf("error %v is not a *configError for %s", err, tt.key)
			case !strings.Contains(err.Error(), ce.Key+"="):
				t.Errorf("error does not name the key: %v", err)
			case !strings.Contains(err.Error(), ce.Value):
				t.Errorf("error does not quote the value: %v", err)
			}
			if prev, dup := seen[err.Error()]; dup {
				t.Errorf("same message as case %q: each refusal needs its own", prev)
			}
			seen[err.Error()] = tt.name
		})
	}
}

func TestConfigErrorNamesFileAndLine(t *testing.T) {
	vars, err := parseEnvFile("/etc/pull-agent/pull-agent.env", strings.NewReader("# c\nMOLECULE_IMAGE_REGISTRY=https://x\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = LoadConfig("/etc/pull-agent/pull-agent.env", vars, envOf(nil))
	if err == nil || !strings.Contains(err.Error(), "/etc/pull-agent/pull-agent.env:2: MOLECULE_IMAGE_REGISTRY=\"https://x\"") {
		t.Fatalf("got %v", err)
	}
}

func TestConfigReportsEveryRefusal(t *testing.T) {
	_, err := LoadConfig("f", nil, envOf(map[string]string{KeyRegistry: "A", KeyRuntimes: "B", KeyPlatform: "x"}))
	for _, k := range []string{KeyRegistry, KeyRuntimes, KeyPlatform} {
		if err == nil || !strings.Contains(err.Error(), k) {
			t.Errorf("error does not report %s: %v", k, err)
		}
	}
}

func TestPinsAndPlatform(t *testing.T) {
	pin := "sha256:" + strings.Repeat("b", 64)
	cfg := mustLoad(t, nil, map[string]string{KeyPins: " codex = " + pin + " ,", KeyPlatform: "Linux/AMD64"})
	img, _ := LookupImage(mustImages(t, cfg), "codex")
	if img.Ref != "ghcr.io/molecule-ai/workspace-template-codex@"+pin || img.Pin.String() != pin {
		t.Fatalf("pinned ref %q pin %q", img.Ref, img.Pin)
	}
	if other, _ := LookupImage(mustImages(t, cfg), "hermes"); other.Pin != "" || !strings.HasSuffix(other.Ref, ":latest") {
		t.Fatalf("unpinned runtime %v", other)
	}
	if cfg.Platform != "linux/amd64" {
		t.Fatalf("platform %q", cfg.Platform)
	}
	if p, err := parsePlatform("linux/arm64/v8"); err != nil || p != "linux/arm64/v8" {
		t.Fatalf("arm64: %q %v", p, err)
	}
}

func TestValidPrefixes(t *testing.T) {
	for _, p := range []string{
		"ghcr.io/molecule-ai",
		"localhost:5000/x",
		"127.0.0.1:5000",
		"registry.example.test",
		"moleculeai",
		"123456789012.dkr.ecr.eu-west-1.amazonaws.com/a/b/c",
		"public.ecr.aws/molecule",
	} {
		if _, err := ParsePrefix(p); err != nil {
			t.Errorf("%q refused: %v", p, err)
		}
	}
}

func FuzzParsePrefix(f *testing.F) {
	for _, s := range []string{"ghcr.io/molecule-ai", "a:1/b", "https://x", "A", "x//y", "x@sha256:00", "a:b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePrefix(s)
		if err != nil {
			return
		}
		// Every accepted prefix yields references the Docker SDK accepts.
		cfg := Config{Prefix: p, Runtimes: KnownRuntimes()}
		if _, err := cfg.Images(); err != nil {
			t.Fatalf("prefix %q accepted but %v", s, err)
		}
		if strings.HasSuffix(p, "/") || strings.ContainsAny(p, " @") {
			t.Fatalf("prefix %q accepted as %q", s, p)
		}
	})
}

func FuzzParseRuntimesAndPins(f *testing.F) {
	f.Add("codex,hermes", "codex=sha256:"+strings.Repeat("0", 64))
	f.Add(",,", "x=")
	f.Fuzz(func(t *testing.T, rts, pins string) {
		list, err := parseRuntimes(rts)
		if err != nil {
			return
		}
		// The names given, each once, in the order of their first
		// mention: the priority order.
		var want []string
		for _, n := range strings.Split(rts, ",") {
			if n = strings.TrimSpace(n); n != "" && !slices.Contains(want, n) {
				want = append(want, n)
			}
		}
		if strings.TrimSpace(rts) == "" {
			want = KnownRuntimes()
		}
		if !slices.Equal(list, want) {
			t.Fatalf("%q: got %v, want each name once in the order given: %v", rts, list, want)
		}
		pm, err := parsePins(pins, list)
		if err != nil {
			return
		}
		cfg := Config{Prefix: defaultPrefix, Runtimes: list, Pins: pm}
		if _, err := cfg.Images(); err != nil {
			t.Fatalf("runtimes %q pins %q accepted but %v", rts, pins, err)
		}
	})
}

// A huge value must not come back whole in the error, which goes to the
// log and the state document.
func TestErrorsDoNotRepeatHugeValues(t *testing.T) {
	huge := strings.Repeat("a", 1_000_000)
	cases := map[string]string{
		"prefix":       KeyRegistry + "=" + huge + "\n",
		"prefix path":  KeyRegistry + "=r.test/" + huge + ":x\n",
		"runtimes":     KeyRuntimes + "=" + huge + "\n",
		"pins":         KeyRuntimes + "=codex\n" + KeyPins + "=" + huge + "\n",
		"bad key":      "-" + huge + "=1\n",
		"no '='":       huge + "\n",
		"bad key utf8": "\xff" + huge + "=1\n",
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			vars, err := parseEnvFile("f", strings.NewReader(in))
			if err == nil {
				_, err = LoadConfig("f", vars, envOf(nil))
			}
			if err == nil {
				t.Fatal("accepted")
			}
			if n := len(err.Error()); n > 1024 {
				t.Errorf("a %d-byte error for a 1 MB value: %.200s…", n, err)
			}
		})
	}
}

func TestWarnEnvFileMode(t *testing.T) {
	testbed.RequireRoot(t, "chown of the env file to another user")
	token := []EnvVar{{Key: KeyGHCRToken, Value: "t"}}
	tests := []struct {
		name     string
		mode     os.FileMode
		dirMode  os.FileMode
		uid      int
		vars     []EnvVar
		warnings []string
	}{
		{"root 0600 in 0755", 0o600, 0o755, 0, token, nil},
		{"0644 without a token", 0o644, 0o755, 0, nil, nil},
		{"0644 with a token", 0o644, 0o755, 0, token, []string{"readable by group or others"}},
		{"group-writable", 0o620, 0o755, 0, nil, []string{"env file is writable by group or others"}},
		{"another owner", 0o600, 0o755, 65534, nil, []string{"owned by another user"}},
		{"world-writable directory", 0o600, 0o777, 0, nil, []string{"directory is writable by group or others"}},
		{"sticky world-writable directory", 0o600, 0o777 | os.ModeSticky, 0, nil, nil},
		{"everything wrong", 0o666, 0o775, 65534, token, []string{"readable by group", "writable by group", "owned by another", "directory is writable"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "etc")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "env")
			if err := os.WriteFile(path, []byte("A=1\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			for _, err := range []error{os.Chmod(path, tt.mode), os.Chown(path, tt.uid, 0), os.Chmod(dir, tt.dirMode)} {
				if err != nil {
					t.Fatal(err)
				}
			}
			var logs bytes.Buffer
			WarnEnvFileMode(slog.New(slog.NewTextHandler(&logs, nil)), path, tt.vars)
			out := logs.String()
			if n := strings.Count(out, "level=WARN"); n != len(tt.warnings) {
				t.Errorf("%d warnings, want %d:\n%s", n, len(tt.warnings), out)
			}
			for _, w := range tt.warnings {
				if !strings.Contains(out, w) {
					t.Errorf("no warning %q:\n%s", w, out)
				}
			}
		})
	}
}

// A key the agent does not read is named (the unit no longer copies the
// file into the environment, so it reaches nothing), its value never.
func TestWarnUnusedKeys(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	vars, err := parseEnvFile("f.env", strings.NewReader(KeyRegistry+"=ghcr.io/x\nHTTPS_PROXY=http://u:proxy-s3cret@proxy:3128\n"+KeyGHCRToken+"=ghp_x\nAWS_REGION=eu-west-1\n"+KeyFallback+"=m.example/x\n"))
	if err != nil {
		t.Fatal(err)
	}
	WarnUnusedKeys(log, "f.env", vars)
	out := logs.String()
	if strings.Count(out, "does not read") != 2 || !strings.Contains(out, "key=HTTPS_PROXY line=2") || !strings.Contains(out, "key=AWS_REGION line=4") {
		t.Errorf("warnings:\n%s", out)
	}
	if strings.Contains(out, "s3cret") || strings.Contains(out, KeyRegistry) || strings.Contains(out, KeyGHCRToken) || strings.Contains(out, KeyFallback) {
		t.Errorf("a value or a key the agent reads is in the warnings:\n%s", out)
	}
}

// Every Key… constant names a key the agent reads, so keys() lists it: a
// key the agent reads must never be reported as one it does not, and the
// env file's messages name it (MOLECULE_IMAGE_FALLBACK_REGISTRY once was
// missing).
func TestKeysListsEveryKeyConstant(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "config.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, spec := range g.Specs {
			vs := spec.(*ast.ValueSpec)
			for i, name := range vs.Names {
				if !strings.HasPrefix(name.Name, "Key") || i >= len(vs.Values) {
					continue
				}
				lit, ok := vs.Values[i].(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					continue
				}
				n++
				key, _ := strconv.Unquote(lit.Value)
				if !slices.Contains(keys(), key) {
					t.Errorf("%s (%s) is not in keys(): the agent would call it a key it does not read", name.Name, key)
				}
			}
		}
	}
	if n < 10 {
		t.Fatalf("found only %d Key… constants in config.go", n)
	}
}

func TestParseFallbacks(t *testing.T) {
	tests := []struct {
		name, in string
		want     []string
		err      string
	}{
		{"unset", "", nil, ""},
		{"one", "123456789012.dkr.ecr.us-east-2.amazonaws.com/molecule-ai", []string{"123456789012.dkr.ecr.us-east-2.amazonaws.com/molecule-ai"}, ""},
		{"in order, trailing slashes dropped", "b.example/m/,a.example/m", []string{"b.example/m", "a.example/m"}, ""},
		{"empty entry", "a.example/m,,b.example/m", nil, "entry 2 is empty"},
		{"trailing comma", "a.example/m,", nil, "entry 2 is empty"},
		{"white space after a comma", "a.example/m, b.example/m", nil, `(entry 2): contains white space`},
		{"the primary itself", "ghcr.io/primary/", nil, "is the primary (MOLECULE_IMAGE_REGISTRY) itself"},
		{"twice", "a.example/m,a.example/m/", nil, `prefix "a.example/m" is listed twice`},
		{"too many", "a.io/m,b.io/m,c.io/m,d.io/m,e.io/m", nil, "lists 5 prefixes; at most 4"},
		{"a scheme", "https://a.example/m", nil, "no URL scheme"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseFallbacks(tt.in, "ghcr.io/primary")
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("parseFallbacks(%q) = %v, %v; want an error with %q", tt.in, got, err, tt.err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Fatalf("parseFallbacks(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

// A refused fallback list refuses the whole configuration, naming the key
// and where it was set.
func TestLoadConfigRefusesABadFallback(t *testing.T) {
	_, err := LoadConfig("/etc/pull-agent/pull-agent.env", []EnvVar{{Key: KeyFallback, Value: "ghcr.io/molecule-ai", Line: 3}}, nil)
	if err == nil || !strings.Contains(err.Error(), "/etc/pull-agent/pull-agent.env:3: MOLECULE_IMAGE_FALLBACK_REGISTRY=") || !strings.Contains(err.Error(), "is the primary") {
		t.Fatalf("got %v", err)
	}
	cfg, err := LoadConfig("f", []EnvVar{{Key: KeyFallback, Value: "a.example/m", Line: 1}}, nil)
	if err != nil || !slices.Equal(cfg.Fallbacks, []string{"a.example/m"}) {
		t.Fatalf("got %v, %v", cfg.Fallbacks, err)
	}
}

func FuzzParseFallbacks(f *testing.F) {
	for _, s := range []string{"a.example/m,b.example/m", ",", "a, b", "ghcr.io/molecule-ai", "x//y,https://z"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := parseFallbacks(s, defaultPrefix)
		if err != nil {
			return
		}
		if len(got) > MaxFallbacks {
			t.Fatalf("%q: %d fallbacks accepted", s, len(got))
		}
		seen := map[string]bool{defaultPrefix: true}
		for _, p := range got {
			if q, err := ParsePrefix(p); err != nil || q != p || seen[p] {
				t.Fatalf("%q: accepted %q (%v), a repeat or not a prefix", s, p, err)
			}
			seen[p] = true
			if _, err := (Image{Runtime: "codex"}).Under(p); err != nil {
				t.Fatalf("%q: accepted %q but %v", s, p, err)
			}
		}
	})
}

func TestParseSpread(t *testing.T) {
	for in, want := range map[string]time.Duration{"0": 0, "90s": 90 * time.Second, "15m": 15 * time.Minute, "1h30m": 90 * time.Minute, "24h": 24 * time.Hour} {
		if got, err := parseSpread(in); err != nil || got != want {
			t.Errorf("parseSpread(%q) = %s, %v; want %s", in, got, err, want)
		}
	}
	for in, reason := range map[string]string{"10": "write a duration", "-5m": "must not be negative", "25h": "more than 24h0m0s", "5 m": "write a duration", "1e9s": "write a duration"} {
		if _, err := parseSpread(in); err == nil || !strings.Contains(err.Error(), reason) {
			t.Errorf("parseSpread(%q): %v, want %q", in, err, reason)
		}
	}
	_, err := LoadConfig("f", []EnvVar{{Key: KeySpread, Value: "soon", Line: 7}}, nil)
	if err == nil || !strings.Contains(err.Error(), `f:7: MOLECULE_FLIP_SPREAD="soon": write a duration`) {
		t.Errorf("LoadConfig: %v", err)
	}
}
