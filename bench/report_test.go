package bench

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// sampleReport is a report with every kind of row: main rows with floors, a ceiling, a floor
// row, sweeps along both axes for two rules, energy rows (one skipped).
func sampleReport() *Report {
	r := &Report{Version: ReportVersion, Suite: "robust", Title: "robust rules beside their floors",
		Machine: Machine{CPU: "Test CPU 9000", Cores: 2, Threads: 4, Workers: 2, Kernels: "avx2", KernelsNote: "core avx2",
			Features: []string{"avx2", "fma3"}, GOAMD64: "v3", GOOS: "linux", GOARCH: "amd64", GoVersion: "go1.26.0",
			MemoryBytes: 24 << 30, GPUs: []string{"cuda:0 (Test GPU)"}, Meter: "estimate (RAPL absent: test)"},
		Date: time.Date(2026, 11, 25, 10, 30, 0, 0, time.UTC), Quick: true,
		Config: map[string]string{"clients": "32", "params": "4194304"},
		Notes:  []string{"a note | with a pipe"},
	}
	r.Add(
		Result{Name: "read floor 32 x 4M f32", Rule: "read floor", Clients: 32, Params: 4 << 20, DType: "f32", Value: 30.5, Unit: "GB/s", IsFloor: true},
		Result{Name: "median", Rule: "median", Clients: 32, Params: 4 << 20, DType: "f32", Value: 15.3, Unit: "GB/s",
			Floor: 30.5, FloorName: "read bandwidth / 1 pass", Ratio: 0.5, Seconds: 0.0352, ParamsPerSecond: 119e6, Note: "n=32"},
		Result{Name: "krum", Rule: "krum", Clients: 32, Params: 4 << 20, DType: "f32", Value: 8.4, Unit: "GB/s",
			Floor: 15.3, FloorName: "read bandwidth / 2 passes", Ratio: 8.4 / 15.3},
		Result{Name: "peak RssAnon", Rule: "fedavg --stream", Value: 110, Unit: "MiB", Floor: 220, FloorName: "budget", Ceiling: true, Ratio: 0.5},
	)
	for _, rule := range []string{"median", "krum"} {
		for i, c := range []int{8, 16, 32} {
			v := float64(10 + i)
			r.Add(Result{Name: rule, Sweep: SweepClients, Rule: rule, Clients: c, Params: 1 << 20, DType: "f32",
				Value: v, Unit: "GB/s", Floor: 2 * v, FloorName: "read bandwidth", Ratio: 0.5})
		}
		for i, p := range []int64{1 << 20, 4 << 20} {
			v := float64(20 - i)
			r.Add(Result{Name: rule, Sweep: SweepParams, Rule: rule, Clients: 8, Params: p, DType: "f32",
				Value: v, Unit: "GB/s", Floor: v * 1.25, FloorName: "read bandwidth", Ratio: 0.8})
		}
	}
	return r
}

// energyReport is an energy suite's report: predicted beside measured, estimated, one policy
// skipped.
func energyReport() *Report {
	r := NewReport("energy", "joules per round by policy", Machine{CPU: "Test CPU", Workers: 2, Kernels: "avx2", GOOS: "linux", GOARCH: "amd64"})
	r.Add(
		Result{Name: "always-cpu", Policy: "always-cpu", Device: "cpu 100%", Rule: "fedavg", Clients: 16, Params: 4 << 20, DType: "f32",
			Value: 0.52, Unit: "nJ/param", Predicted: 0.61, Source: "estimate"},
		Result{Name: "always-gpu", Policy: "always-gpu", Rule: "fedavg", Unit: "nJ/param", Skipped: "no GPU device here"},
		Result{Name: "planner min-energy", Policy: "planner min-energy", Device: "cpu 100%", Rule: "fedavg", Clients: 16, Params: 4 << 20,
			DType: "f32", Value: 0.49, Unit: "nJ/param", Predicted: 0.6, Source: "estimate"},
	)
	r.Date = time.Date(2026, 11, 25, 10, 30, 0, 0, time.UTC) // fixed, like sampleReport's
	return r
}

func TestReportJSONRoundTrip(t *testing.T) {
	for _, want := range []*Report{sampleReport(), energyReport()} {
		var buf bytes.Buffer
		if err := want.WriteJSON(&buf); err != nil {
			t.Fatal(err)
		}
		got, err := ReadReport(&buf)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: round trip differs:\ngot  %+v\nwant %+v", want.Suite, got, want)
		}
	}
}

