// Package charts draws the PNG plots of a bench.Report (gonum/plot). It is its own package, and
// the wattagg-plot binary its only user in the commands, because gonum/plot and what it pulls in
// (fonts parsed at start-up, LaTeX tables, PDF and SVG back ends) cost every run of a binary
// that links it 4-5 ms of package initialisers: `wattagg bench --out` runs wattagg-plot for its
// plots, and `wattagg aggregate` starts without them (README: design notes).
package charts

import (
	"cmp"
	"fmt"
	"image/color"
	"io"
	"math"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/wattagg/wattagg/bench"
)

// plotDPI is the resolution of the PNGs: sizes below are in pixels at this resolution.
const plotDPI = 96

// Plot sizes in pixels: a sweep is a grid of panels (one per rule), bar charts grow with
// their bars.
const (
	panelW, panelH   = 470, 340
	sweepTitleH      = 80
	barChartW        = 1000
	barH, barChartH0 = 44, 170
	energyW, energyH = 1000, 620
)

// Write writes the report's PNG plots into dir and returns their names:
//   - SUITE-clients.png, SUITE-params.png: throughput against the client count and the model
//     size, a panel per rule with its floor dashed;
//   - SUITE-ratio.png: each main figure's ratio to its floor, a bar per row;
//   - SUITE-bandwidth.png (the floor suite, whose rows are floors): the floors as bars;
//   - SUITE-joules.png (energy): joules per parameter per policy and device, predicted
//     beside measured, labelled estimated where no counter measured them.
func Write(r *bench.Report, dir string) ([]string, error) {
	var names []string
	add := func(name string, w, h int, fn func(draw.Canvas) error) error {
		if err := writePNG(filepath.Join(dir, name), w, h, fn); err != nil {
			return err
		}
		names = append(names, name)
		return nil
	}
	for _, sweep := range []string{bench.SweepClients, bench.SweepParams} {
		series := sweepSeries(r.Sweep(sweep), sweep)
		if len(series) == 0 {
			continue
		}
		w, h := sweepSize(len(series))
		if err := add(r.Suite+"-"+sweep+".png", w, h, func(dc draw.Canvas) error { return drawSweep(r, dc, sweep, series) }); err != nil {
			return nil, err
		}
	}
	main := plottable(r.Main())
	var floored, bandwidth, energy []bench.Result
	for _, x := range main {
		switch {
		case x.Policy != "":
		case x.Floor > 0:
			floored = append(floored, x)
		case x.IsFloor && x.Unit == "GB/s":
			bandwidth = append(bandwidth, x)
		}
	}
	// Energy rows in the report's order; those skipped here (no GPU) stay in the chart, so the
	// reader sees what is missing.
	for _, x := range r.Main() {
		if x.Policy != "" && (x.Skipped != "" || slices.ContainsFunc(main, func(y bench.Result) bool { return y.Name == x.Name })) {
			energy = append(energy, x)
		}
	}
	if len(floored) > 0 {
		if err := add(r.Suite+"-ratio.png", barChartW, barChartSize(len(floored)), func(dc draw.Canvas) error { return drawRatio(r, dc, floored) }); err != nil {
			return nil, err
		}
	}
	// Rows that are floors themselves (the floor suite) as bars, when no row has a floor.
	if len(floored) == 0 && len(bandwidth) > 0 {
		if err := add(r.Suite+"-bandwidth.png", barChartW, barChartSize(len(bandwidth)), func(dc draw.Canvas) error { return drawBandwidth(r, dc, bandwidth) }); err != nil {
			return nil, err
		}
	}
	if slices.ContainsFunc(energy, func(x bench.Result) bool { return x.Skipped == "" }) {
		if err := add(r.Suite+"-joules.png", energyW, energyH, func(dc draw.Canvas) error { return drawJoules(r, dc, energy) }); err != nil {
			return nil, err
		}
	}
	return names, nil
}

func sweepSize(panels int) (w, h int) {
	cols := min(3, panels)
	rows := (panels + cols - 1) / cols
	return cols * panelW, sweepTitleH + rows*panelH
}

func barChartSize(bars int) int { return barChartH0 + bars*barH }

