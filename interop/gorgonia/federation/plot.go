package federation

import (
	"errors"
	"fmt"
	"image/color"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/wattagg/wattagg/energy"
)

// ErrPlot is returned when a plot cannot be drawn from the results given.
var ErrPlot = errors.New("federation: cannot plot")

// palette gives each rule of the table its own colour (gonum's plotutil palette repeats after
// seven, and the table has eight rules): Tableau 10, whose colours stay apart for readers
// with the common colour-vision deficiencies.
var palette = []color.Color{
	color.RGBA{0xe1, 0x57, 0x59, 0xff}, // red
	color.RGBA{0x4e, 0x79, 0xa7, 0xff}, // blue
	color.RGBA{0x76, 0xb7, 0xb2, 0xff}, // teal
	color.RGBA{0xf2, 0x8e, 0x2b, 0xff}, // orange
	color.RGBA{0x59, 0xa1, 0x4f, 0xff}, // green
	color.RGBA{0xb0, 0x7a, 0xa1, 0xff}, // purple
	color.RGBA{0x9c, 0x75, 0x5f, 0xff}, // brown
	color.RGBA{0xed, 0xc9, 0x48, 0xff}, // yellow
	color.RGBA{0xff, 0x9d, 0xa7, 0xff}, // pink
	color.RGBA{0xba, 0xb0, 0xac, 0xff}, // grey
}

func paletteColor(i int) color.Color { return palette[i%len(palette)] }

// ruleStyle is rule i's colour and dashes in a table's plot: a rule run after
// nearest-neighbour mixing is drawn dashed in the colour of the same rule without it, where the
// table has that rule.
func ruleStyle(rules []Rule, i int) (color.Color, []vg.Length) {
	r := rules[i]
	if r.Params["nnm"] == 0 {
		return paletteColor(i), nil
	}
	for k, o := range rules {
		if o.Name == r.Name && o.Params["nnm"] == 0 {
			return paletteColor(k), []vg.Length{px(5), px(3)}
		}
	}
	return paletteColor(i), []vg.Length{px(5), px(3)}
}

// plotDPI is the PNGs' resolution; sizes are in pixels at it.
const plotDPI = 96

func px(n int) vg.Length { return vg.Length(n) * vg.Inch / plotDPI }

// PlotRun writes a PNG of one federation to path: held-out accuracy per round above, the
// joules the server's round reports gave per round below, labelled with their source (an
// estimate is called one), and a note for rounds without a measurement.
func PlotRun(path string, res *Result, setup string) error {
	if len(res.Rounds) == 0 {
		return fmt.Errorf("%w: no rounds", ErrPlot)
	}
	acc, err := accuracyPlot(res)
	if err != nil {
		return err
	}
	j, err := joulesPlot(res.Rounds)
	if err != nil {
		return err
	}
	sec, err := secondsPlot(res.Rounds)
	if err != nil {
		return err
	}
	return writePNG(path, 1100, 1120, func(dc draw.Canvas) {
		drawHeader(dc, "wattagg federation: "+ruleAttackLabel(res), setup)
		drawStacked(dc, acc, j, sec)
	})
}

// accuracyPlot is the run's held-out accuracy per round, with the 0.90 target, the final
// accuracy and the round that first reached the target.
func accuracyPlot(res *Result) (*plot.Plot, error) {
	acc := plot.New()
	acc.Title.Text = "held-out accuracy of each round's global model (answered by the inference node)"
	target, err := hline(0, float64(len(res.Rounds)+1), 0.9, color.Gray{Y: 90})
	if err != nil {
		return nil, err
	}
	acc.Add(plotter.NewGrid(), target)
	acc.Legend.Add("0.90 (the target)", target)
	label := fmt.Sprintf("%s: final %.3f", ruleAttackLabel(res), res.Final())
	if r := res.FirstReaching(0.9); r > 0 {
		label += fmt.Sprintf(", 0.90 first in round %d", r)
	}
	if err := addCurve(acc, accuracies(res), paletteColor(1), nil, label); err != nil {
		return nil, err
	}
	acc.Legend.Left, acc.Legend.Top = false, false
	acc.Legend.XOffs, acc.Legend.YOffs = -px(8), px(8)
	acc.Y.Label.Text = "accuracy"
	acc.Y.Min, acc.Y.Max = 0, 1
	roundAxis(acc, len(res.Rounds))
	return acc, nil
}

