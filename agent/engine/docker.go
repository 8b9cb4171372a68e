package engine

import (
	"context"
	"fmt"
	"io"
	"strings"

	cerrdefs "github.com/containerd/errdefs"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/client"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/auth"
)

// DockerEngine is the Engine backed by the Docker Engine API. It is the only
// code that imports the Docker SDK.
type DockerEngine struct {
	cli *client.Client
	ep  config.DockerEndpoint
}

var _ Engine = (*DockerEngine)(nil)

// NewDockerEngine returns an Engine for the daemon at ep.Host (for example
// unix:///var/run/docker.sock), negotiating the API version with it. With
// ep.TLSVerify it speaks TLS, verifies the daemon against ep's ca.pem and
// presents its cert.pem and key.pem. An address where registry credentials
// would cross the network in clear text is refused, as LoadConfig refuses
// it.
func NewDockerEngine(ep config.DockerEndpoint) (*DockerEngine, error) {
	if err := ep.Check(); err != nil {
		return nil, err
	}
	opts := []client.Opt{client.WithHost(ep.Host), client.WithAPIVersionNegotiation()}
	if ep.TLSVerify {
		opts = append(opts, client.WithTLSClientConfig(ep.CAFile(), ep.CertFile(), ep.KeyFile()))
	}
	cli, err := client.NewClientWithOpts(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker host %q: %w (set DOCKER_HOST to unix:///path/to/docker.sock or tcp://host:port)", ep.RedactedHost(), err)
	}
	return &DockerEngine{cli: cli, ep: ep}, nil
}

// Close releases the client's connections.
func (d *DockerEngine) Close() error { return d.cli.Close() }

// CloseIdleConnections drops the client's idle keep-alive connections to
// the daemon; the client stays usable (the SDK's Close does only that).
func (d *DockerEngine) CloseIdleConnections() { _ = d.cli.Close() }

func (d *DockerEngine) wrap(err error) error {
	if err == nil {
		return nil
	}
	host := d.ep.RedactedHost()
	msg := err.Error()
	switch {
	case !d.ep.TLSVerify && msg == "Error response from daemon: Client sent an HTTP request to an HTTPS server.":
		// What Go's TLS server answers to plain HTTP, verbatim.
		return fmt.Errorf("%w at %s: it speaks TLS (dockerd --tlsverify) and the agent does not: set %s=1 and %s to the directory of ca.pem, cert.pem and key.pem", ErrDaemonUnreachable, host, config.KeyDockerTLSVerify, config.KeyDockerCertPath)
	case !client.IsErrConnectionFailed(err):
		return err
	case d.ep.TLSVerify && (strings.Contains(msg, "server gave HTTP response to HTTPS client") || strings.Contains(msg, "first record does not look like a TLS handshake")):
		return fmt.Errorf("%w at %s: it does not speak TLS there, and %s is set: check the port (dockerd's TLS port is usually 2376) and that dockerd runs with --tlsverify", ErrDaemonUnreachable, host, config.KeyDockerTLSVerify)
	case d.ep.TLSVerify && strings.Contains(msg, "x509:"):
		return fmt.Errorf("%w at %s: its certificate does not verify against %s: %v (put the CA that signed the daemon's certificate there, and make sure the certificate names the host of %s)", ErrDaemonUnreachable, host, d.ep.CAFile(), err, config.KeyDockerHost)
	case d.ep.TLSVerify && strings.Contains(msg, "remote error: tls:"):
		return fmt.Errorf("%w at %s: the daemon refused this host's client certificate %s: %v (have it signed by the CA of the daemon's --tlscacert)", ErrDaemonUnreachable, host, d.ep.CertFile(), err)
	}
	return fmt.Errorf("%w at %s: %v (is dockerd running? is DOCKER_HOST right?)", ErrDaemonUnreachable, host, err)
}

// Ping implements Engine.
func (d *DockerEngine) Ping(ctx context.Context) error {
	_, err := d.cli.Ping(ctx)
	return d.wrap(err)
}

// ImagePull implements Engine.
func (d *DockerEngine) ImagePull(ctx context.Context, ref string, opts PullOptions) (io.ReadCloser, error) {
	enc, err := encodeAuth(opts.Credentials)
	if err != nil {
		return nil, err
	}
	rc, err := d.cli.ImagePull(ctx, ref, image.PullOptions{Platform: opts.Platform, RegistryAuth: enc})
	return rc, d.wrap(err)
}

// ImageInspect implements Engine.
func (d *DockerEngine) ImageInspect(ctx context.Context, ref string) (ImageInfo, error) {
	res, err := d.cli.ImageInspect(ctx, ref)
	if cerrdefs.IsNotFound(err) {
		return ImageInfo{}, fmt.Errorf("%s: %w", ref, ErrImageNotFound)
	}
	if err != nil {
		return ImageInfo{}, d.wrap(err)
	}
	return ImageInfo{ID: res.ID, RepoTags: res.RepoTags, RepoDigests: res.RepoDigests, Size: res.Size}, nil
}

// DistributionInspect implements Engine.
func (d *DockerEngine) DistributionInspect(ctx context.Context, ref string, creds auth.Credentials) (RemoteInfo, error) {
	enc, err := encodeAuth(creds)
	if err != nil {
		return RemoteInfo{}, err
	}
	res, err := d.cli.DistributionInspect(ctx, ref, enc)
	if err != nil {
		return RemoteInfo{}, d.wrap(err)
	}
	ri := RemoteInfo{Digest: res.Descriptor.Digest}
	for _, p := range res.Platforms {
		s := p.OS + "/" + p.Architecture
		if p.Variant != "" {
			s += "/" + p.Variant
		}
		ri.Platforms = append(ri.Platforms, s)
	}
	return ri, nil
}

// encodeAuth is the X-Registry-Auth value for c ("" for anonymous).
func encodeAuth(c auth.Credentials) (string, error) {
	if c.Anonymous() {
		return "", nil
	}
	enc, err := registry.EncodeAuthConfig(registry.AuthConfig{
		Username:      c.Username,
		Password:      c.Password.Reveal(),
		IdentityToken: c.IdentityToken.Reveal(),
		RegistryToken: c.RegistryToken.Reveal(),
	})
	if err != nil {
		return "", fmt.Errorf("encoding registry credentials: %w", err)
	}
	return enc, nil
}

// ImageTag implements Engine.
func (d *DockerEngine) ImageTag(ctx context.Context, source, target string) error {
	return d.wrap(d.cli.ImageTag(ctx, source, target))
}

// ImageRemove implements Engine.
func (d *DockerEngine) ImageRemove(ctx context.Context, ref string) (RemoveResult, error) {
	res, err := d.cli.ImageRemove(ctx, ref, image.RemoveOptions{Force: false, PruneChildren: true})
	if cerrdefs.IsNotFound(err) {
		return RemoveResult{}, fmt.Errorf("%s: %w", ref, ErrImageNotFound)
	}
	if err != nil {
		return RemoveResult{}, d.wrap(err)
	}
	var out RemoveResult
	for _, r := range res {
		if r.Untagged != "" {
			out.Untagged = append(out.Untagged, r.Untagged)
		}
		if r.Deleted != "" {
			out.Deleted = append(out.Deleted, r.Deleted)
		}
	}
	return out, nil
}

// ContainerImageIDs implements Engine.
func (d *DockerEngine) ContainerImageIDs(ctx context.Context) (map[string]bool, error) {
	cs, err := d.cli.ContainerList(ctx, container.ListOptions{All: true})
	if err != nil {
		return nil, d.wrap(err)
	}
	ids := make(map[string]bool, len(cs))
	for _, c := range cs {
		ids[c.ImageID] = true
	}
	return ids, nil
}

// RootDir implements Engine.
func (d *DockerEngine) RootDir(ctx context.Context) (string, error) {
	info, err := d.cli.Info(ctx)
	if err != nil {
		return "", d.wrap(err)
	}
	return info.DockerRootDir, nil
}
