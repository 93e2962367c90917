package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ErrReport marks a report that cannot be written or read: no suite name, a suite name that
// is not a plain file name, a JSON document of another format or version.
var ErrReport = errors.New("bench: bad report")

// ReportVersion is the version of the JSON form; ReadReport refuses others, so that a tool
// comparing runs never mixes two meanings of a field.
const ReportVersion = 1

// Sweep names say which plot a result belongs to: the x axis it was measured along.
const (
	SweepClients = "clients" // updates per round, model size fixed
	SweepParams  = "params"  // parameters per update, client count fixed
)

// Report is what one `wattagg bench` suite measured, on which machine, and when: the form
// people compare runs and machines with. It is written as JSON (ReadReport reads it back),
// Markdown and PNG plots.
type Report struct {
	Version int       `json:"version"`
	Suite   string    `json:"suite"` // floor, mean, e2e, stream, robust, energy: the file names' stem
	Title   string    `json:"title"` // what the suite measures, one line
	Machine Machine   `json:"machine"`
	Date    time.Time `json:"date"`
	Quick   bool      `json:"quick,omitempty"`
	// Config holds the settings that shaped the run (flags and sweep sizes), as text.
	Config  map[string]string `json:"config,omitempty"`
	Results []Result          `json:"results"`
	Notes   []string          `json:"notes,omitempty"`
}

// Result is one measured figure beside the floor measured in the same run, with the
// parameters it was measured at. Value and Floor share Unit.
type Result struct {
	Name string `json:"name"`
	// Sweep is "" for the suite's main rows, else SweepClients or SweepParams: rows along one
	// axis of a plot.
	Sweep   string `json:"sweep,omitempty"`
	Rule    string `json:"rule,omitempty"`
	Clients int    `json:"clients,omitempty"`
	Params  int64  `json:"params,omitempty"`
	DType   string `json:"dtype,omitempty"`
	Device  string `json:"device,omitempty"`
	Policy  string `json:"policy,omitempty"`

	Value     float64 `json:"value"`
	Unit      string  `json:"unit"`                 // "GB/s", "nJ/param", "MiB"
	Floor     float64 `json:"floor,omitempty"`      // in Unit, measured in the same run; 0: none
	FloorName string  `json:"floor_name,omitempty"` // what the floor is: "read bandwidth / 2 passes"
	// Ceiling marks a floor the figure must stay under (a memory budget) rather than one it
	// approaches from below (a bandwidth): then a ratio ≤ 1 is within.
	Ceiling bool    `json:"ceiling,omitempty"`
	Ratio   float64 `json:"ratio,omitempty"` // Value / Floor
	// IsFloor marks a row that is a floor itself (the floor suite; robust's read and FMA
	// floors): what the other rows are compared with.
	IsFloor bool `json:"is_floor,omitempty"`

	Seconds         float64 `json:"seconds,omitempty"` // median of the runs
	ParamsPerSecond float64 `json:"params_per_s,omitempty"`
	Predicted       float64 `json:"predicted,omitempty"` // in Unit: the planner's prediction (energy)
	Source          string  `json:"source,omitempty"`    // how joules were measured: rapl, nvml-energy, estimate
	Note            string  `json:"note,omitempty"`
	Skipped         string  `json:"skipped,omitempty"` // why this row was not measured here
}

// Estimated reports whether the joules of r come from the estimate (no energy counter).
func (r Result) Estimated() bool { return strings.Contains(r.Source, "estimate") }

// Series names the line a result belongs to in a sweep plot: its rule and dtype.
func (r Result) Series() string {
	return strings.TrimSpace(r.Rule + " " + r.DType)
}

// NewReport starts a report of suite on m, dated now.
func NewReport(suite, title string, m Machine) *Report {
	return &Report{Version: ReportVersion, Suite: suite, Title: title, Machine: m,
		Date: time.Now().UTC().Truncate(time.Second), Config: map[string]string{}}
}

// Add appends results.
func (r *Report) Add(res ...Result) { r.Results = append(r.Results, res...) }

// Main returns the suite's main rows (not part of a sweep).
func (r *Report) Main() []Result { return r.Sweep("") }

// Sweep returns the rows measured along sweep ("" for the main rows), in order.
func (r *Report) Sweep(sweep string) []Result {
	var out []Result
	for _, x := range r.Results {
		if x.Sweep == sweep {
			out = append(out, x)
		}
	}
	return out
}

// Skipped returns "name: why" for every result not measured here.
func (r *Report) Skipped() []string {
	var out []string
	for _, x := range r.Results {
		if x.Skipped != "" {
			out = append(out, x.Name+": "+x.Skipped)
		}
	}
	return out
}

func (r *Report) check() error {
	if r.Version != ReportVersion {
		return fmt.Errorf("%w: version %d, want %d", ErrReport, r.Version, ReportVersion)
	}
	if r.Suite == "" || r.Suite != filepath.Base(r.Suite) || strings.ContainsAny(r.Suite, `/\ `) || strings.HasPrefix(r.Suite, ".") {
		return fmt.Errorf("%w: suite name %q is not a plain file name", ErrReport, r.Suite)
	}
	return nil
}

// WriteJSON writes r as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	if err := r.check(); err != nil {
		return err
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// ReadReport reads a report written by WriteJSON.
func ReadReport(rd io.Reader) (*Report, error) {
	var r Report
	dec := json.NewDecoder(rd)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrReport, err)
	}
	if err := r.check(); err != nil {
		return nil, err
	}
	if r.Config == nil { // as NewReport makes it: an empty map is not written
		r.Config = map[string]string{}
	}
	return &r, nil
}

// Plotter draws a report's plots into dir, once dir/SUITE.json is written, and returns their
// names (relative to dir): charts.Write in a process that links the charts, or a command that
// runs the wattagg-plot binary over the JSON.
type Plotter func(r *Report, dir string) ([]string, error)

// Write writes dir/SUITE.json, then the suite's plots (dir/SUITE-*.png, by plot; none when it
// is nil), then dir/SUITE.md showing them, each replaced atomically, and returns the names of
// the files written, relative to dir: the JSON, the Markdown, then the plots.
func (r *Report) Write(dir string, plot Plotter) ([]string, error) {
	if err := r.check(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	files := []string{r.Suite + ".json", r.Suite + ".md"}
	if err := WriteFileAtomic(filepath.Join(dir, files[0]), r.WriteJSON); err != nil {
		return nil, err
	}
	var plots []string
	if plot != nil {
		var err error
		if plots, err = plot(r, dir); err != nil {
			return nil, err
		}
	}
	if err := WriteFileAtomic(filepath.Join(dir, files[1]), func(w io.Writer) error { return r.WriteMarkdown(w, plots) }); err != nil {
		return nil, err
	}
	return append(files, plots...), nil
}

// Subtitle names the machine and the date, under the title of every plot.
func (r *Report) Subtitle() string {
	s := r.Machine.String() + ", " + r.Date.Format("2006-01-02")
	if r.Quick {
		s += " (--quick)"
	}
	return s
}

// WriteFileAtomic writes name through a temporary file in its directory, renamed when
// complete, so that a reader (or a crash) never sees half a report.
func WriteFileAtomic(name string, write func(io.Writer) error) error {
	f, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	err = write(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o644)
	}
	if err == nil {
		err = os.Rename(tmp, name)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", name, err)
	}
	return nil
}
