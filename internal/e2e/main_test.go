package e2e

import (
	"os"
	"testing"

	"github.com/molecule-ai/pull-agent/internal/testbed"
)

// Every test here installs, builds or boots something: under -short
// (make unit) none runs.
func TestMain(m *testing.M) { os.Exit(testbed.IntegrationMain(m)) }
