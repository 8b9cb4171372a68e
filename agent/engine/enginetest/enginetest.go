// Package enginetest holds what the tests of the puller and of the
// scheduler both need to fake the daemon: the stream of a successful pull
// and stable fake digests.
package enginetest

import (
	"io"
	"strings"

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
