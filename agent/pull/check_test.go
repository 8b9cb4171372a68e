package pull

import (
	"bytes"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
)

func TestCompare(t *testing.T) {
	d1, d2 := digest.FromString("1"), digest.FromString("2")
	c1, c2 := digest.FromString("config 1"), digest.FromString("config 2")
	p := CheckReport{Images: []CheckResult{
		{Runtime: "same", Present: true, Digest: d1, ImageDigest: c1},
		{Runtime: "same-manifest-unread", Present: true, Digest: d1},
		{Runtime: "repacked", Present: true, Digest: d1, ImageDigest: c1},
		{Runtime: "differs", Present: true, Digest: d1, ImageDigest: c1},
		{Runtime: "unknown", Present: true, Digest: d1, ImageDigest: c1},
		{Runtime: "missing-p", Present: false},
		{Runtime: "missing-q", Present: true, Digest: d1},
		{Runtime: "missing-both", Present: false},
		{Runtime: "absent-from-q", Present: true, Digest: d1},
	}}
	q := CheckReport{Images: []CheckResult{
		{Runtime: "same", Present: true, Digest: d1, ImageDigest: c1},
		{Runtime: "same-manifest-unread", Present: true, Digest: d1},
		{Runtime: "repacked", Present: true, Digest: d2, ImageDigest: c1},
		{Runtime: "differs", Present: true, Digest: d2, ImageDigest: c2},
		{Runtime: "unknown", Present: true, Digest: d2},
		{Runtime: "missing-p", Present: true, Digest: d1},
		{Runtime: "missing-q", Present: false},
		{Runtime: "missing-both", Present: false},
	}}
	want := map[string]Comparison{
		"same":                 {Parity: ParitySame, SameManifest: true, SameImage: true},
		"same-manifest-unread": {Parity: ParitySame, SameManifest: true},
		"repacked":             {Parity: ParitySame, SameImage: true},
		"differs":              {Parity: ParityDiffers},
		"unknown":              {Parity: ParityUnknown},
		"missing-p":            {Parity: ParityMissingP},
		"missing-q":            {Parity: ParityMissingQ},
		"missing-both":         {Parity: ParityMissingB},
		"absent-from-q":        {Parity: ParityMissingB},
	}
	got := Compare(p, q)
	if len(got) != len(want) {
		t.Fatalf("Compare = %v, want %v", got, want)
	}
	for rt, w := range want {
		if got[rt] != w {
			t.Errorf("%s: %+v, want %+v", rt, got[rt], w)
		}
	}
}

func TestFromIndexLeavesAttestationsOut(t *testing.T) {
	h := func(s string) v1.Hash { return v1.Hash{Algorithm: "sha256", Hex: digest.FromString(s).Encoded()} }
	att := func(of string) v1.Descriptor {
		return v1.Descriptor{Digest: h("att " + of), Platform: &v1.Platform{OS: "unknown", Architecture: "unknown"},
			Annotations: map[string]string{annotationReferenceType: attestationManifest, "vnd.docker.reference.digest": h(of).String()}}
	}
	im := &v1.IndexManifest{Manifests: []v1.Descriptor{
		{Digest: h("amd64"), Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}},
		{Digest: h("arm64"), Platform: &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}},
		att("amd64"), att("arm64"),
		// An attestation marked by its annotation alone still is one.
		{Digest: h("att other"), Annotations: map[string]string{annotationReferenceType: attestationManifest}},
	}}
	for _, tc := range []struct {
		platform string
		want     string // "" for no image
	}{
		{"linux/amd64", "amd64"},
		{"linux/arm64", "arm64"},
		{"linux/arm64/v8", "arm64"},
		{"linux/s390x", ""},
	} {
		t.Run(tc.platform, func(t *testing.T) {
			var c Content
			d, err := c.fromIndex(im, tc.platform)
			if tc.want == "" {
				if err == nil {
					t.Fatalf("chose %s for a platform the index lacks", d)
				}
			} else if err != nil || d.String() != h(tc.want).String() {
				t.Fatalf("chose %s, %v; want the %s image", d, err, tc.want)
			}
			if got := c.Platforms; len(got) != 2 || got[0] != "linux/amd64" || got[1] != "linux/arm64/v8" || c.Attestations != 3 {
				t.Errorf("platforms %v, %d attestations; want [linux/amd64 linux/arm64/v8] and 3", got, c.Attestations)
			}
		})
	}
}

func TestRealPlatforms(t *testing.T) {
	got, n := realPlatforms([]string{"linux/amd64", "unknown/unknown", "linux/arm64", "unknown/unknown"})
	if len(got) != 2 || got[0] != "linux/amd64" || got[1] != "linux/arm64" || n != 2 {
		t.Errorf("realPlatforms = %v, %d", got, n)
	}
}

// FuzzIndexContent feeds an index as a registry could serve it to the
// code that picks the platform's manifest: no panic, and an attestation
// is never a platform.
func FuzzIndexContent(f *testing.F) {
	f.Add([]byte(`{"schemaVersion":2,"manifests":[{"digest":"sha256:`+digest.FromString("a").Encoded()+`","platform":{"os":"linux","architecture":"amd64"}},{"platform":{"os":"unknown","architecture":"unknown"},"annotations":{"vnd.docker.reference.type":"attestation-manifest"}}]}`), "linux/amd64")
	f.Add([]byte(`{"manifests":[{"platform":null},{}]}`), "linux/arm64/v8")
	f.Add([]byte(`{"manifests":[{"platform":{"os":"\u001b[2J","architecture":""}}]}`), "")
	f.Fuzz(func(t *testing.T, raw []byte, platform string) {
		im, err := v1.ParseIndexManifest(bytes.NewReader(raw))
		if err != nil {
			return
		}
		var c Content
		_, _ = c.fromIndex(im, platform)
		for _, p := range c.Platforms {
			if p == "unknown/unknown" {
				t.Fatalf("an attestation listed as a platform: %v", c.Platforms)
			}
		}
	})
}
