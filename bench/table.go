package bench

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// WriteTable prints rows as an aligned table: each figure beside its floor and their ratio.
func WriteTable(w io.Writer, rows []Row) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "what\tseconds\tGB/s\tfloor GB/s\tratio\tparams/s\t")
	for _, r := range rows {
		if r.Skipped != "" {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t  skipped: %s\n", r.Name, r.Skipped)
			continue
		}
		floor, ratio := "-", "-"
		if r.FloorGBps > 0 {
			floor = fmt.Sprintf("%.1f", r.FloorGBps)
			ratio = fmt.Sprintf("%.2f", r.Ratio)
		}
		fmt.Fprintf(tw, "%s\t%.4f\t%.1f\t%s\t%s\t%s\t", r.Name, r.Seconds, r.GBps, floor, ratio, human(int64(r.ParamsPS)))
		note := r.Note
		if r.FloorName != "" {
			note = strings.TrimPrefix(note+"; floor: "+r.FloorName, "; ")
		}
		if note != "" {
			fmt.Fprintf(tw, "  %s", note)
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}
