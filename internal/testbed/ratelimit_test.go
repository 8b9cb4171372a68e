package testbed

import (
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestTokenBucket(t *testing.T) {
	t0 := time.Unix(1000, 0)
	tests := []struct {
		name  string
		rate  float64
		burst int
		at    []time.Duration // offsets of the takes from t0
		want  string          // one character per take: + taken, - refused
	}{
		{"no limit", 0, 0, []time.Duration{0, 0, 0}, "+++"},
		{"burst then refused", 1, 2, []time.Duration{0, 0, 0}, "++-"},
		{"refill at the rate", 2, 1, []time.Duration{0, 0, 500 * time.Millisecond, 600 * time.Millisecond}, "+-+-"},
		{"refill capped at the burst", 10, 2, []time.Duration{0, 0, 10 * time.Second, 10 * time.Second, 10 * time.Second}, "++++-"},
		{"a clock going back refills nothing", 1, 1, []time.Duration{time.Second, 0}, "+-"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tokenBucket{rate: tt.rate, burst: float64(tt.burst), tokens: float64(tt.burst), last: t0}
			var got strings.Builder
			for _, d := range tt.at {
				if b.take(t0.Add(d)) {
					got.WriteByte('+')
				} else {
					got.WriteByte('-')
				}
			}
			if got.String() != tt.want {
				t.Errorf("takes = %s, want %s", got.String(), tt.want)
			}
		})
	}
}

// TestOriginProxyLogsAndLimits checks the proxy's log, byte counts and
// 429 answer against a stand-in origin (no registry needed).
func TestOriginProxyLogsAndLimits(t *testing.T) {
	blob := strings.Repeat("x", 1000)
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, blob)
	}))
	defer origin.Close()
	o, err := NewOriginProxy(strings.TrimPrefix(origin.URL, "http://"), RateLimit{PerSecond: 0.001, Burst: 1, RetryAfter: 7 * time.Second, MessageDelay: true})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	var statuses []int
	var last string
	for _, p := range []string{"/v2/", "/v2/ns/x/blobs/sha256:ab", "/v2/ns/x/blobs/sha256:cd"} {
		resp, err := http.Get(o.URL() + p)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		statuses = append(statuses, resp.StatusCode)
		last = string(body)
		if resp.StatusCode == http.StatusTooManyRequests && resp.Header.Get("Retry-After") != "7" {
			t.Errorf("Retry-After = %q, want 7", resp.Header.Get("Retry-After"))
		}
	}
	if want := []int{200, 200, 429}; !slices.Equal(statuses, want) {
		t.Fatalf("statuses = %v, want %v", statuses, want)
	}
	if !strings.Contains(last, `"TOOMANYREQUESTS"`) || !strings.Contains(last, "retry after 7 seconds") {
		t.Errorf("429 body = %s, want code TOOMANYREQUESTS and the delay", last)
	}
	s := o.Stats()
	if s.Kinds["ping"] != 1 || s.Kinds["GET blob"] != 2 {
		t.Errorf("kinds = %v, want 1 ping (free) and 2 blob GETs (the second refused)", s.Kinds)
	}
	if s.Requests != 3 || s.Limited != 1 || s.BlobGets != 1 || s.BlobBytes != 1000 || s.PeakInflight != 1 || s.PeakConns < 1 {
		t.Errorf("stats = %+v, want 3 requests, 1 limited, 1 blob GET of 1000 bytes, peak 1 in flight", s)
	}
	if o.Sent() != 2000+int64(len(last)) {
		t.Errorf("sent = %d, want %d", o.Sent(), 2000+len(last))
	}
	o.Reset()
	if s := o.Stats(); s.Requests != 0 {
		t.Errorf("after Reset: %+v, want an empty log", s)
	}
}