// plottable keeps the rows that were measured and hold finite, positive figures.
func plottable(rows []bench.Result) []bench.Result {
	return slices.DeleteFunc(slices.Clone(rows), func(x bench.Result) bool {
		return x.Skipped != "" || !(x.Value > 0) || math.IsInf(x.Value, 0) || math.IsNaN(x.Floor) || math.IsInf(x.Floor, 0)
	})
}

type series struct {
	name string
	rows []bench.Result
}

// sweepSeries groups a sweep's plottable rows by rule and dtype, in order of appearance,
// each sorted along the sweep's axis.
func sweepSeries(rows []bench.Result, sweep string) []series {
	var out []series
	for _, x := range plottable(rows) {
		if sweepX(x, sweep) <= 0 {
			continue
		}
		i := slices.IndexFunc(out, func(s series) bool { return s.name == x.Series() })
		if i < 0 {
			out = append(out, series{name: x.Series()})
			i = len(out) - 1
		}
		out[i].rows = append(out[i].rows, x)
	}
	for _, s := range out {
		slices.SortStableFunc(s.rows, func(a, b bench.Result) int { return cmp.Compare(sweepX(a, sweep), sweepX(b, sweep)) })
	}
	return out
}

func sweepX(x bench.Result, sweep string) int64 {
	if sweep == bench.SweepClients {
		return int64(x.Clients)
	}
	return x.Params
}

// drawSweep draws one panel per series: the measured figure against the sweep's axis (log
// scale, the measured points as ticks) and its floor, dashed.
func drawSweep(r *bench.Report, dc draw.Canvas, sweep string, ss []series) error {
	first := ss[0].rows[0]
	var axis, fixed string
	if sweep == bench.SweepClients {
		axis = "clients (updates per round)"
		fixed = fmt.Sprintf("%s params per update", bench.ParamsLabel(first.Params))
	} else {
		axis = "parameters per update (M = 2^20)"
		fixed = fmt.Sprintf("%d clients", first.Clients)
	}
	drawHeader(dc, fmt.Sprintf("wattagg bench %s: %s against %s (%s); dashed: the floor measured in the same run",
		r.Suite, first.Unit, strings.Fields(axis)[0], fixed), r.Subtitle())

	cols := min(3, len(ss))
	rows := (len(ss) + cols - 1) / cols
	grid := make([][]*plot.Plot, rows)
	for i := range grid {
		grid[i] = make([]*plot.Plot, cols)
	}
	// Panels share one y scale when their figures are of one magnitude (f32 beside bf16), so
	// that heights compare across panels; rules an order of magnitude apart keep their own.
	tops := make([]float64, len(ss))
	for i, s := range ss {
		tops[i] = s.top()
	}
	shared := 0.0
	if slices.Max(tops) <= 2*slices.Min(tops) {
		shared = slices.Max(tops)
	}
	for i, s := range ss {
		p, err := sweepPanel(s, sweep, axis, plotutil.Color(i), shared)
		if err != nil {
			return err
		}
		grid[i/cols][i%cols] = p
	}
	tiles := draw.Tiles{Rows: rows, Cols: cols, PadTop: px(sweepTitleH), PadX: px(28), PadY: px(22),
		PadLeft: px(10), PadRight: px(18), PadBottom: px(8)}
	canvases := plot.Align(grid, tiles, dc)
	for j := range grid {
		for i, p := range grid[j] {
			if p != nil {
				p.Draw(canvases[j][i])
			}
		}
	}
	return nil
}

// top is the largest figure or floor of the series.
func (s series) top() float64 {
	t := 0.0
	for _, x := range s.rows {
		t = max(t, x.Value, x.Floor)
	}
	return t
}

