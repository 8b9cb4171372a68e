package main

import (
	"fmt"
	"image/color"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/molecule-ai/pull-agent/internal/pngplot"
	"github.com/molecule-ai/pull-agent/internal/testbed/fleet"
)

// window is the span over which the origin's bandwidth is averaged.
const window = 0.5 // seconds

// drawChart writes a PNG to path: one panel per scenario, the origin's
// bandwidth (Mbit/s, averaged over half a second) over time from the
// phase's start, the cold start and the flip each a line.
func drawChart(rep Report, path string) error {
	if len(rep.Scenarios) == 0 {
		return nil
	}
	var xmax float64
	for _, sc := range rep.Scenarios {
		for _, r := range []fleet.Result{sc.Cold, sc.Flip} {
			if n := len(r.Samples); n > 0 {
				xmax = max(xmax, r.Samples[n-1].T)
			}
		}
	}
	var plots []*plot.Plot
	for _, sc := range rep.Scenarios {
		p, err := panel(rep, sc, xmax)
		if err != nil {
			return err
		}
		plots = append(plots, p)
	}
	return pngplot.WriteColumn(path, plots, 260)
}

func panel(rep Report, sc Scenario, xmax float64) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%d: %s (%d hosts, origin link %d Mbit/s)", sc.ID, sc.Name, rep.Hosts, rep.LinkMbit)
	p.X.Label.Text = "seconds from the phase's start"
	p.Y.Label.Text = "origin egress, Mbit/s"
	p.X.Min, p.X.Max = 0, xmax
	p.Y.Min, p.Y.Max = 0, float64(rep.LinkMbit)*1.1
	p.Add(plotter.NewGrid())
	p.Legend.Top = true
	colors := []color.Color{color.RGBA{R: 31, G: 119, B: 180, A: 255}, color.RGBA{R: 214, G: 39, B: 40, A: 255}}
	for i, r := range []fleet.Result{sc.Cold, sc.Flip} {
		if len(r.Samples) == 0 {
			continue
		}
		l, err := plotter.NewLine(bandwidth(r.Samples))
		if err != nil {
			return nil, err
		}
		l.Color = colors[i]
		l.Width = vg.Points(1.2)
		p.Add(l)
		p.Legend.Add(fmt.Sprintf("%s: %.0f MB, %d × 429, fleet warm %.1f s", r.Phase, float64(r.Origin.BlobBytes)/1e6, r.Origin.Limited, r.AllWarmS), l)
	}
	return p, nil
}

// bandwidth turns cumulative byte samples into Mbit/s over the window
// ending at each sample.
func bandwidth(s []fleet.Sample) plotter.XYs {
	xy := make(plotter.XYs, 0, len(s))
	j := 0
	for i := range s {
		for s[i].T-s[j].T > window {
			j++
		}
		rate := 0.0
		if dt := s[i].T - s[j].T; dt > 0 {
			rate = float64(s[i].Bytes-s[j].Bytes) * 8 / 1e6 / dt
		}
		xy = append(xy, plotter.XY{X: s[i].T, Y: rate})
	}
	return xy
}
