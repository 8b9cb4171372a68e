package main

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sync/errgroup"
)

// workload is a set of images like the real ones, scaled down: one shared
// base layer and a unique layer per image, random (incompressible) bytes.
// The layers are generated once and cached as .tar.gz outside the checkout.
type workload struct {
	dir        string
	baseSize   int64
	uniqueSize int64
	count      int
}

// layers returns the cached base and unique layers, generating what is
// missing.
func (w workload) layers() (v1.Layer, []v1.Layer, error) {
	dir := filepath.Join(w.dir, fmt.Sprintf("base%dM-unique%dM", w.baseSize>>20, w.uniqueSize>>20))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, nil, err
	}
	base, err := cachedLayer(filepath.Join(dir, "base.tar.gz"), w.baseSize)
	if err != nil {
		return nil, nil, err
	}
	uniq := make([]v1.Layer, w.count)
	var g errgroup.Group
	g.SetLimit(runtime.NumCPU())
	for i := range w.count {
		g.Go(func() error {
			var err error
			uniq[i], err = cachedLayer(filepath.Join(dir, fmt.Sprintf("unique-%03d.tar.gz", i)), w.uniqueSize)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, nil, err
	}
	return base, uniq, nil
}

func cachedLayer(path string, size int64) (v1.Layer, error) {
	if err := writeRandomLayer(path, "payload.bin", size); err != nil {
		return nil, err
	}
	return tarball.LayerFromFile(path)
}

// writeRandomLayer writes, unless path exists, a gzip-compressed tar of
// one file named member holding size random (incompressible) bytes.
func writeRandomLayer(path, member string, size int64) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer f.Close()
	gz, _ := gzip.NewWriterLevel(f, gzip.BestSpeed)
	tw := tar.NewWriter(gz)
	if err := tw.WriteHeader(&tar.Header{Name: member, Mode: 0o644, Size: size, Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	if _, err := io.CopyN(tw, rand.Reader, size); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := gz.Close(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// push writes the workload to <registry>/<ns>/workspace-template-<rt>:latest
// for each runtime.
func (w workload) push(ctx context.Context, registry, ns string, runtimes []string) error {
	base, uniq, err := w.layers()
	if err != nil {
		return err
	}
	var g errgroup.Group
	g.SetLimit(4)
	for i, rt := range runtimes {
		g.Go(func() error {
			cf, _ := empty.Image.ConfigFile()
			cf = cf.DeepCopy()
			cf.OS, cf.Architecture = "linux", runtime.GOARCH
			cf.Config.Cmd = []string{"/bin/true"}
			img, err := mutate.ConfigFile(empty.Image, cf)
			if err == nil {
				img, err = mutate.AppendLayers(img, base, uniq[i%len(uniq)])
			}
			if err != nil {
				return err
			}
			ref, err := name.NewTag(registry+"/"+ns+"/workspace-template-"+rt+":latest", name.Insecure)
			if err != nil {
				return err
			}
			return remote.Write(ref, img, remote.WithContext(ctx))
		})
	}
	return g.Wait()
}