// roundJoules is what the round reports say of the aggregations' joules: a bar per round (0
// where none was measured), the sources that measured them, their total, and how many rounds
// were not measured.
type roundJoules struct {
	bars    plotter.Values
	sources []string
	total   float64
	missing int
}

// joulesOf collects the rounds' joules.
func joulesOf(rounds []Round) roundJoules {
	var rj roundJoules
	for _, rd := range rounds {
		v := 0.0
		if rd.Joules != nil {
			v = *rd.Joules
			rj.total += v
			if !slices.Contains(rj.sources, rd.JoulesSource) {
				rj.sources = append(rj.sources, rd.JoulesSource)
			}
		} else {
			rj.missing++
		}
		rj.bars = append(rj.bars, v)
	}
	return rj
}

// joulesPlot is the joules of each round's aggregation as bars, titled with where they came
// from: measured, estimated, or not at all.
func joulesPlot(rounds []Round) (*plot.Plot, error) {
	j := plot.New()
	rj := joulesOf(rounds)
	rj.label(j, rounds)
	if err := addRoundBars(j, rj.bars, paletteColor(4), len(rounds)); err != nil {
		return nil, err
	}
	return j, nil
}

// label sets the joules plot's title and y label: the joules' source and total, or why there
// are none.
func (rj roundJoules) label(j *plot.Plot, rounds []Round) {
	measured := len(rounds) - rj.missing
	switch {
	case len(rj.sources) == 0:
		j.Title.Text = "joules per round: not measured (" + rounds[0].JoulesReason + ")"
	case len(rj.sources) == 1 && rj.sources[0] == string(energy.SourceEstimate):
		// An estimate is W = idle + (TDP − idle)·u with u the whole machine's CPU use over the
		// aggregation's window: other work on the machine shows in it.
		j.Title.Text = fmt.Sprintf("joules of each round's aggregation: ESTIMATED, not measured (no energy counter here; a power model × the whole machine's CPU use); %.2f J in %d rounds",
			rj.total, measured)
		j.Y.Label.Text = "joules (estimate)"
	default:
		j.Title.Text = fmt.Sprintf("joules of each round's aggregation, measured by %s; %.2f J in %d rounds", strings.Join(rj.sources, ", "), rj.total, measured)
	}
	if j.Y.Label.Text == "" {
		j.Y.Label.Text = "joules"
	}
	if rj.missing > 0 && len(rj.sources) > 0 {
		j.Title.Text += fmt.Sprintf("; %d rounds not measured (no bar)", rj.missing)
	}
}

// secondsPlot is the time of each round's aggregation as bars.
func secondsPlot(rounds []Round) (*plot.Plot, error) {
	// The aggregation's time, from the same reports: an estimate's joules follow it.
	sec := plot.New()
	sec.Title.Text = "time each round's aggregation took (the round report's seconds: closing the round, writing the model durably)"
	var ms plotter.Values
	for _, rd := range rounds {
		ms = append(ms, rd.Seconds*1e3)
	}
	sec.Y.Label.Text = "milliseconds"
	if err := addRoundBars(sec, ms, paletteColor(6), len(rounds)); err != nil {
		return nil, err
	}
	return sec, nil
}

// addRoundBars adds a bar per round of colour c to p, with a grid, a y axis from 0 to above
// the highest bar and an x axis of the rounds.
func addRoundBars(p *plot.Plot, v plotter.Values, c color.Color, rounds int) error {
	bc, err := plotter.NewBarChart(v, px(14))
	if err != nil {
		return err
	}
	bc.Color, bc.LineStyle.Width = c, 0
	// Bars are drawn at 0, 1, ...: shift them onto the round numbers.
	bc.XMin = 1
	p.Add(plotter.NewGrid(), bc)
	p.Y.Min, p.Y.Max = 0, maxOf(v)*1.15
	p.Y.Tick.Marker = plainTicks{}
	roundAxis(p, rounds)
	return nil
}

