package charts

import (
	"errors"
	"image"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/wattagg/wattagg/bench"
)

// testReport reads testdata/NAME.json: the bench package's sample reports (its
// TestChartsTestdataIsTheSampleReports keeps them the same).
func testReport(t *testing.T, name string) *bench.Report {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := bench.ReadReport(f)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// checkPNG decodes path as a PNG of w × h pixels and checks that it is a picture, not a blank:
// many colours, and a share of non-white pixels that text and lines alone reach.
func checkPNG(t *testing.T, path string, w, h int) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if b := img.Bounds(); b != image.Rect(0, 0, w, h) {
		t.Fatalf("%s: %v, want %d x %d", path, b, w, h)
	}
	colours := map[[3]uint32]bool{}
	nonWhite := 0
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			r, g, b, _ := img.At(x, y).RGBA()
			colours[[3]uint32{r >> 8, g >> 8, b >> 8}] = true
			if r>>8 < 240 || g>>8 < 240 || b>>8 < 240 {
				nonWhite++
			}
		}
	}
	if share := float64(nonWhite) / float64(w*h); len(colours) < 16 || share < 0.01 || share > 0.9 {
		t.Fatalf("%s: %d colours, %.3f of the pixels not white: blank or solid", path, len(colours), share)
	}
}

func TestPlots(t *testing.T) {
	dir := t.TempDir()
	r := testReport(t, "robust")
	names, err := Write(r, dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"robust-clients.png", "robust-params.png", "robust-ratio.png"}; !slices.Equal(names, want) {
		t.Fatalf("plots %v, want %v", names, want)
	}
	// Two rules: two panels side by side; the ratio chart has a bar per main row with a floor.
	checkPNG(t, filepath.Join(dir, "robust-clients.png"), 2*panelW, sweepTitleH+panelH)
	checkPNG(t, filepath.Join(dir, "robust-params.png"), 2*panelW, sweepTitleH+panelH)
	checkPNG(t, filepath.Join(dir, "robust-ratio.png"), barChartW, barChartH0+3*barH)

	e := testReport(t, "energy")
	if names, err = Write(e, dir); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names, []string{"energy-joules.png"}) {
		t.Fatalf("energy plots %v", names)
	}
	checkPNG(t, filepath.Join(dir, "energy-joules.png"), energyW, energyH)

	f := bench.NewReport("floor", "the floors", bench.Machine{CPU: "Test CPU", Workers: 2, Kernels: "avx2"})
	f.Add(bench.Result{Name: "read 512 MiB, 1 workers", Value: 20, Unit: "GB/s", IsFloor: true},
		bench.Result{Name: "read 512 MiB, 2 workers", Value: 35, Unit: "GB/s", IsFloor: true})
	if names, err = Write(f, dir); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names, []string{"floor-bandwidth.png"}) {
		t.Fatalf("floor plots %v", names)
	}
	checkPNG(t, filepath.Join(dir, "floor-bandwidth.png"), barChartW, barChartH0+2*barH)
}

// Nine rules take a 3 × 3 grid of panels.
func TestSweepGrid(t *testing.T) {
	for n, want := range map[int][2]int{1: {panelW, sweepTitleH + panelH}, 3: {3 * panelW, sweepTitleH + panelH},
		4: {3 * panelW, sweepTitleH + 2*panelH}, 9: {3 * panelW, sweepTitleH + 3*panelH}} {
		if w, h := sweepSize(n); w != want[0] || h != want[1] {
			t.Errorf("sweepSize(%d) = %d x %d, want %d x %d", n, w, h, want[0], want[1])
		}
	}
	dir := t.TempDir()
	r := bench.NewReport("robust", "nine rules", bench.Machine{CPU: "Test CPU", Workers: 2, Kernels: "avx2"})
	for i := range 9 {
		for _, c := range []int{8, 128} {
			r.Add(bench.Result{Name: "r", Sweep: bench.SweepClients, Rule: string(rune('a' + i)), Clients: c, Params: 1 << 20,
				Value: float64(c) / 8, Unit: "GB/s", Floor: 20, Ratio: float64(c) / 160})
		}
	}
	if _, err := Write(r, dir); err != nil {
		t.Fatal(err)
	}
	checkPNG(t, filepath.Join(dir, "robust-clients.png"), 3*panelW, sweepTitleH+3*panelH)
}

// Rows that cannot be drawn (skipped, non-finite, zero) are left out; a report with nothing
// to draw writes no plot rather than a blank one.
func TestPlotsSkipUndrawable(t *testing.T) {
	dir := t.TempDir()
	r := bench.NewReport("mean", "nothing to draw", bench.Machine{CPU: "Test CPU", Workers: 2, Kernels: "avx2"})
	r.Add(bench.Result{Name: "skipped", Sweep: bench.SweepClients, Rule: "fedavg", Clients: 8, Params: 1 << 20, Unit: "GB/s", Skipped: "no GPU"},
		bench.Result{Name: "nan", Sweep: bench.SweepParams, Rule: "fedavg", Clients: 8, Params: 1 << 20, Value: math.NaN(), Unit: "GB/s", Floor: 1},
		bench.Result{Name: "inf floor", Rule: "fedavg", Value: 1, Unit: "GB/s", Floor: math.Inf(1)},
		bench.Result{Name: "no clients", Sweep: bench.SweepClients, Rule: "fedavg", Params: 1 << 20, Value: 1, Unit: "GB/s", Floor: 2})
	names, err := Write(r, dir)
	if err != nil || len(names) != 0 {
		t.Fatalf("plots %v, err %v", names, err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("files written: %v", entries)
	}
}

// One point of a sweep still draws (a log axis needs a range around it).
func TestPlotOnePoint(t *testing.T) {
	dir := t.TempDir()
	r := bench.NewReport("mean", "one point", bench.Machine{CPU: "Test CPU", Workers: 2, Kernels: "avx2"})
	r.Add(bench.Result{Name: "fedavg", Sweep: bench.SweepParams, Rule: "fedavg", DType: "f32", Clients: 8, Params: 1 << 20, Value: 10, Unit: "GB/s", Floor: 20, Ratio: 0.5})
	if _, err := Write(r, dir); err != nil {
		t.Fatal(err)
	}
	checkPNG(t, filepath.Join(dir, "mean-params.png"), panelW, sweepTitleH+panelH)
}

func TestPlotIntoMissingDir(t *testing.T) {
	_, err := Write(testReport(t, "robust"), filepath.Join(t.TempDir(), "no", "such"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("got %v, want a not-exist error", err)
	}
}
