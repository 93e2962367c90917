package bench

import (
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strings"
)

// WriteMarkdown writes r in the README's "Measured here" form: a table of each figure beside
// the floor measured in the same run and their ratio, the sweeps' tables, and links to plots
// (file names relative to the Markdown file).
func (r *Report) WriteMarkdown(w io.Writer, plots []string) error {
	if err := r.check(); err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# wattagg bench %s: %s\n\n", r.Suite, mdEscape(r.Title))
	fmt.Fprintf(&b, "Measured on **%s**, %s %s/%s, %s", mdEscape(r.Machine.String()), r.Machine.GoVersion,
		r.Machine.GOOS, r.Machine.GOARCH, r.Date.Format("2006-01-02 15:04 MST"))
	if r.Quick {
		b.WriteString(" (`--quick`: short runs, smaller sweeps)")
	}
	b.WriteString(". Every floor was measured in the same run.\n\n")
	if r.Machine.KernelsNote != "" {
		fmt.Fprintf(&b, "Kernels: %s.\n\n", mdEscape(r.Machine.KernelsNote))
	}
	if len(r.Config) > 0 {
		var kv []string
		for _, k := range slices.Sorted(maps.Keys(r.Config)) {
			kv = append(kv, fmt.Sprintf("`%s=%s`", k, r.Config[k]))
		}
		fmt.Fprintf(&b, "Settings: %s.\n\n", strings.Join(kv, ", "))
	}
	writeMainTable(&b, r.Main())
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "- %s\n", mdEscape(n))
	}
	if len(r.Notes) > 0 {
		b.WriteString("\n")
	}
	for _, s := range []struct{ sweep, title string }{
		{SweepClients, "Against the number of clients"},
		{SweepParams, "Against the model size"},
	} {
		rows := r.Sweep(s.sweep)
		if len(rows) == 0 {
			continue
		}
		fmt.Fprintf(&b, "## %s\n\n", s.title)
		if p := r.Suite + "-" + s.sweep + ".png"; slices.Contains(plots, p) {
			fmt.Fprintf(&b, "![%s: %s](%s)\n\n", r.Suite, strings.ToLower(s.title), p)
		}
		writeSweepTable(&b, rows)
	}
	var other []string
	for _, p := range plots {
		if p != r.Suite+"-"+SweepClients+".png" && p != r.Suite+"-"+SweepParams+".png" {
			other = append(other, p)
		}
	}
	if len(other) > 0 {
		b.WriteString("## Plots\n\n")
		for _, p := range other {
			fmt.Fprintf(&b, "![%s](%s)\n\n", strings.TrimSuffix(p, ".png"), p)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeMainTable writes the main rows: what, measured, floor, ratio; predicted and source
// columns when a row has them (energy).
func writeMainTable(b *strings.Builder, rows []Result) {
	if len(rows) == 0 {
		return
	}
	predicted := slices.ContainsFunc(rows, func(r Result) bool { return r.Predicted != 0 })
	source := slices.ContainsFunc(rows, func(r Result) bool { return r.Source != "" })
	head := []string{"what", "measured", "floor, same run", "ratio"}
	if predicted {
		head = append(head, "predicted")
	}
	if source {
		head = append(head, "source")
	}
	head = append(head, "note")
	writeRow(b, head...)
	writeRow(b, slices.Repeat([]string{"---"}, len(head))...)
	for _, r := range rows {
		cells := []string{Describe(r)}
		if r.Skipped != "" {
			cells = append(cells, "skipped: "+r.Skipped, "—", "—")
			if predicted {
				cells = append(cells, "—")
			}
			if source {
				cells = append(cells, "—")
			}
			writeRow(b, append(cells, r.Note)...)
			continue
		}
		cells = append(cells, measured(r), floorCell(r), ratioCell(r))
		if predicted {
			cells = append(cells, FormatValue(r.Predicted, r.Unit))
		}
		if source {
			src := r.Source
			if r.Estimated() {
				src += " (estimated: no energy counter)"
			}
			cells = append(cells, src)
		}
		writeRow(b, append(cells, r.Note)...)
	}
	b.WriteString("\n")
}

// writeSweepTable writes a sweep's rows with their parameters in columns.
func writeSweepTable(b *strings.Builder, rows []Result) {
	writeRow(b, "rule", "clients", "params", "dtype", "measured", "floor, same run", "ratio")
	writeRow(b, slices.Repeat([]string{"---"}, 7)...)
	for _, r := range rows {
		if r.Skipped != "" {
			writeRow(b, r.Rule, fmt.Sprint(r.Clients), ParamsLabel(r.Params), r.DType, "skipped: "+r.Skipped, "—", "—")
			continue
		}
		writeRow(b, r.Rule, fmt.Sprint(r.Clients), ParamsLabel(r.Params), r.DType, measured(r), floorCell(r), ratioCell(r))
	}
	b.WriteString("\n")
}

func writeRow(b *strings.Builder, cells ...string) {
	b.WriteString("|")
	for _, c := range cells {
		b.WriteString(" " + mdEscape(c) + " |")
	}
	b.WriteString("\n")
}

// Describe is a row's "what": its name, and the policy's devices for energy rows.
func Describe(r Result) string {
	if r.Device != "" && r.Policy != "" {
		return r.Name + " (" + r.Device + ")"
	}
	return r.Name
}

func measured(r Result) string {
	s := FormatValue(r.Value, r.Unit)
	if r.ParamsPerSecond > 0 {
		s += fmt.Sprintf(" (%s params/s)", humanCount(int64(r.ParamsPerSecond)))
	}
	if r.Estimated() {
		s += " estimated"
	}
	return s
}

func floorCell(r Result) string {
	if r.Floor <= 0 {
		return "—"
	}
	return strings.TrimSpace(r.FloorName + " " + FormatValue(r.Floor, r.Unit))
}

func ratioCell(r Result) string {
	if r.Floor <= 0 {
		return "—"
	}
	s := fmt.Sprintf("%.2f", r.Ratio)
	if r.Ceiling {
		if r.Ratio <= 1 {
			s += " (within)"
		} else {
			s += " (OVER)"
		}
	}
	return s
}

// FormatValue prints v with three significant digits and its unit.
func FormatValue(v float64, unit string) string {
	var s string
	switch a := math.Abs(v); {
	case a == 0:
		s = "0"
	case a >= 100:
		s = fmt.Sprintf("%.0f", v)
	case a >= 10:
		s = fmt.Sprintf("%.1f", v)
	case a >= 1:
		s = fmt.Sprintf("%.2f", v)
	default:
		s = fmt.Sprintf("%.3g", v)
	}
	return strings.TrimSpace(s + " " + unit)
}

// humanCount prints a count with an SI prefix: 4.19M, 65.5k, 512.
func humanCount(n int64) string {
	if n == 0 {
		return "—"
	}
	return human(n)
}

// ParamsLabel prints a model size as the benchmarks choose them, in binary multiples (4M is
// 4·2^20, as in the README's tables), and other sizes with an SI prefix.
func ParamsLabel(n int64) string {
	switch {
	case n > 0 && n%(1<<20) == 0:
		return fmt.Sprintf("%dM", n>>20)
	case n > 0 && n < 1<<20 && n%(1<<10) == 0:
		return fmt.Sprintf("%dk", n>>10)
	}
	return humanCount(n)
}

// mdEscape keeps a cell in its table cell: pipes escaped, line breaks folded.
func mdEscape(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	return strings.Join(strings.Fields(s), " ")
}
