// Command wattagg-plot draws the PNG plots of wattagg bench reports: for each SUITE.json given
// (as `wattagg bench --out DIR` writes it), DIR/SUITE-*.png beside it, and prints the path of
// each plot it wrote, one per line. `wattagg bench --out` runs it for its plots; run it by hand to
// redraw a saved report. It is a binary of its own so that gonum/plot's start-up stays out of
// `wattagg aggregate` (bench/charts).
//
//	wattagg-plot bench-report/robust.json
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/wattagg/wattagg/bench"
	"github.com/wattagg/wattagg/bench/charts"
	"github.com/wattagg/wattagg/internal/cli"
)

func main() { cli.Main(newRoot()) }

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "wattagg-plot SUITE.json...",
		Short: "Draw the PNG plots of wattagg bench reports beside them",
		Long: `wattagg-plot reads each wattagg bench report (SUITE.json, as wattagg bench --out DIR writes
it) and draws its plots beside it: SUITE-clients.png and SUITE-params.png (throughput against
the client count and the model size, a panel per rule with its floor dashed), SUITE-ratio.png
(each figure's ratio to its floor), SUITE-bandwidth.png (the floor suite) and SUITE-joules.png
(the energy suite). It prints the path of each plot it wrote, one per line; a report with
nothing to draw writes none. wattagg bench --out runs it; it redraws saved reports too.`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) == 0 {
				return cli.Usagef("wattagg-plot needs at least one SUITE.json")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, path := range args {
				if err := plot(cmd, path); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cli.Setup(root)
	return root
}

// plot draws the report at path into its directory and prints the plots' paths.
func plot(cmd *cobra.Command, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	r, err := bench.ReadReport(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	dir := filepath.Dir(path)
	names, err := charts.Write(r, dir)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	for _, n := range names {
		fmt.Fprintln(cmd.OutOrStdout(), filepath.Join(dir, n))
	}
	return nil
}
