package testbed

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"testing"
)

// The two test tiers are decided here and nowhere else.
//
// 'make unit' runs 'go test -short': every integration test (one that needs
// the bed, root, or a tool the bed installs) is skipped, CI or not, and
// says so. Without -short the rule of the project holds: an integration
// test skips only where the bed is absent and CI is unset; under CI a
// missing bed is a failure.

// ShortSkip is why an integration test did not run under -short.
const ShortSkip = "integration test: skipped by -short (make unit)"

// Integration marks t as an integration test: it is skipped under -short.
// Require, RequireRoot, SkipOrFail and Shared.Get call it first.
func Integration(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip(ShortSkip)
	}
}

// Require skips t under -short, and otherwise skips or fails it (see
// SkipOrFail) where the bed cannot run here.
func Require(t testing.TB) {
	t.Helper()
	Integration(t)
	if err := Available(); err != nil {
		SkipOrFail(t, err)
	}
}

// RequireRoot skips t under -short, and otherwise skips or fails it (see
// SkipOrFail) unless the test runs as root; what says what root is for.
func RequireRoot(t testing.TB, what string) {
	t.Helper()
	Integration(t)
	if os.Geteuid() != 0 {
		SkipOrFail(t, errors.New(what+" needs root"))
	}
}

// SkipOrFail skips t because what it needs (the bed, root, a tool) is
// absent, or fails it when CI is set. Under -short it skips t as an
// integration test whatever CI says.
func SkipOrFail(t testing.TB, why error) {
	t.Helper()
	Integration(t)
	if os.Getenv("CI") != "" {
		t.Fatalf("the test bed is required when CI is set: %v", why)
	}
	t.Skipf("test bed absent (%v); with CI set this is a failure", why)
}

// IntegrationMain is TestMain for a package that holds integration tests
// only: under -short it runs none of them, starts nothing, and says so.
// Otherwise it returns m.Run().
func IntegrationMain(m *testing.M) int {
	if !flag.Parsed() {
		flag.Parse()
	}
	if testing.Short() {
		fmt.Println(ShortSkip)
		return 0
	}
	return m.Run()
}
