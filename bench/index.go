package bench

import (
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"
)

// Index is the front page of a folder of reports (`wattagg bench all`): the machine, then
// every suite with its files, what it skipped, or why it failed.
type Index struct {
	Machine Machine
	Date    time.Time
	Quick   bool
	Command string // the command line that made the folder
	Seconds float64
	Suites  []IndexEntry
}

// IndexEntry is one suite of an Index.
type IndexEntry struct {
	Suite   string
	Title   string
	Files   []string // relative to the folder: SUITE.json, SUITE.md, then the plots
	Seconds float64
	Skipped []string // rows this machine could not run, and why
	Err     string   // the suite failed: no files
}

// Write writes idx as dir/index.md, atomically.
func (idx Index) Write(dir string) error {
	return WriteFileAtomic(filepath.Join(dir, "index.md"), func(w io.Writer) error { return WriteIndex(w, idx) })
}

// WriteIndex writes idx as Markdown: the machine, a table of the suites linking every file,
// what was skipped, and each suite's plots inline.
func WriteIndex(w io.Writer, idx Index) error {
	var b strings.Builder
	writeIndexHeader(&b, idx)
	writeMachineTable(&b, idx.Machine)
	writeSuitesTable(&b, idx.Suites)
	writeSkipped(&b, idx.Suites)
	writeSuitePlots(&b, idx.Suites)
	_, err := io.WriteString(w, b.String())
	return err
}

// writeIndexHeader writes the title, where and when the folder was measured, and the command
// that made it.
func writeIndexHeader(b *strings.Builder, idx Index) {
	b.WriteString("# wattagg bench\n\n")
	fmt.Fprintf(b, "Measured on **%s**, %s %s/%s, %s", mdEscape(idx.Machine.String()), idx.Machine.GoVersion,
		idx.Machine.GOOS, idx.Machine.GOARCH, idx.Date.Format("2006-01-02 15:04 MST"))
	if idx.Quick {
		b.WriteString(", `--quick` (short runs, smaller sweeps)")
	}
	fmt.Fprintf(b, ", in %.0f s. Every figure is beside a floor measured in the same run.\n\n", idx.Seconds)
	if idx.Command != "" {
		fmt.Fprintf(b, "```sh\n%s\n```\n\n", idx.Command)
	}
}

// writeMachineTable writes the machine section: a row for each thing known about m.
func writeMachineTable(b *strings.Builder, m Machine) {
	b.WriteString("## Machine\n\n")
	writeRow(b, "what", "this machine")
	writeRow(b, "---", "---")
	writeRow(b, "CPU", m.CPU)
	if m.Cores > 0 || m.Threads > 0 {
		writeRow(b, "cores / threads available", fmt.Sprintf("%d / %d", m.Cores, m.Threads))
	}
	writeRow(b, "workers", fmt.Sprint(m.Workers))
	kernels := m.Kernels
	if m.KernelsNote != "" {
		kernels += " (" + m.KernelsNote + ")"
	}
	writeRow(b, "kernels", kernels)
	if len(m.Features) > 0 {
		writeRow(b, "CPU features used", strings.Join(m.Features, " "))
	}
	if m.GOAMD64 != "" {
		writeRow(b, "GOAMD64", m.GOAMD64)
	}
	writeRow(b, "Go", fmt.Sprintf("%s %s/%s", m.GoVersion, m.GOOS, m.GOARCH))
	gpus := "none found"
	if len(m.GPUs) > 0 {
		gpus = strings.Join(m.GPUs, ", ")
	}
	writeRow(b, "GPUs", gpus)
	if m.Meter != "" {
		writeRow(b, "energy", m.Meter)
	}
}

// writeSuitesTable writes the table of the suites: each one's report and plots linked, or why
// it failed, and its time.
func writeSuitesTable(b *strings.Builder, suites []IndexEntry) {
	b.WriteString("\n## Suites\n\n")
	writeRow(b, "suite", "what", "report", "plots", "time")
	writeRow(b, "---", "---", "---", "---", "---")
	for _, s := range suites {
		if s.Err != "" {
			writeRow(b, s.Suite, s.Title, "FAILED: "+s.Err, "", fmt.Sprintf("%.1f s", s.Seconds))
			continue
		}
		docs, plots := fileLinks(s.Files)
		writeRow(b, s.Suite, s.Title, docs, plots, fmt.Sprintf("%.1f s", s.Seconds))
	}
	b.WriteString("\n")
}

// fileLinks links files, the documents and the plots apart, each list joined into a cell.
func fileLinks(files []string) (docs, plots string) {
	var d, p []string
	for _, f := range files {
		link := fmt.Sprintf("[%s](%s)", f, f)
		if strings.HasSuffix(f, ".png") {
			p = append(p, link)
		} else {
			d = append(d, link)
		}
	}
	return strings.Join(d, " · "), strings.Join(p, " · ")
}

// writeSkipped lists what each suite could not run on this machine, and why; nothing when every
// row ran.
func writeSkipped(b *strings.Builder, suites []IndexEntry) {
	var skipped []string
	for _, s := range suites {
		for _, x := range s.Skipped {
			skipped = append(skipped, fmt.Sprintf("- %s: %s", s.Suite, mdEscape(x)))
		}
	}
	if len(skipped) > 0 {
		b.WriteString("## Not run on this machine\n\n" + strings.Join(skipped, "\n") + "\n\n")
	}
}

// writeSuitePlots writes a section for each suite that ran: its title, a link to its tables, and
// its plots inline.
func writeSuitePlots(b *strings.Builder, suites []IndexEntry) {
	for _, s := range suites {
		if s.Err != "" {
			continue
		}
		fmt.Fprintf(b, "## %s\n\n%s. Tables: [%s.md](%s.md).\n\n", s.Suite, mdEscape(s.Title), s.Suite, s.Suite)
		for _, f := range s.Files {
			if strings.HasSuffix(f, ".png") {
				fmt.Fprintf(b, "![%s](%s)\n\n", strings.TrimSuffix(f, ".png"), f)
			}
		}
	}
}
