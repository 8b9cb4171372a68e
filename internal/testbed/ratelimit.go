package testbed

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// RateLimit is a token bucket on requests: PerSecond tokens a second, at
// most Burst held; a request that finds no token is answered 429 with
// Retry-After, as GHCR and Docker Hub answer above their limits. A zero
// PerSecond limits nothing.
type RateLimit struct {
	PerSecond float64
	Burst     int
	// RetryAfter is the Retry-After header's value (default 1 s). The
	// daemon drops the header; the body names no delay unless
	// MessageDelay is set, as Docker Hub's does not.
	RetryAfter time.Duration
	// MessageDelay also writes "retry after N seconds" into the error
	// message, which is what the daemon passes on to its client.
	MessageDelay bool
	// Everything counts every request against the bucket. By default
	// only GETs of manifests and blobs count, as Docker Hub counts
	// pulls: a HEAD, the /v2/ ping and the token endpoint are free.
	Everything bool
}

// counts reports whether the limit counts a request.
func (l RateLimit) counts(method, path string) bool {
	if l.Everything {
		return true
	}
	return method == http.MethodGet && (strings.Contains(path, "/manifests/") || strings.Contains(path, "/blobs/"))
}

// OriginRequest is one request the origin proxy answered.
type OriginRequest struct {
	Start, End time.Time
	Method     string
	Path       string
	Status     int
	// Bytes is the response body's length as sent.
	Bytes int64
}

// Blob reports whether the request fetched a blob's content (GET
// /v2/<name>/blobs/<digest>).
func (r OriginRequest) Blob() bool {
	return r.Method == http.MethodGet && strings.Contains(r.Path, "/blobs/sha256:")
}

// OriginStats sums an origin proxy's log.
type OriginStats struct {
	Requests int `json:"requests"`
	// Limited is how many requests were answered 429.
	Limited int `json:"limited_429"`
	// Bytes is every response body byte sent; BlobBytes those of blob
	// GETs that succeeded, BlobGets their count.
	Bytes     int64 `json:"bytes"`
	BlobBytes int64 `json:"blob_bytes"`
	BlobGets  int   `json:"blob_gets"`
	// PeakConns is the most TCP connections open at once; PeakInflight
	// the most requests being answered at once, PeakBlobs the most blob
	// GETs.
	PeakConns    int `json:"peak_conns"`
	PeakInflight int `json:"peak_inflight"`
	PeakBlobs    int `json:"peak_blob_gets"`
	// Kinds counts the requests by kind: token, ping, HEAD manifest, GET
	// manifest, HEAD blob, GET blob, other.
	Kinds map[string]int `json:"kinds"`
}

// Kind names what a request was for.
func (r OriginRequest) Kind() string {
	switch {
	case r.Path == "/v2/" || r.Path == "/v2":
		return "ping"
	case !strings.HasPrefix(r.Path, "/v2/"):
		return "token"
	case strings.Contains(r.Path, "/manifests/"):
		return r.Method + " manifest"
	case strings.Contains(r.Path, "/blobs/"):
		return r.Method + " blob"
	}
	return "other"
}

// OriginProxy is an HTTP reverse proxy in front of an origin registry, the
// front door every host or cache goes through: its request log is the
// origin's (method, path, status and bytes of each request), it counts
// concurrent connections and requests, and it applies a RateLimit.
type OriginProxy struct {
	// Addr is the proxy's host:port on loopback.
	Addr string
	srv  *http.Server
	now  func() time.Time
	main *httputil.ReverseProxy // to the origin

	sent atomic.Int64 // body bytes sent, for sampling over time

	mu        sync.Mutex // guards everything below
	routes    map[string]*httputil.ReverseProxy
	log       []OriginRequest
	bucket    tokenBucket
	limit     RateLimit
	conns     int
	inflight  int
	blobs     int
	peakConns int
	peakInfl  int
	peakBlobs int
}

// NewOriginProxy starts a proxy to the registry at upstream (host:port)
// on a free loopback port, limiting requests by limit.
func NewOriginProxy(upstream string, limit RateLimit) (*OriginProxy, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: upstream})
	// Many hosts at once: keep enough idle connections to the origin
	// that the proxy does not become the bottleneck it measures.
	rp.Transport = &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}
	o := &OriginProxy{Addr: fmt.Sprintf("127.0.0.1:%d", port), now: time.Now, main: rp}
	o.SetLimit(limit)
	o.srv = &http.Server{
		Addr: o.Addr, ReadHeaderTimeout: 10 * time.Second,
		Handler:   http.HandlerFunc(o.serve),
		ConnState: o.connState,
	}
	ln, err := net.Listen("tcp", o.Addr)
	if err != nil {
		return nil, fmt.Errorf("origin proxy on %s: %w", o.Addr, err)
	}
	go func() { _ = o.srv.Serve(ln) }()
	return o, nil
}

// Route sends requests whose path starts with pathPrefix to upstream
// (host:port) instead, unlimited but logged: the origin's token endpoint,
// which GHCR serves on the registry's own host (ghcr.io/token).
func (o *OriginProxy) Route(pathPrefix, upstream string) {
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: upstream})
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.routes == nil {
		o.routes = map[string]*httputil.ReverseProxy{}
	}
	o.routes[pathPrefix] = rp
}