// sweepPanel draws one series; top, if positive, is the y scale's top shared by all panels.
func sweepPanel(s series, sweep, axis string, c color.Color, top float64) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = s.name
	p.Title.TextStyle.Font.Size = vg.Points(12)
	var pts, floor plotter.XYs
	var ticks []plot.Tick
	if top <= 0 {
		top = s.top()
	}
	for _, x := range s.rows {
		v := float64(sweepX(x, sweep))
		pts = append(pts, plotter.XY{X: v, Y: x.Value})
		if x.Floor > 0 {
			floor = append(floor, plotter.XY{X: v, Y: x.Floor})
		}
		label := fmt.Sprint(x.Clients)
		if sweep == bench.SweepParams {
			label = bench.ParamsLabel(x.Params)
		}
		ticks = append(ticks, plot.Tick{Value: v, Label: label})
	}
	p.Add(plotter.NewGrid())
	if len(floor) > 0 {
		fl, err := plotter.NewLine(floor)
		if err != nil {
			return nil, err
		}
		fl.Color = color.Gray{Y: 70}
		fl.Width = vg.Points(1.5)
		fl.Dashes = []vg.Length{vg.Points(6), vg.Points(4)}
		p.Add(fl)
		name := "floor"
		if f := s.rows[0].FloorName; f != "" {
			name += ": " + f
		}
		p.Legend.Add(name, fl)
	}
	line, points, err := plotter.NewLinePoints(pts)
	if err != nil {
		return nil, err
	}
	line.Color, line.Width = c, vg.Points(2)
	points.Color, points.Shape, points.Radius = c, draw.CircleGlyph{}, vg.Points(3)
	p.Add(line, points)
	p.Legend.Add("measured", line, points)
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.TextStyle.Font.Size = vg.Points(9)
	p.Legend.Padding = vg.Points(1)

	p.X.Label.Text = axis
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.ConstantTicks(ticks)
	p.X.Min, p.X.Max = pts[0].X/1.15, pts[len(pts)-1].X*1.15
	p.Y.Label.Text = s.rows[0].Unit
	p.Y.Tick.Marker = plainTicks{}
	// Headroom above the data keeps the legend off the lines.
	p.Y.Min, p.Y.Max = 0, top*1.45
	return p, nil
}

// drawRatio draws each row's ratio to its floor as a horizontal bar, the floor as a line at 1.
func drawRatio(r *bench.Report, dc draw.Canvas, rows []bench.Result) error {
	p := newPlot()
	rt := newRatios(rows)
	bars, err := rt.bars()
	if err != nil {
		return err
	}
	one, err := rt.oneLine()
	if err != nil {
		return err
	}
	lab, err := rt.barLabels()
	if err != nil {
		return err
	}
	p.Add(plotter.NewGrid(), bars, one, lab)
	p.NominalY(rt.names...)
	rt.describe(p, r, one)
	rt.axes(p)
	p.Draw(padded(dc))
	return nil
}

// ratios is what the ratio chart shows of its rows: a bar per row, the first on top, its name
// beside the axis and its figures beside the bar.
type ratios struct {
	vals    plotter.Values
	names   []string
	labels  plotter.XYLabels // the ratio and the figures it is of, at the end of each bar
	ceiling bool             // every row is a figure against its budget, not its floor
	top     float64          // the largest ratio, at least 1
}

// newRatios gathers the bars, their names and figures from rows, the first row on top.
func newRatios(rows []bench.Result) ratios {
	n := len(rows)
	rt := ratios{vals: make(plotter.Values, n), names: make([]string, n),
		labels: plotter.XYLabels{XYs: make(plotter.XYs, n), Labels: make([]string, n)}, ceiling: true, top: 1}
	for i, x := range rows {
		k := n - 1 - i // the first row on top
		rt.vals[k] = x.Ratio
		rt.names[k] = bench.Describe(x)
		rt.labels.XYs[k] = plotter.XY{X: x.Ratio, Y: float64(k)}
		rt.labels.Labels[k] = ratioLabel(x)
		rt.ceiling = rt.ceiling && x.Ceiling
		rt.top = max(rt.top, x.Ratio)
	}
	return rt
}

// ratioLabel is the figures of x's bar: "0.83 = measured / floor (the floor's name)".
func ratioLabel(x bench.Result) string {
	s := fmt.Sprintf("%.2f = %s / %s", x.Ratio, bench.FormatValue(x.Value, x.Unit), bench.FormatValue(x.Floor, x.Unit))
	if x.FloorName != "" {
		s += " (" + strings.TrimSuffix(strings.TrimSpace(x.FloorName), " =") + ")"
	}
	return s
}

// bars makes the horizontal bars of the ratios.
func (rt *ratios) bars() (*plotter.BarChart, error) {
	bars, err := plotter.NewBarChart(rt.vals, px(24))
	if err != nil {
		return nil, err
	}
	bars.Horizontal = true
	bars.Color = plotutil.Color(0)
	bars.LineStyle.Width = 0
	return bars, nil
}

