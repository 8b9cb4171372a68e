package testbed

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// HelperModes returns the behaviours of the test credential helper (see
// internal/testbed/credhelper).
func HelperModes() []string {
	return []string{"pa-good", "pa-token", "pa-none", "pa-garbage", "pa-fail", "pa-hang"}
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
