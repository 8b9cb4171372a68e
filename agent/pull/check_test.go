package pull

import (
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestCompare(t *testing.T) {
	d1, d2 := digest.FromString("1"), digest.FromString("2")
	p := CheckReport{Images: []CheckResult{
		{Runtime: "same", Present: true, Digest: d1},
		{Runtime: "differs", Present: true, Digest: d1},
		{Runtime: "missing-p", Present: false},
		{Runtime: "missing-q", Present: true, Digest: d1},
		{Runtime: "missing-both", Present: false},
		{Runtime: "absent-from-q", Present: true, Digest: d1},
	}}
	q := CheckReport{Images: []CheckResult{
		{Runtime: "same", Present: true, Digest: d1},
		{Runtime: "differs", Present: true, Digest: d2},
		{Runtime: "missing-p", Present: true, Digest: d1},
		{Runtime: "missing-q", Present: false},
		{Runtime: "missing-both", Present: false},
	}}
	want := map[string]Parity{
		"same": ParitySame, "differs": ParityDiffers, "missing-p": ParityMissingP,
		"missing-q": ParityMissingQ, "missing-both": ParityMissingB, "absent-from-q": ParityMissingB,
	}
	got := Compare(p, q)
	if len(got) != len(want) {
		t.Fatalf("Compare = %v, want %v", got, want)
	}
	for rt, w := range want {
		if got[rt] != w {
			t.Errorf("%s: %d, want %d", rt, got[rt], w)
		}
	}
}
