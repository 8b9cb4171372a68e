package testbed

import (
	"context"
	"fmt"
	"strconv"
)

// ProxyUpstream is the registry a pull-through cache fetches from:
// distribution's proxy mode (proxy.remoteurl, proxy.username,
// proxy.password), as an in-region cache in front of GHCR or a private
// origin runs it.
//
// What distribution 2.8 does with it (registry/proxy in its source, and
// measured by internal/testbed/fleet): a tag is resolved at the upstream
// on every request (a HEAD there), a manifest by digest and a blob are
// served from the cache's storage once stored. A blob the cache lacks is
// fetched from the upstream twice, once to store it and once to stream
// it to the client, and a request for a blob that is still being stored
// streams it from the upstream a further time: distribution coalesces no
// misses. Its credentials go only to a bearer-token realm that the
// upstream's /v2/ named when the cache started: an upstream with basic
// auth is asked anonymously (401, and hosts see "manifest unknown").
type ProxyUpstream struct {
	// RemoteURL is the upstream's base URL, http://host:port (plain HTTP
	// works) or https://host.
	RemoteURL string
	// Username and Password are the upstream's credentials; empty pulls
	// anonymously. They go into the cache's configuration file (mode
	// 0600), as they do on a real cache.
	Username, Password string
}

// config is the proxy section of the registry's configuration.
func (p *ProxyUpstream) config() string {
	s := "proxy:\n  remoteurl: " + strconv.Quote(p.RemoteURL) + "\n"
	if p.Username != "" {
		s += "  username: " + strconv.Quote(p.Username) + "\n  password: " + strconv.Quote(p.Password) + "\n"
	}
	return s
}

// StartProxyCache starts a pull-through cache of upstream on a free
// loopback port: Debian's docker-registry in proxy mode with its own
// empty storage. htpasswd, if set, is the cache's own basic auth (the
// credentials hosts use for it, which need not be the upstream's).
func (b *Bed) StartProxyCache(ctx context.Context, name string, upstream ProxyUpstream, htpasswd string) (*Registry, error) {
	if upstream.RemoteURL == "" {
		return nil, fmt.Errorf("pull-through cache %s: no upstream URL", name)
	}
	return b.StartRegistry(ctx, name, RegistryOptions{Proxy: &upstream, Htpasswd: htpasswd})
}
