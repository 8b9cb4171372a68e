package engine

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The streams under testdata/streams were recorded from dockerd 20.10
// pulling from a distribution 2.8 registry (POST /images/create); those
// named docker26-* from Debian 13's dockerd 26.1.5 (classic image store),
// containerd-* from the same daemon with the containerd image store, whose
// small layers complete between two progress polls and come without sizes.
func TestDecodeRecordedStreams(t *testing.T) {
	tests := []struct {
		file       string
		wantDigest string
		wantStatus string
		wantErr    string
		wantBytes  int64
		wantLayers int
	}{
		{"fresh.jsonl", "sha256:4607d8f50a1f0f4a0e39797671104e0b58ae87788eef46ba415e6e9690b6ce2d", "Downloaded newer image for 127.0.0.1:5000/molecule-ai/workspace-template-codex:latest", "", 1312061, 2},
		{"shared-base.jsonl", "sha256:53d3c13e67e32de870f7f6900817a4f0ff31fc9bf3e5edf2beeacc4224876fe2", "Downloaded newer image for 127.0.0.1:5000/molecule-ai/workspace-template-hermes:latest", "", 262787, 2},
		{"up-to-date.jsonl", "sha256:4607d8f50a1f0f4a0e39797671104e0b58ae87788eef46ba415e6e9690b6ce2d", "Image is up to date for 127.0.0.1:5000/molecule-ai/workspace-template-codex:latest", "", 0, 0},
		{"blob-missing.jsonl", "", "", "unknown blob", 0, 2},
		{"docker26-fresh.jsonl", "sha256:12df7eb97e898d981bb84d4a84954bcb25256b7f7294624ae5fe1f76bbb538b3", "Downloaded newer image for 127.0.0.1:44783/molecule-ai/workspace-template-codex:latest", "", 1049272 + 262789, 2},
		{"containerd-fresh.jsonl", "sha256:aef7b954b388cb1f890b00fb8c8ecf2814861a2cb545b35cea2a32780fce9c06", "Downloaded newer image for 127.0.0.1:39163/molecule-ai/workspace-template-codex:latest", "", 0, 2},
		{"containerd-big.jsonl", "sha256:97661479866604093c5c5709ab030031b0aba95ebc42376b54d7de292634226e", "Downloaded newer image for 127.0.0.1:37825/molecule-ai/workspace-template-codex:latest", "", 40004614 + 20003345, 2},
		{"containerd-shared-base.jsonl", "sha256:ac4122dd6cf7494940d1da7b0d7fb26024fc16146267f7ba3ff7484db17fea62", "Downloaded newer image for 127.0.0.1:37825/molecule-ai/workspace-template-hermes:latest", "", 20003345, 1},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			f, err := os.Open(filepath.Join("testdata", "streams", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			var updates int
			var last Progress
			res, err := DecodeStream(f, func(p Progress) { updates++; last = p })
			if tt.wantErr != "" {
				var se *StreamError
				if !errors.As(err, &se) || se.Message != tt.wantErr {
					t.Fatalf("want StreamError %q, got %v", tt.wantErr, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.Digest.String() != tt.wantDigest || res.Status != tt.wantStatus {
				t.Errorf("digest %s status %q", res.Digest, res.Status)
			}
			if res.Progress.Current != tt.wantBytes || res.Progress.Layers != tt.wantLayers || res.Progress.LayersDone != tt.wantLayers {
				t.Errorf("progress %+v, want %d bytes over %d layers", res.Progress, tt.wantBytes, tt.wantLayers)
			}
			if tt.wantLayers > 0 && (updates == 0 || last.Phase != PhaseExtracting) {
				t.Errorf("%d updates, last %+v", updates, last)
			}
		})
	}
}

func TestDecodeStreamBroken(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"truncated json", `{"status":"Pulling from x","id":"latest"}` + "\n" + `{"status":"Downl`, "reading the daemon's pull stream"},
		{"ends without status", `{"status":"Pulling from x","id":"latest"}` + "\n", "ended without a final status"},
		{"not json", "<html>bad gateway</html>", "reading the daemon's pull stream"},
		{"error detail only", `{"errorDetail":{"message":"no space left on device"}}`, "no space left on device"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeStream(strings.NewReader(tt.in), nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
}

func FuzzDecodeStream(f *testing.F) {
	for _, name := range []string{"fresh.jsonl", "up-to-date.jsonl", "blob-missing.jsonl", "containerd-big.jsonl"} {
		data, err := os.ReadFile(filepath.Join("testdata", "streams", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		res, err := DecodeStream(strings.NewReader(string(data)), func(p Progress) {
			if p.LayersDone > p.Layers {
				t.Fatalf("more layers done than seen: %+v", p)
			}
		})
		if err == nil && res.Status == "" && res.Digest == "" {
			t.Fatal("success without a status or digest")
		}
	})
}
