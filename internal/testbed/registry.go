package testbed

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/crypto/bcrypt"
)

// Registry is a running distribution registry of the bed.
type Registry struct {
	Name string
	// Addr is host:port on loopback, e.g. 127.0.0.1:40123. Docker treats
	// 127.0.0.0/8 registries as insecure (plain HTTP allowed).
	Addr string
	// Root is the registry's storage root directory.
	Root string
	// LogPath is the registry's log (access log included).
	LogPath string

	bed      *Bed
	cfgPath  string
	inBedNet bool
	netns    string // RegistryOptions.Netns
	proc     *proc
}

// RegistryOptions configures a registry.
type RegistryOptions struct {
	// Htpasswd, if set, is the content of an htpasswd file (bcrypt entries)
	// and turns on basic auth.
	Htpasswd string
	// Token, if set, turns on token auth (the registry verifies JWTs signed
	// by a key whose certificate is in RootCertBundle).
	Token *TokenAuth
	// Root reuses another registry's storage (its Root).
	Root string
	// Addr fixes the listening address (default: a free loopback port).
	Addr string
	// InBedNetwork runs the registry in the daemon's private network
	// (Options.PrivateNetwork); it is reachable only from there.
	InBedNetwork bool
	// Netns runs the registry in the named network namespace (ip netns
	// exec), e.g. a SharedLink's, where Addr (required then) is one of
	// the namespace's addresses; it must be reachable from the machine.
	Netns string
	// Proxy, if set, makes the registry a pull-through cache of another
	// registry (see proxycache.go).
	Proxy *ProxyUpstream
}

// TokenAuth configures a registry's token authentication.
type TokenAuth struct {
	Realm, Service, Issuer string
	// RootCertBundle is the PEM of the certificates that sign tokens.
	RootCertBundle []byte
}

// Registry returns the registry started under name, or nil.
func (b *Bed) Registry(name string) *Registry {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.registries[name]
}

// StartRegistry starts a registry on a free loopback port.
func (b *Bed) StartRegistry(ctx context.Context, name string, opts RegistryOptions) (*Registry, error) {
	var lastErr error
	for range 3 { // a free port can be taken between choosing and binding it
		r, err := b.startRegistry(ctx, name, opts)
		if err == nil {
			b.mu.Lock()
			b.registries[name] = r
			b.mu.Unlock()
			b.opts.Logf("registry %s ready at %s", name, r.Addr)
			return r, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

func (b *Bed) startRegistry(ctx context.Context, name string, opts RegistryOptions) (*Registry, error) {
	dir := filepath.Join(b.Dir, "registry-"+name)
	root := filepath.Join(dir, "storage")
	if opts.Root != "" {
		root = opts.Root
	}
	addr := opts.Addr
	if addr == "" && opts.Netns != "" {
		return nil, fmt.Errorf("registry %s in network namespace %s: RegistryOptions.Addr is required (an address of the namespace and a port)", name, opts.Netns)
	}
	if addr == "" {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		addr = fmt.Sprintf("127.0.0.1:%d", port)
	}
	for _, d := range []string{dir, root} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	secret := make([]byte, 16)
	_, _ = rand.Read(secret)
	r := &Registry{Name: name, Addr: addr, Root: root, inBedNet: opts.InBedNetwork, netns: opts.Netns, LogPath: filepath.Join(b.Dir, "logs", "registry-"+name+".log")}
	var cfg strings.Builder
	fmt.Fprintf(&cfg, `version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
  secret: %s
`, root, r.Addr, hex.EncodeToString(secret))
	if opts.Htpasswd != "" {
		hp := filepath.Join(dir, "htpasswd")
		if err := os.WriteFile(hp, []byte(opts.Htpasswd), 0o600); err != nil {
			return nil, err
		}
		fmt.Fprintf(&cfg, "auth:\n  htpasswd:\n    realm: testbed\n    path: %s\n", hp)
	}
	if t := opts.Token; t != nil {
		bundle := filepath.Join(dir, "token-roots.pem")
		if err := os.WriteFile(bundle, t.RootCertBundle, 0o644); err != nil {
			return nil, err
		}
		fmt.Fprintf(&cfg, "auth:\n  token:\n    realm: %s\n    service: %s\n    issuer: %s\n    rootcertbundle: %s\n", t.Realm, t.Service, t.Issuer, bundle)
	}
	if opts.Proxy != nil {
		cfg.WriteString(opts.Proxy.config())
	}
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o600); err != nil {
		return nil, err
	}
	r.bed, r.cfgPath = b, cfgPath
	if err := r.Start(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

// Start starts the registry process (again, after Stop) on the same
// address and storage.
func (r *Registry) Start(ctx context.Context) error {
	var p *proc
	var err error
	ready := func(ctx context.Context) bool {
		return httpOK(ctx, &http.Client{Timeout: 2 * time.Second}, "http://"+r.Addr+"/v2/")
	}
	if r.inBedNet {
		pid, err := r.bed.DockerdPID()
		if err != nil {
			return fmt.Errorf("the daemon's network: %w", err)
		}
		p, err = r.bed.spawn("registry-"+r.Name, "nsenter", fmt.Sprintf("--net=/proc/%d/ns/net", pid), "--", RegistryBin, "serve", r.cfgPath)
		if err != nil {
			return err
		}
		// Unreachable from here: wait for the registry to say it listens.
		ready = func(context.Context) bool {
			return strings.Contains(r.bed.logTail("registry-"+r.Name), "listening on "+r.Addr)
		}
	} else if r.netns != "" {
		if p, err = r.bed.spawn("registry-"+r.Name, "ip", "netns", "exec", r.netns, RegistryBin, "serve", r.cfgPath); err != nil {
			return err
		}
	} else if p, err = r.bed.spawn("registry-"+r.Name, RegistryBin, "serve", r.cfgPath); err != nil {
		return err
	}
	r.proc = p
	if err := waitReady(ctx, p, 30*time.Second, ready); err != nil {
		p.stop()
		return fmt.Errorf("registry %s did not become ready: %w\n%s", r.Name, err, r.bed.logTail("registry-"+r.Name))
	}
	return nil
}

// Stop stops the registry; its storage and address stay for Start.
func (r *Registry) Stop() error { return r.proc.stop() }

// BlobPath is where the registry stores the blob with digest d.
func (r *Registry) BlobPath(d digest.Digest) string {
	hexd := d.Encoded()
	return filepath.Join(r.Root, "docker", "registry", "v2", "blobs", d.Algorithm().String(), hexd[:2], hexd, "data")
}

// DeleteBlob removes a blob's data behind the registry's back, so that a
// pull finds the manifest but fails when it fetches the blob.
func (r *Registry) DeleteBlob(d digest.Digest) error {
	if err := os.Remove(r.BlobPath(d)); err != nil {
		return fmt.Errorf("deleting blob %s from registry %s: %w", d, r.Name, err)
	}
	return nil
}

func listenTCP(addr string) (net.Listener, error) {
	return net.Listen("tcp", addr)
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	addr, ok := l.Addr().(*net.TCPAddr)
	if !ok {
		return 0, errors.New("finding a free port: not a TCP address")
	}
	return addr.Port, nil
}

// Htpasswd returns htpasswd lines (bcrypt, as registry 2.8 requires) for
// users (name → password).
func Htpasswd(users map[string]string) (string, error) {
	var b strings.Builder
	for u, p := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(p), bcrypt.MinCost)
		if err != nil {
			return "", err
		}
		b.WriteString(u + ":" + string(h) + "\n")
	}
	return b.String(), nil
}