func TestReadReportRejects(t *testing.T) {
	for _, tc := range []struct {
		name, doc, msg string
	}{
		{"not json", "{", "bench: bad report: unexpected EOF"},
		{"other version", `{"version":2,"suite":"mean"}`, "bench: bad report: version 2, want 1"},
		{"no version", `{"suite":"mean"}`, "bench: bad report: version 0, want 1"},
		{"unknown field", `{"version":1,"suite":"mean","figures":[]}`, `bench: bad report: json: unknown field "figures"`},
		{"path as suite", `{"version":1,"suite":"../mean"}`, `bench: bad report: suite name "../mean" is not a plain file name`},
		{"no suite", `{"version":1}`, `bench: bad report: suite name "" is not a plain file name`},
		{"hidden suite", `{"version":1,"suite":".mean"}`, `bench: bad report: suite name ".mean" is not a plain file name`},
	} {
		_, err := ReadReport(strings.NewReader(tc.doc))
		if !errors.Is(err, ErrReport) || err.Error() != tc.msg {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.msg)
		}
	}
}

func TestWriteRefusesBadSuite(t *testing.T) {
	dir := t.TempDir()
	r := sampleReport()
	r.Suite = "a/b"
	if _, err := r.Write(dir, nil); !errors.Is(err, ErrReport) || err.Error() != `bench: bad report: suite name "a/b" is not a plain file name` {
		t.Fatalf("got %v", err)
	}
	if err := r.WriteJSON(&bytes.Buffer{}); !errors.Is(err, ErrReport) {
		t.Fatalf("WriteJSON: got %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("files written: %v", entries)
	}
}

// fakePlotter stands in for charts.Write (which imports this package): it checks that the
// JSON it would read is already written, and writes placeholder files under the plots' names.
func fakePlotter(t *testing.T, names ...string) Plotter {
	return func(r *Report, dir string) ([]string, error) {
		f, err := os.Open(filepath.Join(dir, r.Suite+".json"))
		if err != nil {
			t.Errorf("plotter called before %s.json was written: %v", r.Suite, err)
			return nil, err
		}
		defer f.Close()
		if _, err := ReadReport(f); err != nil {
			t.Errorf("plotter read %s.json: %v", r.Suite, err)
		}
		for _, n := range names {
			if err := os.WriteFile(filepath.Join(dir, n), []byte("png"), 0o644); err != nil {
				return nil, err
			}
		}
		return names, nil
	}
}

func TestWriteFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new")
	r := sampleReport()
	files, err := r.Write(dir, fakePlotter(t, "robust-clients.png", "robust-params.png", "robust-ratio.png"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"robust.json", "robust.md", "robust-clients.png", "robust-params.png", "robust-ratio.png"}
	if !slices.Equal(files, want) {
		t.Fatalf("files %v, want %v", files, want)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	sorted := slices.Sorted(slices.Values(want))
	if !slices.Equal(names, sorted) {
		t.Fatalf("folder holds %v, want %v (no temporary files left)", names, sorted)
	}
	f, err := os.Open(filepath.Join(dir, "robust.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, err := ReadReport(f)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, r) {
		t.Fatal("robust.json does not read back as the report")
	}
	md, err := os.ReadFile(filepath.Join(dir, "robust.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range want[2:] {
		if !bytes.Contains(md, []byte("]("+p+")")) {
			t.Errorf("robust.md does not link %s", p)
		}
	}
}

// A plotter's failure fails Write (the JSON stays: it is what the plots are drawn from); no
// plotter writes the JSON and the Markdown alone.
func TestWritePlotter(t *testing.T) {
	dir := t.TempDir()
	r := sampleReport()
	boom := errors.New("plotter failed")
	if _, err := r.Write(dir, func(*Report, string) ([]string, error) { return nil, boom }); !errors.Is(err, boom) {
		t.Fatalf("got %v, want the plotter's error", err)
	}
	files, err := r.Write(dir, nil)
	if err != nil || !slices.Equal(files, []string{"robust.json", "robust.md"}) {
		t.Fatalf("without a plotter: %v, %v", files, err)
	}
}

// The charts package draws from testdata copies of these sample reports (it cannot import this
// package's tests); they must stay the same reports.
func TestChartsTestdataIsTheSampleReports(t *testing.T) {
	for name, r := range map[string]*Report{"robust": sampleReport(), "energy": energyReport()} {
		var buf bytes.Buffer
		if err := r.WriteJSON(&buf); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join("charts", "testdata", name+".json")
		if os.Getenv("WATTAGG_UPDATE_TESTDATA") != "" {
			if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, buf.Bytes()) {
			t.Errorf("%s differs from the %s sample report (WATTAGG_UPDATE_TESTDATA=1 go test ./bench rewrites it)", path, name)
		}
	}
}

func TestSkipped(t *testing.T) {
	if got := energyReport().Skipped(); !slices.Equal(got, []string{"always-gpu: no GPU device here"}) {
		t.Fatalf("got %q", got)
	}
	if got := sampleReport().Skipped(); got != nil {
		t.Fatalf("got %q", got)
	}
}
