package testbed

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// TCPProxy is a toxiproxy proxy on loopback in front of an upstream
// address, to slow or stall the bytes between the Docker daemon and a
// registry.
type TCPProxy struct {
	// Addr is the proxy's host:port.
	Addr string
	p    *toxiproxy.Proxy
}

// NewTCPProxy starts a proxy to upstream (host:port) on a free port.
func NewTCPProxy(name, upstream string) (*TCPProxy, error) {
	// toxiproxy's toxics log through zerolog's global logger; keep test
	// output readable.
	zerolog.SetGlobalLevel(zerolog.WarnLevel)
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	p := toxiproxy.NewProxy(srv, name, "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		return nil, fmt.Errorf("starting proxy to %s: %w", upstream, err)
	}
	return &TCPProxy{Addr: p.Listen, p: p}, nil
}

// Prefix returns the image prefix of namespace ns through the proxy.
func (t *TCPProxy) Prefix(ns string) string { return t.Addr + "/" + ns }

// Throttle limits the bytes from the registry to kbps KB/s.
func (t *TCPProxy) Throttle(kbps int) error {
	return t.add(fmt.Sprintf(`{"name":"throttle","type":"bandwidth","stream":"downstream","toxicity":1,"attributes":{"rate":%d}}`, kbps))
}

// Shape adds latencyMs of latency in each direction and limits each
// connection to mbit Mbit/s from the registry: a CDN-backed registry seen
// over a WAN.
func (t *TCPProxy) Shape(latencyMs, mbit int) error {
	for _, dir := range []string{"upstream", "downstream"} {
		if err := t.add(fmt.Sprintf(`{"name":"latency-%s","type":"latency","stream":%q,"toxicity":1,"attributes":{"latency":%d}}`, dir, dir, latencyMs)); err != nil {
			return err
		}
	}
	return t.add(fmt.Sprintf(`{"name":"bandwidth","type":"bandwidth","stream":"downstream","toxicity":1,"attributes":{"rate":%d}}`, mbit*1000/8))
}

// Latency adds ms milliseconds of latency in each direction and no
// bandwidth limit: the round trip of a link shaped elsewhere (SharedLink).
func (t *TCPProxy) Latency(ms int) error {
	for _, dir := range []string{"upstream", "downstream"} {
		if err := t.add(fmt.Sprintf(`{"name":"latency-%s","type":"latency","stream":%q,"toxicity":1,"attributes":{"latency":%d}}`, dir, dir, ms)); err != nil {
			return err
		}
	}
	return nil
}

// Stall stops forwarding anything from the registry, keeping every
// connection open: a pull in progress hangs mid-blob.
func (t *TCPProxy) Stall() error {
	return t.add(`{"name":"stall","type":"timeout","stream":"downstream","toxicity":1,"attributes":{"timeout":0}}`)
}

// ResetAfter resets every connection (TCP RST) ms milliseconds after it
// opened: with Throttle, a blob download breaks in the middle.
func (t *TCPProxy) ResetAfter(ms int) error {
	return t.add(fmt.Sprintf(`{"name":"reset","type":"reset_peer","stream":"downstream","toxicity":1,"attributes":{"timeout":%d}}`, ms))
}

// Down closes the proxy's port: the registry behind it refuses
// connections until Up.
func (t *TCPProxy) Down() { t.p.Stop() }

// Up listens again on the same port.
func (t *TCPProxy) Up() error {
	if err := t.p.Start(); err != nil {
		return fmt.Errorf("proxy back on %s: %w", t.Addr, err)
	}
	return nil
}

// Clear removes every toxic.
func (t *TCPProxy) Clear() {
	t.p.Toxics.ResetToxics(context.Background())
}

// Close stops the proxy.
func (t *TCPProxy) Close() { t.p.Stop() }

func (t *TCPProxy) add(js string) error {
	if _, err := t.p.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
		return fmt.Errorf("adding toxic %s: %w", js, err)
	}
	return nil
}

// HTTPProxy is a reverse proxy on loopback in front of a registry that
// records every request with its arrival time and can answer with a fault
// instead of forwarding.
type HTTPProxy struct {
	// Addr is the proxy's host:port.
	Addr string
	srv  *http.Server

	mu       sync.Mutex
	requests []ProxiedRequest
	fault    *Fault
}

// ProxiedRequest is one request the proxy saw.
type ProxiedRequest struct {
	Time   time.Time
	Method string
	Path   string
	Status int // the fault's status, or 0 when forwarded
	// Authorization is the request's Authorization header.
	Authorization string
}

// Fault is an answer the proxy gives instead of forwarding, to requests
// whose path contains Match.
type Fault struct {
	Match  string
	Status int
	Header map[string]string
	Body   string
}

// NewHTTPProxy starts a proxy to the registry at upstream (host:port).
func NewHTTPProxy(upstream string) (*HTTPProxy, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	u := &url.URL{Scheme: "http", Host: upstream}
	rp := httputil.NewSingleHostReverseProxy(u)
	h := &HTTPProxy{Addr: fmt.Sprintf("127.0.0.1:%d", port)}
	h.srv = &http.Server{Addr: h.Addr, ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		f := h.fault
		rec := ProxiedRequest{Time: time.Now(), Method: r.Method, Path: r.URL.Path, Authorization: r.Header.Get("Authorization")}
		if f != nil && strings.Contains(r.URL.Path, f.Match) {
			rec.Status = f.Status
		}
		h.requests = append(h.requests, rec)
		h.mu.Unlock()
		if rec.Status != 0 {
			for k, v := range f.Header {
				w.Header().Set(k, v)
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(f.Status)
			_, _ = w.Write([]byte(f.Body))
			return
		}
		rp.ServeHTTP(w, r)
	})}
	ready := make(chan error, 1)
	go func() {
		ln, err := listenTCP(h.Addr)
		ready <- err
		if err == nil {
			_ = h.srv.Serve(ln)
		}
	}()
	if err := <-ready; err != nil {
		return nil, err
	}
	return h, nil
}

// Prefix returns the image prefix of namespace ns through the proxy.
func (h *HTTPProxy) Prefix(ns string) string { return h.Addr + "/" + ns }

// SetFault makes the proxy answer matching requests with f; nil forwards
// everything again.
func (h *HTTPProxy) SetFault(f *Fault) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fault = f
}

// Requests returns the requests seen so far.
func (h *HTTPProxy) Requests() []ProxiedRequest {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]ProxiedRequest(nil), h.requests...)
}

// Close stops the proxy.
func (h *HTTPProxy) Close() error { return h.srv.Close() }