// oneLine makes the dashed line at 1, the floor (or the budget), across every bar.
func (rt *ratios) oneLine() (*plotter.Line, error) {
	one, err := plotter.NewLine(plotter.XYs{{X: 1, Y: -0.6}, {X: 1, Y: float64(len(rt.vals)) - 0.4}})
	if err != nil {
		return nil, err
	}
	one.Color = color.RGBA{R: 200, A: 255}
	one.Width = vg.Points(1.5)
	one.Dashes = []vg.Length{vg.Points(6), vg.Points(4)}
	return one, nil
}

// barLabels makes the figures at the end of each bar.
func (rt *ratios) barLabels() (*plotter.Labels, error) {
	lab, err := plotter.NewLabels(rt.labels)
	if err != nil {
		return nil, err
	}
	for i := range lab.TextStyle {
		lab.TextStyle[i].YAlign = draw.YCenter
		lab.TextStyle[i].Font.Size = vg.Points(9)
	}
	lab.Offset = vg.Point{X: px(6)}
	return lab, nil
}

// describe writes the title and the x axis's label and names the line at 1: a budget when every
// row has one, else a floor.
func (rt *ratios) describe(p *plot.Plot, r *bench.Report, one *plotter.Line) {
	what := "ratio of each figure to its floor (measured in the same run)"
	if rt.ceiling {
		what = "each figure against its budget"
	}
	p.Title.Text = fmt.Sprintf("wattagg bench %s: %s\n%s", r.Suite, what, r.Subtitle())
	if rt.ceiling {
		p.X.Label.Text = "measured / budget (at most 1 is within the budget)"
		p.Legend.Add("budget (1)", one)
	} else {
		p.X.Label.Text = "measured / floor (1 = at the floor; above 1 is faster than the yardstick)"
		p.Legend.Add("floor (1)", one)
	}
}

// axes sets the legend's place, the ticks and the ranges, with room on the right for the
// labels.
func (rt *ratios) axes(p *plot.Plot) {
	p.Legend.Top = true
	p.X.Tick.Marker = plainTicks{}
	p.X.Min, p.X.Max = 0, rt.top*2.2
	p.Y.Min, p.Y.Max = -0.7, float64(len(rt.vals))-0.3
}

// drawBandwidth draws rows that are themselves floors (the floor suite) as horizontal bars.
func drawBandwidth(r *bench.Report, dc draw.Canvas, rows []bench.Result) error {
	p := newPlot()
	p.Title.Text = fmt.Sprintf("wattagg bench %s: the floors of this machine\n%s", r.Suite, r.Subtitle())
	n := len(rows)
	vals := make(plotter.Values, n)
	names := make([]string, n)
	labels := plotter.XYLabels{XYs: make(plotter.XYs, n), Labels: make([]string, n)}
	top := 0.0
	for i, x := range rows {
		k := n - 1 - i
		vals[k], names[k] = x.Value, x.Name
		labels.XYs[k] = plotter.XY{X: x.Value, Y: float64(k)}
		labels.Labels[k] = bench.FormatValue(x.Value, x.Unit)
		top = max(top, x.Value)
	}
	bars, err := plotter.NewBarChart(vals, px(24))
	if err != nil {
		return err
	}
	bars.Horizontal = true
	bars.Color = plotutil.Color(2)
	bars.LineStyle.Width = 0
	lab, err := plotter.NewLabels(labels)
	if err != nil {
		return err
	}
	for i := range lab.TextStyle {
		lab.TextStyle[i].YAlign = draw.YCenter
	}
	lab.Offset = vg.Point{X: px(6)}
	p.Add(plotter.NewGrid(), bars, lab)
	p.NominalY(names...)
	p.X.Label.Text = rows[0].Unit
	p.X.Tick.Marker = plainTicks{}
	p.X.Min, p.X.Max = 0, top*1.25
	p.Y.Min, p.Y.Max = -0.7, float64(n)-0.3
	p.Draw(padded(dc))
	return nil
}