// Prefix returns the image prefix of namespace ns through the proxy.
func (o *OriginProxy) Prefix(ns string) string { return o.Addr + "/" + ns }

// URL is the proxy's base URL, for a cache's proxy.remoteurl.
func (o *OriginProxy) URL() string { return "http://" + o.Addr }

// SetLimit replaces the rate limit; the bucket starts full.
func (o *OriginProxy) SetLimit(l RateLimit) {
	if l.RetryAfter <= 0 {
		l.RetryAfter = time.Second
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.limit = l
	o.bucket = tokenBucket{rate: l.PerSecond, burst: float64(l.Burst), tokens: float64(l.Burst), last: o.now()}
}

// Reset clears the log and the peaks and refills the bucket; connections
// and requests still open stay counted.
func (o *OriginProxy) Reset() {
	o.mu.Lock()
	o.log = nil
	o.peakConns, o.peakInfl, o.peakBlobs = o.conns, o.inflight, o.blobs
	o.bucket.tokens, o.bucket.last = o.bucket.burst, o.now()
	o.mu.Unlock()
}

// Sent is the body bytes sent since the proxy started (not reset), for
// sampling a bandwidth over time.
func (o *OriginProxy) Sent() int64 { return o.sent.Load() }

// InFlight is how many requests are being answered now.
func (o *OriginProxy) InFlight() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.inflight
}

// Requests returns the log since the last Reset.
func (o *OriginProxy) Requests() []OriginRequest {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]OriginRequest(nil), o.log...)
}

// Stats sums the log since the last Reset.
func (o *OriginProxy) Stats() OriginStats {
	o.mu.Lock()
	s := OriginStats{PeakConns: o.peakConns, PeakInflight: o.peakInfl, PeakBlobs: o.peakBlobs, Kinds: map[string]int{}}
	log := o.log
	o.mu.Unlock()
	for _, r := range log {
		s.Requests++
		s.Kinds[r.Kind()]++
		s.Bytes += r.Bytes
		if r.Status == http.StatusTooManyRequests {
			s.Limited++
		}
		if r.Blob() && r.Status == http.StatusOK {
			s.BlobBytes += r.Bytes
			s.BlobGets++
		}
	}
	return s
}

// Close stops the proxy.
func (o *OriginProxy) Close() error { return o.srv.Close() }

func (o *OriginProxy) connState(_ net.Conn, st http.ConnState) {
	o.mu.Lock()
	defer o.mu.Unlock()
	switch st {
	case http.StateNew:
		o.conns++
		o.peakConns = max(o.peakConns, o.conns)
	case http.StateClosed, http.StateHijacked:
		o.conns--
	}
}

func (o *OriginProxy) serve(w http.ResponseWriter, r *http.Request) {
	rec := OriginRequest{Start: o.now(), Method: r.Method, Path: r.URL.Path}
	o.mu.Lock()
	rp, routed := o.main, false
	for p, route := range o.routes {
		if strings.HasPrefix(r.URL.Path, p) {
			rp, routed = route, true
		}
	}
	allowed := routed || !o.limit.counts(r.Method, r.URL.Path) || o.bucket.take(rec.Start)
	limit := o.limit
	blob := rec.Blob() && allowed
	o.inflight++
	o.peakInfl = max(o.peakInfl, o.inflight)
	if blob {
		o.blobs++
		o.peakBlobs = max(o.peakBlobs, o.blobs)
	}
	o.mu.Unlock()
	cw := &countingWriter{ResponseWriter: w, sent: &o.sent}
	if allowed {
		rp.ServeHTTP(cw, r)
	} else {
		tooMany(cw, limit)
	}
	rec.End, rec.Status, rec.Bytes = o.now(), cw.status, cw.n
	if rec.Status == 0 {
		rec.Status = http.StatusOK
	}
	o.mu.Lock()
	o.inflight--
	if blob {
		o.blobs--
	}
	o.log = append(o.log, rec)
	o.mu.Unlock()
}

// tooMany answers as a distribution registry answers above a limit: 429,
// Retry-After, and an error of code TOOMANYREQUESTS (which the daemon
// does not retry and reports as "toomanyrequests: <message>").
func tooMany(w http.ResponseWriter, l RateLimit) {
	secs := max(1, int(l.RetryAfter.Round(time.Second)/time.Second))
	msg := "rate limit exceeded"
	if l.MessageDelay {
		msg += fmt.Sprintf("; retry after %d seconds", secs)
	}
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusTooManyRequests)
	_, _ = fmt.Fprintf(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":%q,"detail":null}]}`+"\n", msg)
}

// countingWriter counts the body bytes and records the status.
type countingWriter struct {
	http.ResponseWriter
	sent   *atomic.Int64
	status int
	n      int64
}

func (c *countingWriter) WriteHeader(code int) {
	if c.status == 0 {
		c.status = code
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	c.sent.Add(int64(n))
	return n, err
}

// Flush lets the reverse proxy stream a blob as it arrives.
func (c *countingWriter) Flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// tokenBucket holds up to burst tokens, refilled at rate a second. A zero
// rate never limits.
type tokenBucket struct {
	rate, burst, tokens float64
	last                time.Time
}

// take spends a token at now, reporting whether there was one.
func (b *tokenBucket) take(now time.Time) bool {
	if b.rate <= 0 {
		return true
	}
	if now.After(b.last) {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