// drawStacked draws the plots one above the other, their axes aligned, below the header.
func drawStacked(dc draw.Canvas, panels ...*plot.Plot) {
	grid := make([][]*plot.Plot, len(panels))
	for i, p := range panels {
		grid[i] = []*plot.Plot{p}
	}
	tiles := draw.Tiles{Rows: len(panels), Cols: 1, PadTop: px(70), PadY: px(26), PadLeft: px(12), PadRight: px(24), PadBottom: px(10)}
	c := plot.Align(grid, tiles, dc)
	for i, p := range panels {
		p.Draw(c[i][0])
	}
}

// PlotTable writes a PNG of the attack table's runs to path: a panel per attack, a curve of
// held-out accuracy per round for every rule, the clean FedAvg run dashed in each for
// reference.
func PlotTable(path string, t *Table, setup string) error {
	var clean *Result
	if i, j := ruleIndex(t, "fedavg"), attackIndex(t, NoAttack); i >= 0 && j >= 0 {
		clean = t.Results[i][j]
	}
	var panels []*plot.Plot
	rounds := 0
	for j, a := range t.Attacks {
		if a == NoAttack {
			continue
		}
		p := plot.New()
		p.Title.Text = fmt.Sprintf("%s: %d of %d clients poisoned (legend: final accuracy)", a, t.Poisoned, clients(t))
		p.Add(plotter.NewGrid())
		if clean != nil {
			if err := addCurve(p, accuracies(clean), color.Black, []vg.Length{px(6), px(4)}, fmt.Sprintf("fedavg, no attack: %.3f", clean.Final())); err != nil {
				return err
			}
			rounds = max(rounds, len(clean.Rounds))
		}
		for i, r := range t.Rules {
			res := t.Results[i][j]
			if res == nil || len(res.Rounds) == 0 {
				continue
			}
			label := fmt.Sprintf("%s: %.3f", r.Label(), res.Final())
			if res.Collapsed != "" {
				label += fmt.Sprintf(" (collapsed in round %d)", len(res.Rounds)+1)
			}
			c, dashes := ruleStyle(t.Rules, i)
			if err := addCurve(p, accuracies(res), c, dashes, label); err != nil {
				return err
			}
			rounds = max(rounds, len(res.Rounds))
		}
		p.Y.Label.Text = "held-out accuracy"
		p.Y.Min, p.Y.Max = 0, 1
		// Lower right but lifted: every curve is high there by the last rounds, except a
		// collapsed one, which lies along the bottom.
		p.Legend.Left, p.Legend.Top = false, false
		p.Legend.XOffs, p.Legend.YOffs = -px(8), px(64)
		p.Legend.TextStyle.Font.Size = vg.Points(10)
		panels = append(panels, p)
	}
	if len(panels) == 0 || rounds == 0 {
		return fmt.Errorf("%w: the table has no attacked runs", ErrPlot)
	}
	for _, p := range panels {
		roundAxis(p, rounds)
	}
	return writePNG(path, 1100, 460*len(panels)+80, func(dc draw.Canvas) {
		drawHeader(dc, "wattagg federation under attack: held-out accuracy per round, by aggregation rule", setup)
		drawStacked(dc, panels...)
	})
}

func ruleIndex(t *Table, name string) int {
	for i, r := range t.Rules {
		if r.Name == name {
			return i
		}
	}
	return -1
}

func attackIndex(t *Table, a Attack) int {
	for j, x := range t.Attacks {
		if x == a {
			return j
		}
	}
	return -1
}

func accuracies(res *Result) plotter.XYs {
	pts := make(plotter.XYs, len(res.Rounds))
	for i, rd := range res.Rounds {
		pts[i] = plotter.XY{X: float64(rd.Round), Y: rd.Accuracy}
	}
	return pts
}