// drawJoules draws, per policy and the devices it ran on, the predicted and the measured
// energy per parameter side by side; measured bars say "estimated" when no counter measured
// them.
func drawJoules(r *bench.Report, dc draw.Canvas, rows []bench.Result) error {
	p := newPlot()
	j := newJoules(rows)
	p.Title.Text = joulesTitle(r, rows[0])
	pb, mb, err := j.bars()
	if err != nil {
		return err
	}
	lab, lab2, err := j.barLabels()
	if err != nil {
		return err
	}
	p.Add(plotter.NewGrid(), pb, mb, lab, lab2)
	p.NominalX(j.names...)
	j.legend(p, pb, mb)
	j.axes(p)
	p.Draw(padded(dc))
	return nil
}

// joules is what the joules chart shows of its rows: a predicted and a measured bar per
// policy, the figures over them, and what the axes say.
type joules struct {
	pred, meas plotter.Values
	names      []string         // under each policy's bars: the policy and its devices
	labels     plotter.XYLabels // the figures, predicted and measured in turn
	w          vg.Length        // the width of a bar
	estimated  bool             // some measured figure is an estimate
	unit       string
	top        float64
	skipped    []string // "policy: why" for each row not run
}

// newJoules gathers the bars, their names and figures from rows; a skipped row keeps its
// place, without bars.
func newJoules(rows []bench.Result) joules {
	n := len(rows)
	j := joules{pred: make(plotter.Values, n), meas: make(plotter.Values, n), names: make([]string, n), w: px(34), unit: rows[0].Unit}
	for i, x := range rows {
		j.names[i] = x.Policy
		if x.Skipped != "" {
			j.names[i] += "\n(skipped)"
			why, _, _ := strings.Cut(x.Skipped, " (")
			j.skipped = append(j.skipped, x.Policy+": "+why)
			continue
		}
		if x.Device != "" {
			j.names[i] += "\n" + x.Device
		}
		j.pred[i], j.meas[i] = x.Predicted, x.Value
		j.estimated = j.estimated || x.Estimated()
		j.top = max(j.top, x.Predicted, x.Value)
		j.labels.XYs = append(j.labels.XYs, plotter.XY{X: float64(i), Y: x.Predicted}, plotter.XY{X: float64(i), Y: x.Value})
		j.labels.Labels = append(j.labels.Labels, fmt.Sprintf("%.3g", x.Predicted), fmt.Sprintf("%.3g", x.Value))
	}
	return j
}

// joulesTitle names the suite and, when x (the first row) says, the aggregation measured.
func joulesTitle(r *bench.Report, x bench.Result) string {
	subject := ""
	if x.Clients > 0 {
		subject = fmt.Sprintf(", FedAvg of %d × %s %s params", x.Clients, bench.ParamsLabel(x.Params), x.DType)
	}
	return fmt.Sprintf("wattagg bench %s: energy per parameter by policy and device%s\n%s", r.Suite, subject, r.Subtitle())
}

// bars makes the predicted bars, left of each policy's centre, and the measured ones, right.
func (j *joules) bars() (pred, meas *plotter.BarChart, err error) {
	if pred, err = j.bar(j.pred, plotutil.Color(1), -j.w/2); err != nil {
		return nil, nil, err
	}
	if meas, err = j.bar(j.meas, plotutil.Color(0), j.w/2); err != nil {
		return nil, nil, err
	}
	return pred, meas, nil
}

// bar makes one bar per value, offset from the policy's centre.
func (j *joules) bar(vals plotter.Values, c color.Color, offset vg.Length) (*plotter.BarChart, error) {
	b, err := plotter.NewBarChart(vals, j.w)
	if err != nil {
		return nil, err
	}
	b.Color, b.Offset, b.LineStyle.Width = c, offset, 0
	return b, nil
}

// barLabels makes the figures over the bars: the predicted ones and the measured ones.
func (j *joules) barLabels() (pred, meas *plotter.Labels, err error) {
	lab, err := plotter.NewLabels(j.labels)
	if err != nil {
		return nil, nil, err
	}
	for i := range lab.TextStyle {
		lab.TextStyle[i].XAlign = draw.XCenter
		lab.TextStyle[i].Font.Size = vg.Points(9)
	}
	lab.Offset = vg.Point{Y: px(4)}
	// Labels sit over their bars: predicted left of the policy's centre, measured right.
	lab2 := *lab
	lab.XYs, lab.Labels, lab.TextStyle = evens(lab.XYs), evens(lab.Labels), evens(lab.TextStyle)
	lab2.XYs, lab2.Labels, lab2.TextStyle = odds(lab2.XYs), odds(lab2.Labels), odds(lab2.TextStyle)
	lab.Offset.X, lab2.Offset.X = -j.w/2, j.w/2
	return lab, &lab2, nil
}

