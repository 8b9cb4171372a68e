package engine

import (
	"context"
	"errors"
	"io"

	"github.com/opencontainers/go-digest"

	"github.com/molecule-ai/pull-agent/auth"
)

// Engine is the part of the Docker Engine API the agent uses. The real
// implementation is DockerEngine; unit tests use a fake.
type Engine interface {
	// Ping checks that the daemon answers.
	Ping(ctx context.Context) error
	// ImagePull starts a pull and returns the daemon's JSON message stream.
	// A failure inside the stream is not an error here: decode the stream.
	ImagePull(ctx context.Context, ref string, opts PullOptions) (io.ReadCloser, error)
	// ImageInspect describes a local image; ErrImageNotFound if absent.
	ImageInspect(ctx context.Context, ref string) (ImageInfo, error)
	// DistributionInspect asks the registry, through the daemon, which
	// manifest ref names now, without pulling.
	DistributionInspect(ctx context.Context, ref string, creds auth.Credentials) (RemoteInfo, error)
	// ImageTag gives the local image source the name target.
	ImageTag(ctx context.Context, source, target string) error
	// ImageRemove removes the name ref (and the image when that was its
	// last name). It never forces: an image a container uses stays.
	ImageRemove(ctx context.Context, ref string) (RemoveResult, error)
	// ContainerImageIDs returns the IDs of the images of every container,
	// running or stopped.
	ContainerImageIDs(ctx context.Context) (map[string]bool, error)
	// RootDir is the daemon's data root (docker info DockerRootDir).
	RootDir(ctx context.Context) (string, error)
}

// RemoveResult is what ImageRemove did.
type RemoveResult struct {
	Untagged []string
	Deleted  []string // image and layer IDs deleted
}

// RemoteInfo is what the registry serves for a reference.
type RemoteInfo struct {
	Digest    digest.Digest
	Platforms []string // os/arch[/variant]
}

// PullOptions are the options of one pull.
type PullOptions struct {
	// Platform is os/arch[/variant], or empty for the daemon's own.
	Platform string
	// Credentials are sent as X-Registry-Auth unless anonymous.
	Credentials auth.Credentials
}

// ImageInfo is what the agent needs to know about a local image.
type ImageInfo struct {
	ID          string
	RepoTags    []string
	RepoDigests []string
	Size        int64
}

// ErrImageNotFound is returned by Engine.ImageInspect for an image the
// daemon does not have.
var ErrImageNotFound = errors.New("image not present in the Docker daemon")

// ErrDaemonUnreachable wraps errors from an Engine that could not reach the
// Docker daemon at all.
var ErrDaemonUnreachable = errors.New("cannot reach the Docker daemon")
