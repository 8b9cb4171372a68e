package testbed

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/docker/docker/client"

	"github.com/molecule-ai/pull-agent/internal/safetext"
)

// SkopeoBin is Debian's skopeo, which copies images between registries.
const SkopeoBin = "skopeo"

// ImagePlatform returns os/arch[/variant] of the image ref names in the
// daemon at dockerHost, as the daemon reports it.
func ImagePlatform(ctx context.Context, dockerHost, ref string) (string, error) {
	cli, err := client.NewClientWithOpts(client.WithHost(dockerHost), client.WithAPIVersionNegotiation())
	if err != nil {
		return "", err
	}
	defer cli.Close()
	res, err := cli.ImageInspect(ctx, ref)
	if err != nil {
		return "", fmt.Errorf("inspecting %s: %w", ref, err)
	}
	p := res.Os + "/" + res.Architecture
	if res.Variant != "" {
		p += "/" + res.Variant
	}
	return p, nil
}

// DockerCLI runs the docker CLI against the daemon at dockerHost with a
// minimal environment and a config directory of its own under dir (no
// credentials), and returns its combined output.
func DockerCLI(ctx context.Context, dockerHost, dir string, args ...string) (string, error) {
	bin, err := exec.LookPath("docker")
	if err != nil {
		return "", fmt.Errorf("the docker CLI: %w (apt-get install docker.io)", err)
	}
	cfg := filepath.Join(dir, "docker-cli")
	if err := os.MkdirAll(cfg, 0o700); err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + dir, "DOCKER_CONFIG=" + cfg, "DOCKER_HOST=" + dockerHost}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("docker %s: %w\n%s", strings.Join(args, " "), err, safetext.Tail(string(out), 2000))
	}
	return string(out), nil
}

// MirrorByDockerPush copies src to dst (references with registry) the
// way an operator often does: docker pull, docker tag, docker push through
// the daemon at dockerHost. For a multi-platform image the classic store
// uploads only the platform it pulled, under a new manifest digest. The
// containerd store pushes the index itself, and Docker 26 refuses when it
// lacks any content the index names (attestations included); there an
// operator pulls the platform's manifest by digest (src as name@digest),
// which is pushed as it is.
func MirrorByDockerPush(ctx context.Context, dockerHost, dir, src, dst string) error {
	for _, args := range [][]string{{"pull", "-q", src}, {"tag", src, dst}, {"push", dst}} {
		if _, err := DockerCLI(ctx, dockerHost, dir, args...); err != nil {
			return err
		}
	}
	return nil
}

// MirrorBySkopeo copies src to dst (references with registry, plain HTTP)
// with skopeo copy: without all, only this machine's platform is copied
// (its manifest becomes the tag's); with all, the index and every image.
func MirrorBySkopeo(ctx context.Context, src, dst string, all bool) error {
	bin, err := exec.LookPath(SkopeoBin)
	if err != nil {
		return fmt.Errorf("%s: %w (apt-get install skopeo)", SkopeoBin, err)
	}
	args := []string{"copy", "--src-tls-verify=false", "--dest-tls-verify=false"}
	if all {
		args = append(args, "--all")
	}
	dir, err := os.MkdirTemp("", "pa-skopeo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cmd := exec.CommandContext(ctx, bin, append(args, "docker://"+src, "docker://"+dst)...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + dir, "TMPDIR=" + dir}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("skopeo %s: %w\n%s", strings.Join(cmd.Args[1:], " "), err, safetext.Tail(string(out), 2000))
	}
	return nil
}

// SkopeoAvailable reports why skopeo cannot run here, or nil.
func SkopeoAvailable() error {
	if _, err := exec.LookPath(SkopeoBin); err != nil {
		return errors.New("skopeo not found on PATH: run 'make deps' (apt-get install skopeo)")
	}
	return nil
}