// ruleAttackLabel names a run: "fedavg, no attack", "median, 3 of 10 clients scaled ×−10".
func ruleAttackLabel(res *Result) string {
	s := ruleLabel(res.Rule)
	if res.Attack != NoAttack {
		return s + fmt.Sprintf(", %d of %d clients %s", len(res.Poisoned), res.Clients, res.Attack)
	}
	return s + ", no attack"
}

// clients is the table's client count, from its runs.
func clients(t *Table) int {
	for _, row := range t.Results {
		for _, r := range row {
			if r != nil {
				return r.Clients
			}
		}
	}
	return 0
}

func maxOf(v plotter.Values) float64 {
	m := 0.0
	for _, x := range v {
		m = max(m, x)
	}
	if m == 0 {
		return 1
	}
	return m
}

// addCurve adds a line with points (or dashed, without points) and its legend entry.
func addCurve(p *plot.Plot, pts plotter.XYs, c color.Color, dashes []vg.Length, label string) error {
	line, points, err := plotter.NewLinePoints(pts)
	if err != nil {
		return err
	}
	line.Color, line.Width, line.Dashes = c, vg.Points(2), dashes
	if dashes != nil {
		p.Add(line)
		p.Legend.Add(label, line)
		return nil
	}
	points.Color, points.Shape, points.Radius = c, draw.CircleGlyph{}, vg.Points(2.5)
	p.Add(line, points)
	p.Legend.Add(label, line, points)
	return nil
}

// hline is a dashed horizontal line at y from x0 to x1.
func hline(x0, x1, y float64, c color.Color) (*plotter.Line, error) {
	l, err := plotter.NewLine(plotter.XYs{{X: x0, Y: y}, {X: x1, Y: y}})
	if err != nil {
		return nil, err
	}
	l.Color, l.Width, l.Dashes = c, vg.Points(1.5), []vg.Length{px(6), px(4)}
	return l, nil
}

// roundAxis labels the x axis with whole rounds.
func roundAxis(p *plot.Plot, rounds int) {
	p.X.Label.Text = "round"
	p.X.Min, p.X.Max = 0.5, float64(rounds)+0.5
	step := max(1, (rounds+19)/20)
	var ticks []plot.Tick
	for r := 1; r <= rounds; r++ {
		label := ""
		if r%step == 0 || r == 1 {
			label = strconv.Itoa(r)
		}
		ticks = append(ticks, plot.Tick{Value: float64(r), Label: label})
	}
	p.X.Tick.Marker = plot.ConstantTicks(ticks)
}

// plainTicks are gonum's default ticks labelled as briefly as the value allows.
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

// drawHeader writes a title and a subtitle across the top of the canvas.
func drawHeader(dc draw.Canvas, title, subtitle string) {
	sty := plot.New().Title.TextStyle
	sty.XAlign, sty.YAlign = draw.XCenter, draw.YTop
	sty.Font.Size = vg.Points(14)
	x := (dc.Min.X + dc.Max.X) / 2
	dc.FillText(sty, vg.Point{X: x, Y: dc.Max.Y - px(10)}, title)
	sty.Font.Size = vg.Points(10)
	dc.FillText(sty, vg.Point{X: x, Y: dc.Max.Y - px(38)}, subtitle)
}

// writePNG draws a w × h pixel white canvas with fn and writes it to path through a temporary
// file renamed over it. gonum panics on some data: that becomes an ErrPlot error.
func writePNG(path string, w, h int, fn func(draw.Canvas)) (err error) {
	c := vgimg.NewWith(vgimg.UseWH(px(w), px(h)), vgimg.UseDPI(plotDPI), vgimg.UseBackgroundColor(color.White))
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("%w: %s: %v", ErrPlot, filepath.Base(path), v)
		}
	}()
	fn(draw.New(c))
	return writeFileAtomic(path, func(w io.Writer) error {
		_, err := vgimg.PngCanvas{Canvas: c}.WriteTo(w)
		return err
	})
}

// writeFileAtomic writes path through a temporary file beside it, synced and renamed over it.
func writeFileAtomic(path string, fn func(io.Writer) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after a successful rename, there is nothing to remove
	if err := fn(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
