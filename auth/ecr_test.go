package auth

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/molecule-ai/pull-agent/internal/testbed"
)

// Pulls of two images on one ECR host share one token fetch. When the pull
// that started the fetch is cancelled (its image left the set), the other
// must still get the token, and the cancelled one must return at once
// rather than when the fetch ends. The cancellation comes while the ECR
// API call runs, or while the instance role's credentials are fetched
// from the instance metadata service (which the AWS SDK ends with the
// caller's context).
func TestECRSharedFetchOutlivesACancelledCaller(t *testing.T) {
	const host = "123456789012.dkr.ecr.us-east-2.amazonaws.com"
	tests := []struct {
		name   string
		role   bool // credentials from the instance role (IMDS), not the environment
		delay  time.Duration
		inCall func(*testbed.FakeECR) int
	}{
		{"ECR API call in flight", false, 2 * time.Second, (*testbed.FakeECR).Calls},
		// The SDK's IMDS client gives up on an answer after 500 ms.
		{"instance role credentials in flight", true, 400 * time.Millisecond, (*testbed.FakeECR).RoleCalls},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			delay := tt.delay
			api := slowECR(t, host, tt.role, delay)
			s, _ := NewSelector(Options{ECRCacheDir: t.TempDir()})

			type result struct {
				sel Selection
				err error
			}
			ctxA, cancelA := context.WithCancel(context.Background())
			defer cancelA()
			doneA, doneB := make(chan result, 1), make(chan result, 1)
			go func() { sel, err := s.Select(ctxA, host); doneA <- result{sel, err} }()
			testbed.WaitFor(t, "the slow call to be made", 5*time.Second, func() bool { return tt.inCall(api) > 0 })
			go func() { sel, err := s.Select(context.Background(), host); doneB <- result{sel, err} }()
			time.Sleep(50 * time.Millisecond) // B joins the fetch, whose slow answer is still to come
			cancelA()
			cancelled := time.Now()

			select {
			case r := <-doneA:
				if !errors.Is(r.err, context.Canceled) {
					t.Errorf("the cancelled caller got %v, want context.Canceled", r.err)
				}
				if len(doneB) > 0 {
					t.Errorf("the cancelled caller returned %s after its cancellation, when the shared fetch ended", time.Since(cancelled).Round(time.Millisecond))
				}
			case <-time.After(delay + 5*time.Second):
				t.Fatal("the cancelled caller never returned")
			}
			select {
			case r := <-doneB:
				if r.err != nil {
					t.Fatalf("the other caller failed with the first one's cancellation: %v", r.err)
				}
				if r.sel.Credentials.Username != "AWS" || r.sel.Credentials.Password.Reveal() != "ecr-pass-s3cret" {
					t.Errorf("the other caller got %+v", r.sel.Credentials)
				}
				if tt.role && !strings.Contains(string(r.sel.Source), "instance role") {
					t.Errorf("source %q, want the instance role", r.sel.Source)
				}
			case <-time.After(delay + 5*time.Second):
				t.Fatal("the other caller never returned")
			}
			if n, r := api.Calls(), api.RoleCalls(); n != 1 || (tt.role && r != 1) {
				t.Errorf("%d ECR API calls and %d role credential fetches, want 1 of each shared by both callers", n, r)
			}
		})
	}
}

// slowECR starts a fake ECR API for host that answers after delay: the
// token call, or with role the instance role's credentials, which the
// environment then leaves as the only ones. The file cache is off.
func slowECR(t *testing.T, host string, role bool, delay time.Duration) *testbed.FakeECR {
	t.Helper()
	api, err := testbed.NewFakeECR(host, "ecr-pass-s3cret", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { api.Close() })
	awsEnv(t, api.URL)
	// Without the file cache a second fetch would make a second
	// API call: one call proves the two callers shared one fetch.
	t.Setenv("AWS_ECR_DISABLE_CACHE", "true")
	if role {
		t.Setenv("AWS_ACCESS_KEY_ID", "")
		t.Setenv("AWS_SECRET_ACCESS_KEY", "")
		t.Setenv("AWS_EC2_METADATA_DISABLED", "false")
		t.Setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", api.URL)
		api.DelayRole(delay)
	} else {
		api.Delay(delay)
	}
	return api
}

// A token fetch that does not answer ends after the helper timeout, the
// ECR API call included (ecr-login makes it without a context), and the
// pull is retried with backoff: otherwise a stalled API would hold every
// pull from the host, now and later, in the one shared fetch.
func TestECRFetchEndsAfterTheHelperTimeout(t *testing.T) {
	const host = "123456789012.dkr.ecr.us-east-2.amazonaws.com"
	api, err := testbed.NewFakeECR(host, "ecr-pass-s3cret", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	defer api.Close()
	awsEnv(t, api.URL)
	t.Setenv("AWS_MAX_ATTEMPTS", "1")
	api.Delay(time.Minute)
	const timeout = 300 * time.Millisecond
	s, _ := NewSelector(Options{ECRCacheDir: t.TempDir(), HelperTimeout: timeout})

	done := make(chan error, 1)
	start := time.Now()
	go func() { _, err := s.Select(context.Background(), host); done <- err }()
	select {
	case err := <-done:
		if took := time.Since(start); took > timeout+2*time.Second {
			t.Errorf("the fetch ended after %s, timeout %s", took.Round(time.Millisecond), timeout)
		}
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("a fetch that timed out must be retried: errors.Is(%v, ErrUnavailable) is false", err)
		}
		if err == nil || !strings.Contains(err.Error(), timeout.String()) {
			t.Errorf("the error does not name the timeout %s: %v", timeout, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the fetch outlived its timeout by 10 s")
	}
}
