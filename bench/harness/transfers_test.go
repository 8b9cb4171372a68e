package main

import (
	"encoding/json"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func at(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, "2026-11-29T00:43:"+s+"Z")
	if err != nil {
		panic(err)
	}
	return t
}

// The registry's "response completed" lines give blob GETs with their
// start (end − duration, quoted µs included) and bytes; HEADs, manifests
// and lines outside the window are not transfers.
func TestBlobTransfers(t *testing.T) {
	ts, err := blobTransfers("testdata/registry.log", at("00"), at("59"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) != 2 {
		t.Fatalf("%d transfers, want 2: %+v", len(ts), ts)
	}
	if got := ts[0]; got.Digest != "sha256:"+strings.Repeat("1", 64) || got.Bytes != 3_000_000 || !got.Start.Equal(at("01").Add(-1500*time.Millisecond)) || !got.End.Equal(at("01")) {
		t.Errorf("first transfer: %+v", got)
	}
	if got := ts[1]; got.Bytes != 1395 || got.End.Sub(got.Start) != 867063*time.Nanosecond {
		t.Errorf("second transfer (quoted µs duration): %+v", got)
	}
}

func TestUseOf(t *testing.T) {
	big := int64(1 << 20)
	tests := []struct {
		name              string
		ts                []transfer
		idle, first, tail float64
		most              int
		bytes             int64
	}{
		{"no transfer", nil, 1, 0, 0, 0, 0},
		{"one blob in the middle", []transfer{{Start: at("02"), End: at("06"), Bytes: big}}, 0.6, 2, 4, 1, big},
		{"overlap counted once, gap idle", []transfer{
			{Start: at("00"), End: at("04"), Bytes: big},
			{Start: at("02"), End: at("05"), Bytes: big},
			{Start: at("07"), End: at("10"), Bytes: big},
		}, 0.2, 0, 0, 2, 3 * big},
		{"small configs do not count as layers in flight", []transfer{
			{Start: at("00"), End: at("10"), Bytes: big},
			{Start: at("01"), End: at("02"), Bytes: 1400},
		}, 0, 0, 0, 1, big + 1400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := useOf(tt.ts, at("00"), at("10"))
			if math.Abs(u.IdleShare-tt.idle) > 1e-9 || u.FirstBlob != tt.first || u.Tail != tt.tail || u.MaxLayers != tt.most || u.Bytes != tt.bytes {
				t.Errorf("useOf = %+v, want idle %.2f first %.0f tail %.0f most %d bytes %d", u, tt.idle, tt.first, tt.tail, tt.most, tt.bytes)
			}
		})
	}
}

// Each blob's bytes rise linearly over its transfer; a blob two images
// share counts for the first of them in priority order.
func TestSeriesInterpolatesAndOwnsSharedBlobs(t *testing.T) {
	lay := Layout{Images: map[string]ImageBlobs{
		"a": {Layers: []Blob{{Digest: "shared"}, {Digest: "a1"}}},
		"b": {Layers: []Blob{{Digest: "shared"}, {Digest: "b1"}}},
	}}
	ts := []transfer{
		{Digest: "shared", Start: at("00"), End: at("02"), Bytes: 100},
		{Digest: "b1", Start: at("01"), End: at("02"), Bytes: 10},
	}
	s := series(ts, at("00"), []string{"b", "a"}, lay, time.Second, 3*time.Second)
	if want := []float64{0, 50 + 0, 110, 110}; !equal(s["b"], want) {
		t.Errorf("b: %v, want %v", s["b"], want)
	}
	if want := []float64{0, 0, 0, 0}; !equal(s["a"], want) {
		t.Errorf("a: %v, want %v (the shared blob is b's, first in order)", s["a"], want)
	}
}

func equal(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Abs(a[i]-b[i]) > 1e-9 {
			return false
		}
	}
	return true
}

// The floor counts a shared layer once, the first image's own bytes with
// the base, and the first three's union.
func TestFloorOf(t *testing.T) {
	img := func(own string) ImageBlobs {
		return ImageBlobs{Index: Blob{"i" + own, 1}, Manifest: Blob{"m" + own, 1}, Config: Blob{"c" + own, 1},
			Layers: []Blob{{"base", 1000}, {own, 500}}}
	}
	lay := Layout{Images: map[string]ImageBlobs{"x": img("x"), "y": img("y"), "z": img("z"), "w": img("w")}}
	f := floorOf(lay, []string{"x", "y", "z", "w"}, 8) // 1 MB/s
	if f.Bytes != 1000+4*503 || f.Meta != 12 || f.FirstBytes != 1503 || f.First3Bytes != 1000+3*503 {
		t.Errorf("floor %+v", f)
	}
	if math.Abs(f.Seconds-float64(f.Bytes)/1e6) > 1e-12 || f.PerImage["w"] != 1503 {
		t.Errorf("floor %+v", f)
	}
}

// A benchmarks.json from before the ec2 profile (one profile's Results)
// is read as the wan part; writing the ec2 part keeps it.
func TestEC2KeepsTheWanResults(t *testing.T) {
	dir := t.TempDir()
	js, doc := filepath.Join(dir, "b.json"), filepath.Join(dir, "B.md")
	old, _ := json.Marshal(Results{Profile: "wan", Workload: "two-layer toys", Cold: map[string][]float64{
		"pull-agent pull": {7}, "sequential docker pull": {16}, "xargs -P 3 docker pull": {7}, "pull-agent run (cold start)": {7.5}}})
	if err := os.WriteFile(js, old, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeEC2(EC2Results{LinkMbit: 400, Priority: ec2Order, ContainerdNote: "not measured"}, js, doc, io.Discard); err != nil {
		t.Fatal(err)
	}
	all, err := loadAll(js)
	if err != nil {
		t.Fatal(err)
	}
	if all.WAN == nil || all.WAN.Workload != "two-layer toys" || all.EC2 == nil || all.EC2.LinkMbit != 400 {
		t.Fatalf("after the ec2 write: wan %+v, ec2 %+v", all.WAN, all.EC2)
	}
	md, _ := os.ReadFile(doc)
	for _, want := range []string{"## Profile `wan`", "two-layer toys", "## Profile `ec2`", "400 Mbit/s shared"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("BENCHMARKS.md lacks %q", want)
		}
	}
}
