package testbed

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// HelperModes returns the behaviours of the test credential helper (see
// internal/testbed/credhelper).
func HelperModes() []string {
	return []string{"pa-good", "pa-token", "pa-none", "pa-garbage", "pa-fail", "pa-hang", "pa-leak", "pa-killed", "pa-envdump", "pa-wrong", "pa-elsewhere"}
}

// HelperConfig is what the test credential helpers in a directory answer
// with and where they write (see internal/testbed/credhelper).
type HelperConfig struct {
	User    string `json:"user"`
	Secret  string `json:"secret"`
	Log     string `json:"log,omitempty"`      // each call appends a line here
	EnvDump string `json:"env_dump,omitempty"` // pa-envdump writes its environment here
}

// ConfigureCredentialHelpers sets what the helpers built into dir answer
// with. The agent starts helpers with a minimal environment, so they read
// this file rather than variables of the test's environment.
func ConfigureCredentialHelpers(dir string, c HelperConfig) error {
	data, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "testhelper.json"), data, 0o600)
}

// BuildCredentialHelpers builds the test credential helper into dir, once
// per mode as docker-credential-<mode>, and returns dir for PATH.
func BuildCredentialHelpers(dir string) (string, error) {
	bin := filepath.Join(dir, "credhelper")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/molecule-ai/pull-agent/internal/testbed/credhelper")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building the test credential helper: %v\n%s", err, out)
	}
	for _, m := range HelperModes() {
		if err := os.Link(bin, filepath.Join(dir, "docker-credential-"+m)); err != nil {
			return "", err
		}
	}
	return dir, nil
}
