// Package enginetest holds what the tests of the puller and of the
// scheduler both need to fake the daemon: the stream of a successful pull
// and stable fake digests.
package enginetest

import (
	"context"
	"io"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

// OKStream is the daemon's stream of a successful pull of d.
func OKStream(d digest.Digest) io.ReadCloser {
	return io.NopCloser(strings.NewReader(`{"status":"Pulling from x","id":"latest"}
{"status":"Pulling fs layer","progressDetail":{},"id":"aaa"}
{"status":"Downloading","progressDetail":{"current":50,"total":100},"id":"aaa"}
{"status":"Download complete","progressDetail":{},"id":"aaa"}
{"status":"Pull complete","progressDetail":{},"id":"aaa"}
{"status":"Digest: ` + d.String() + `"}
{"status":"Status: Downloaded newer image for x"}
`))
}

// RepoOf is ref without its ":latest" tag or "@digest".
func RepoOf(ref string) string {
	name, _, _ := strings.Cut(ref, ":latest")
	name, _, _ = strings.Cut(name, "@")
	return name
}

// DigestOf is a stable fake digest for the repository of ref.
func DigestOf(ref string) digest.Digest {
	return digest.FromString(RepoOf(ref))
}

// PhasedStream is the daemon's stream of a successful pull of d that
// takes time: resolve before the daemon names the image's one layer,
// download before the layer and the pull complete. It ends early, with no
// final status, when ctx is done or the reader is closed. In a
// testing/synctest bubble the time is virtual.
func PhasedStream(ctx context.Context, d digest.Digest, resolve, download time.Duration) io.ReadCloser {
	r, w := io.Pipe()
	go func() {
		steps := []struct {
			wait time.Duration
			msg  string
		}{
			{0, `{"status":"Pulling from x","id":"latest"}`},
			{resolve, `{"status":"Pulling fs layer","progressDetail":{},"id":"aaa"}`},
			{0, `{"status":"Downloading","progressDetail":{"current":1,"total":100},"id":"aaa"}`},
			{download, `{"status":"Download complete","progressDetail":{},"id":"aaa"}
{"status":"Pull complete","progressDetail":{},"id":"aaa"}
{"status":"Digest: ` + d.String() + `"}
{"status":"Status: Downloaded newer image for x"}`},
		}
		for _, s := range steps {
			select {
			case <-ctx.Done():
				w.CloseWithError(ctx.Err())
				return
			case <-time.After(s.wait):
			}
			if _, err := io.WriteString(w, s.msg+"\n"); err != nil {
				return
			}
		}
		w.Close()
	}()
	return r
}