// legend names the bars and labels the y axis, saying whether the measured energy is an
// estimate.
func (j *joules) legend(p *plot.Plot, pred, meas *plotter.BarChart) {
	p.Legend.Add("predicted by the planner (profile)", pred)
	if j.estimated {
		p.Legend.Add("measured: ESTIMATED (no energy counter; TDP × utilisation)", meas)
		p.Y.Label.Text = j.unit + " per round (estimated)"
	} else {
		p.Legend.Add("measured by the energy counters", meas)
		p.Y.Label.Text = j.unit + " per round"
	}
}

// axes lists the policies not run under the x axis and sets the legend's place, the ticks and
// the ranges.
func (j *joules) axes(p *plot.Plot) {
	if len(j.skipped) > 0 {
		p.X.Label.Text = "not run here: " + strings.Join(j.skipped, "; ")
	}
	p.Legend.Top = true
	p.Y.Tick.Marker = plainTicks{}
	p.X.Min, p.X.Max = -0.6, float64(len(j.names))-0.4 // room for the bars beside the outer policies
	p.Y.Min, p.Y.Max = 0, j.top*1.35
}

func evens[T any](v []T) []T {
	var out []T
	for i := 0; i < len(v); i += 2 {
		out = append(out, v[i])
	}
	return out
}

func odds[T any](v []T) []T {
	var out []T
	for i := 1; i < len(v); i += 2 {
		out = append(out, v[i])
	}
	return out
}

// plainTicks are gonum's default ticks labelled as briefly as the value allows (40, not 40.00).
type plainTicks struct{}

func (plainTicks) Ticks(lo, hi float64) []plot.Tick {
	ts := plot.DefaultTicks{}.Ticks(lo, hi)
	for i := range ts {
		if ts[i].Label != "" {
			ts[i].Label = strconv.FormatFloat(ts[i].Value, 'g', 4, 64)
		}
	}
	return ts
}

// padded leaves a margin around a single plot, so that no label touches the image's edge.
func padded(dc draw.Canvas) draw.Canvas {
	return draw.Crop(dc, px(14), -px(24), px(10), -px(10))
}

// newPlot is a single-chart plot: a larger title, kept clear of a legend at the top.
func newPlot() *plot.Plot {
	p := plot.New()
	p.Title.TextStyle.Font.Size = vg.Points(13)
	p.Title.Padding = px(18)
	return p
}

// drawHeader writes a two-line title across the top of a canvas of several panels.
func drawHeader(dc draw.Canvas, title, subtitle string) {
	sty := plot.New().Title.TextStyle
	sty.XAlign, sty.YAlign = draw.XCenter, draw.YTop
	sty.Font.Size = vg.Points(14)
	x := (dc.Min.X + dc.Max.X) / 2
	dc.FillText(sty, vg.Point{X: x, Y: dc.Max.Y - px(12)}, title)
	sty.Font.Size = vg.Points(11)
	dc.FillText(sty, vg.Point{X: x, Y: dc.Max.Y - px(42)}, subtitle)
}

func px(n int) vg.Length { return vg.Length(n) * vg.Inch / plotDPI }

// writePNG draws a w × h pixel white canvas with fn and writes it to path atomically. gonum
// panics on some data (a log axis over zero): that becomes an bench.ErrReport error, not a crash.
func writePNG(path string, w, h int, fn func(draw.Canvas) error) (err error) {
	c := vgimg.NewWith(vgimg.UseWH(px(w), px(h)), vgimg.UseDPI(plotDPI), vgimg.UseBackgroundColor(color.White))
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("%w: plotting %s: %v", bench.ErrReport, filepath.Base(path), v)
		}
	}()
	if err := fn(draw.New(c)); err != nil {
		return fmt.Errorf("plotting %s: %w", filepath.Base(path), err)
	}
	return bench.WriteFileAtomic(path, func(wr io.Writer) error {
		_, err := vgimg.PngCanvas{Canvas: c}.WriteTo(wr)
		return err
	})
}
