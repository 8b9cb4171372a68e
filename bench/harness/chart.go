package main

import (
	"fmt"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/molecule-ai/pull-agent/internal/pngplot"
)

// chartData is what the chart draws: one shape's last cold run of each
// agent.
type chartData struct {
	Shape  string
	Layout Layout
	Runs   map[string]coldRun // by contender
}

// drawChart writes a PNG to path: for each agent a panel of every
// image's bytes received over time (interpolated per blob from the
// registry's request log), in priority order, with the time each image
// became usable marked.
func drawChart(cd *chartData, path string, mbit int) error {
	var plots []*plot.Plot
	var xmax float64
	for _, name := range []string{cAgent, cBaseline} {
		if run, ok := cd.Runs[name]; ok {
			xmax = max(xmax, run.end.Sub(run.start).Seconds())
		}
	}
	for _, name := range []string{cAgent, cBaseline} {
		run, ok := cd.Runs[name]
		if !ok {
			continue
		}
		p, err := panel(cd, name, run, xmax, mbit)
		if err != nil {
			return err
		}
		plots = append(plots, p)
	}
	if len(plots) == 0 {
		return nil
	}
	return pngplot.WriteColumn(path, plots, 380)
}

// panel is one agent's plot.
func panel(cd *chartData, name string, run coldRun, xmax float64, mbit int) (*plot.Plot, error) {
	const step = 100 * time.Millisecond
	span := run.end.Sub(run.start)
	ser := series(run.transfers, run.start, ec2Order, cd.Layout, step, span)
	p := plot.New()
	first := run.usable[ec2Order[0]].Sub(run.start).Seconds()
	p.Title.Text = fmt.Sprintf("%s, shape %s, %d Mbit/s shared: all nine in %.1f s, %s usable at %.1f s", name, cd.Shape, mbit, span.Seconds(), ec2Order[0], first)
	p.X.Label.Text = "seconds from start"
	p.Y.Label.Text = "MB received (interpolated per blob)"
	p.X.Min, p.X.Max, p.Y.Min = 0, xmax, 0
	p.Legend.Top, p.Legend.Left = true, true
	p.X.Tick.Marker = every(5)
	var ymax float64
	for i, rt := range ec2Order {
		pts := make(plotter.XYs, len(ser[rt]))
		for k, v := range ser[rt] {
			pts[k].X, pts[k].Y = float64(k)*step.Seconds(), v/1e6
		}
		l, err := plotter.NewLine(pts)
		if err != nil {
			return nil, err
		}
		l.Color = plotutil.Color(i)
		l.Width = vg.Points(1.5)
		l.Dashes = plotutil.Dashes(i / 7)
		p.Add(l)
		u := run.usable[rt].Sub(run.start).Seconds()
		mark, err := plotter.NewScatter(plotter.XYs{{X: u, Y: ser[rt][len(ser[rt])-1] / 1e6}})
		if err != nil {
			return nil, err
		}
		mark.Color = plotutil.Color(i)
		mark.Shape = draw.CircleGlyph{}
		p.Add(mark)
		p.Legend.Add(fmt.Sprintf("%d %s (usable %.1f s)", i+1, rt, u), l)
		ymax = max(ymax, ser[rt][len(ser[rt])-1]/1e6)
	}
	p.Y.Max = 1.8 * ymax // room for the legend above the lines
	return p, nil
}

// every is a ticker with a labelled tick every step.
func every(step float64) plot.Ticker {
	return plot.TickerFunc(func(lo, hi float64) []plot.Tick {
		var ts []plot.Tick
		for x := 0.0; x <= hi; x += step {
			if x >= lo {
				ts = append(ts, plot.Tick{Value: x, Label: fmt.Sprintf("%.0f", x)})
			}
		}
		return ts
	})
}
