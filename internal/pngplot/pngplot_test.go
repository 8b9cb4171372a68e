package pngplot

import (
	"image/png"
	"os"
	"path/filepath"
	"testing"

	"gonum.org/v1/plot"
)

// Two panels of 150 points each make a PNG of 900 × 300 points (at the
// default 96 dpi, 1200 × 400 pixels), in a directory made for it.
func TestWriteColumn(t *testing.T) {
	path := filepath.Join(t.TempDir(), "charts", "two.png")
	a, b := plot.New(), plot.New()
	a.Title.Text, b.Title.Text = "one", "two"
	if err := WriteColumn(path, []*plot.Plot{a, b}, 150); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg, err := png.DecodeConfig(f)
	if err != nil || cfg.Width != 1200 || cfg.Height != 400 {
		t.Errorf("PNG %d × %d (%v), want 1200 × 400", cfg.Width, cfg.Height, err)
	}
}
