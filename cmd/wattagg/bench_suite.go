package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/wattagg/wattagg/bench"
	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/internal/cli"
)

// benchSuite is one `wattagg bench` suite. run measures, prints the suite's table on
// env.stdout as the suite always has, and returns the report.
type benchSuite interface {
	name() string
	title() string
	run(env *benchEnv) (*bench.Report, error)
}

// benchEnv is what every suite runs with.
type benchEnv struct {
	ctx            context.Context
	stdout, stderr io.Writer
	json           bool // print the main rows as JSON instead of a table
	cpu            *device.CPU
	machine        bench.Machine
	preset         benchPreset
	quick          bool
	// step reports progress within the running suite: done of total steps, and what.
	step func(done, total int, what string)
}

func (e *benchEnv) progress(done, total int, what string) {
	if e.step != nil {
		e.step(done, total, what)
	}
}

// newReport starts s's report on env's machine.
func (e *benchEnv) newReport(s benchSuite) *bench.Report {
	r := bench.NewReport(s.name(), s.title(), e.machine)
	r.Quick = e.quick
	if benchTiny() {
		r.Notes = append(r.Notes, "tiny sizes ("+envBenchTiny+"=1): a test run, the figures measure nothing")
	}
	return r
}

// printRows prints rows as the suite's table (or JSON), and sweep rows under a heading.
func (e *benchEnv) printRows(rows []bench.Row, heading string) error {
	if heading != "" {
		if e.json {
			return nil // --json prints the main rows; the sweeps are in the report
		}
		fmt.Fprintf(e.stdout, "\n%s\n", heading)
	}
	c := benchCommon{json: e.json}
	return c.print(e.stdout, rows)
}

// writeReport writes rep into dir, its plots drawn by wattagg-plot, and says so on stderr.
func writeReport(ctx context.Context, stderr io.Writer, rep *bench.Report, dir string) ([]string, error) {
	files, err := rep.Write(dir, siblingPlotter(ctx, stderr))
	if err != nil {
		return nil, err
	}
	paths := make([]string, len(files))
	for i, f := range files {
		paths[i] = filepath.Join(dir, f)
	}
	fmt.Fprintf(stderr, "wattagg: wrote %s\n", strings.Join(paths, ", "))
	return files, nil
}

// sweepHeading names a sweep's table: "sweep: clients 8..128 at 4M params".
func sweepHeading(p bench.SweepPoint, s bench.SweepSizes) string {
	if p.Sweep == bench.SweepClients {
		return fmt.Sprintf("sweep over clients %v, %s params each", s.Clients, bench.ParamsLabel(int64(s.ClientParams)))
	}
	var ps []string
	for _, v := range s.Params {
		ps = append(ps, bench.ParamsLabel(int64(v)))
	}
	return fmt.Sprintf("sweep over params %v, %d clients", ps, s.ParamClients)
}

// siblingPlotter draws a report's plots with the wattagg-plot binary, beside this one (see
// bench/charts for why the plots are not drawn in this process). Without it the report is
// written without plots, and one line on stderr says where it was looked for.
func siblingPlotter(ctx context.Context, stderr io.Writer) bench.Plotter {
	return func(r *bench.Report, dir string) ([]string, error) {
		out, err := cli.OutputOfSibling(ctx, stderr, cli.PlotBinary, cli.PlotEnv, []string{filepath.Join(dir, r.Suite+".json")})
		if errors.Is(err, cli.ErrNoSibling) {
			fmt.Fprintf(stderr, "wattagg: %s: no plots: %v\n", r.Suite, err)
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("plots of %s: %w", r.Suite, err)
		}
		var names []string
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if line != "" {
				names = append(names, filepath.Base(line))
			}
		}
		return names, nil
	}
}
