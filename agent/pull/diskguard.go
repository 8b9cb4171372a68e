package pull

import (
	"context"
	"fmt"
	"sync"
	"syscall"

	"github.com/docker/go-units"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/auth"
)

// diskGuard refuses to start a pull whose compressed size, plus a margin,
// exceeds the free space of the filesystem holding the daemon's data root:
// a clear 'disk' failure instead of a disk filled mid-pull.
type diskGuard struct {
	margin   int64
	platform string

	once    sync.Once
	root    string
	rootErr error
}

// check returns a *pullError of class disk when img does not fit, nil when
// it fits, and a note (not an error) when the guard cannot judge.
func (g *diskGuard) check(ctx context.Context, e engine.Engine, img config.Image, creds auth.Credentials) (note string, err error) {
	g.once.Do(func() { g.root, g.rootErr = e.RootDir(ctx) })
	if g.rootErr != nil || g.root == "" {
		return fmt.Sprintf("disk guard off: the daemon's data root is unknown (%v)", g.rootErr), nil
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(g.root, &st); err != nil {
		return fmt.Sprintf("disk guard off: cannot see the daemon's data root %s from here (%v)", g.root, err), nil
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	size, err := compressedSize(ctx, img, creds, g.platform)
	if err != nil {
		return fmt.Sprintf("disk guard skipped: could not read the manifest of %s (%v)", img.Ref, err), nil
	}
	if size+g.margin > free {
		return "", &pullError{Class: ClassDisk, Err: fmt.Errorf("not pulling %s: it needs %s compressed plus a %s margin, and only %s is free on %s (the daemon's data root); free space or lower %s",
			img.Ref, units.BytesSize(float64(size)), units.BytesSize(float64(g.margin)), units.BytesSize(float64(free)), g.root, config.KeyDiskMargin)}
	}
	return "", nil
}

// compressedSize reads the image's manifest (for platform, from an index)
// and adds up its layers and config.
func compressedSize(ctx context.Context, img config.Image, creds auth.Credentials, platform string) (int64, error) {
	opts, nopts, closeTr := registryOptions(ctx, img, creds)
	defer closeTr()
	ref, err := name.ParseReference(img.Ref, nopts...)
	if err != nil {
		return 0, err
	}
	if platform != "" {
		p, err := v1.ParsePlatform(platform)
		if err != nil {
			return 0, err
		}
		opts = append(opts, remote.WithPlatform(*p))
	}
	desc, err := remote.Get(ref, opts...)
	if err != nil {
		return 0, err
	}
	im, err := desc.Image()
	if err != nil {
		return 0, err
	}
	m, err := im.Manifest()
	if err != nil {
		return 0, err
	}
	total := m.Config.Size
	for _, l := range m.Layers {
		total += l.Size
	}
	return total, nil
}
