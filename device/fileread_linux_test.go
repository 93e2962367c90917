package device

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/wattagg/wattagg/tensor"
)

// fileHeader is the bytes before the first span in a test file: not a multiple of the O_DIRECT
// alignment, so that direct reads start and end inside blocks.
const fileHeader = 4096 + 24

// mappedInputs writes each input's spans one after another into a file of its own, maps the
// files and registers them to be read with pread (and O_DIRECT when direct), and returns spans
// viewing the mappings: the same bytes as inputs, read from files. It skips the test where
// the file system refuses O_DIRECT and direct is asked.
func mappedInputs(t *testing.T, inputs [][]Span, direct bool) ([][]Span, []*os.File) {
	t.Helper()
	dir := t.TempDir()
	out := make([][]Span, len(inputs))
	var files []*os.File
	for i, in := range inputs {
		path := filepath.Join(dir, fmt.Sprintf("in%d", i))
		data := make([]byte, fileHeader)
		for _, sp := range in {
			data = append(data, sp.Data...)
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		mem, err := unix.Mmap(int(f.Fd()), 0, len(data), unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			t.Fatal(err)
		}
		fb := tensor.FileBacking{Name: path, File: f, Size: int64(len(data))}
		if direct {
			d, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECT, 0)
			if err != nil {
				t.Skipf("O_DIRECT refused here: %v", err)
			}
			t.Cleanup(func() { d.Close() })
			fb.Direct = d
		}
		unregister := tensor.RegisterFileBacking(mem, fb)
		t.Cleanup(func() {
			unregister()
			unix.Munmap(mem)
		})
		off := fileHeader
		for _, sp := range in {
			out[i] = append(out[i], Span{DType: sp.DType, Data: mem[off : off+len(sp.Data) : off+len(sp.Data)], Scale: sp.Scale})
			off += len(sp.Data)
		}
		files = append(files, f)
	}
	return out, files
}

// residentKiB is the resident memory of the mapping that holds b, from /proc/self/smaps: what
// walking it has faulted in.
func residentKiB(t *testing.T, b []byte) int {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Skipf("no smaps: %v", err)
	}
	defer f.Close()
	a := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	sc := bufio.NewScanner(f)
	in := false
	for sc.Scan() {
		line := sc.Text()
		var lo, hi uintptr
		if n, _ := fmt.Sscanf(line, "%x-%x", &lo, &hi); n == 2 && strings.Contains(line, " ") {
			in = a >= lo && a < hi
			continue
		}
		if in && strings.HasPrefix(line, "Rss:") {
			var kb int
			fmt.Sscanf(strings.TrimPrefix(line, "Rss:"), "%d", &kb)
			return kb
		}
	}
	t.Fatal("mapping not found in smaps")
	return 0
}

// notWalked fails the test if any page of the mappings behind inputs (from mappedInputs) was
// faulted in: a device that reads them from their files never touches the mappings.
func notWalked(t *testing.T, inputs [][]Span) {
	t.Helper()
	for i := range inputs {
		if kb := residentKiB(t, inputs[i][0].Data); kb != 0 {
			t.Fatalf("input %d: %d KiB of its mapping were faulted in: the mapping was walked", i, kb)
		}
	}
}

var readModes = []struct {
	name   string
	direct bool
}{{"pread", false}, {"direct", true}}

// The weighted sum of inputs read from their files (pread, O_DIRECT) is bit for bit the sum of
// the same bytes in memory, for f32 and f64 accumulators and mixed dtypes, with odd lengths
// and blocks, and the mappings are never walked.
func TestFileInputsSumSameBits(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, mode := range readModes {
		for _, acc := range []tensor.DType{tensor.F32, tensor.F64, tensor.I64} {
			t.Run(mode.name+"/acc="+acc.String(), func(t *testing.T) {
				fields := []AccField{
					{Name: "a", Len: 70001, Acc: acc, Out: tensor.F32},
					{Name: "b", Len: 3, Acc: acc, Out: tensor.BF16},
					{Name: "c", Len: 40000, Acc: acc, Out: acc},
				}
				if acc == tensor.I64 { // an exact sum
					fields[2].Out = tensor.F32
					for k := range fields {
						fields[k].Grid, fields[k].Bound = -40, 1<<16
					}
				}
				dts := []tensor.DType{tensor.F32, tensor.F32, tensor.BF16, tensor.F16, tensor.F32, tensor.I8, tensor.F32, tensor.F32, tensor.F32}
				if acc == tensor.F64 {
					dts = append(dts, tensor.F64)
				}
				var inputs [][]Span
				var weights []float64
				for _, dt := range dts {
					var in []Span
					for _, f := range fields {
						in = append(in, randSpan(r, dt, f.Len, 1))
					}
					inputs = append(inputs, in)
					weights = append(weights, r.Float64()+0.1)
				}
				files, _ := mappedInputs(t, inputs, mode.direct)
				chunks, err := CutChunks(fields, packed(fields), 24<<10)
				if err != nil {
					t.Fatal(err)
				}
				c := mustCPU(t, 3, 4096)
				run := func(in [][]Span) [][]byte {
					out := newTestOutput(fields, chunks)
					job := &SumJob{Fields: fields, Inputs: in, Weights: weights, Scale: 0.37, Chunks: chunks, Output: out}
					if _, err := c.WeightedSum(context.Background(), job); err != nil {
						t.Fatal(err)
					}
					return out.dst
				}
				want, got := run(inputs), run(files)
				for k := range fields {
					if !bytes.Equal(want[k], got[k]) {
						t.Fatalf("field %s: the sum read from files differs from the sum in memory", fields[k].Name)
					}
				}
				notWalked(t, files)
				if c.ScratchInUse() != 0 {
					t.Fatalf("%d scratch buffers not given back", c.ScratchInUse())
				}
			})
		}
	}
}

// Order statistics, Gram matrices and distances of inputs read from their files are the bits of
// the same inputs in memory (the windows read ahead cover blocks, chunks and fields).
func TestFileInputsRobustSameBits(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	for _, mode := range readModes {
		t.Run(mode.name, func(t *testing.T) {
			fields, inputs, chunks := robustJobSized(r, 9, []tensor.DType{tensor.F32, tensor.BF16, tensor.F32, tensor.I8}, tensor.F32, 150001, 40<<10)
			files, _ := mappedInputs(t, inputs, mode.direct)
			c := mustCPU(t, 2, 4096)
			ctx := context.Background()
			for _, op := range []struct {
				op SelectOp
				k  int
			}{{Median, 0}, {TrimmedMean, 2}, {ClosestMean, 5}} {
				run := func(in [][]Span) ([][]byte, []float64, []float64) {
					out := newTestOutput(fields, chunks)
					job := &SelectJob{Fields: fields, Inputs: in, Op: op.op, K: op.k, Chunks: chunks, Output: out,
						SqDist: make([]float64, len(in)), SqNorm: make([]float64, len(in))}
					if _, err := c.Select(ctx, job); err != nil {
						t.Fatal(err)
					}
					return out.dst, job.SqDist, job.SqNorm
				}
				w, wd, wn := run(inputs)
				g, gd, gn := run(files)
				for k := range w {
					if !bytes.Equal(w[k], g[k]) {
						t.Fatalf("%s: field %d differs when read from files", op.op, k)
					}
				}
				if !equalBits(wd, gd) || !equalBits(wn, gn) {
					t.Fatalf("%s: distances or norms differ when read from files", op.op)
				}
			}
			wg, _, err := c.Gram(ctx, fields, inputs)
			if err != nil {
				t.Fatal(err)
			}
			gg, _, err := c.Gram(ctx, fields, files)
			if err != nil {
				t.Fatal(err)
			}
			for a := range wg.Centred {
				if !equalBits(wg.Centred[a], gg.Centred[a]) {
					t.Fatalf("Gram row %d differs when read from files", a)
				}
			}
			if !equalBits(wg.SqNorms, gg.SqNorms) {
				t.Fatal("Gram norms differ when read from files")
			}
			z := make([]Span, len(fields))
			for k, f := range fields {
				z[k] = randSpan(r, tensor.F32, f.Len, 1)
			}
			wd, wn, _, err := c.SqDistances(ctx, fields, inputs, z)
			if err != nil {
				t.Fatal(err)
			}
			gd, gn, _, err := c.SqDistances(ctx, fields, files, z)
			if err != nil {
				t.Fatal(err)
			}
			if !equalBits(wd, gd) || !equalBits(wn, gn) {
				t.Fatal("SqDistances differ when read from files")
			}
			notWalked(t, files)
		})
	}
}

func equalBits(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if *(*uint64)(unsafe.Pointer(&a[i])) != *(*uint64)(unsafe.Pointer(&b[i])) {
			return false
		}
	}
	return true
}

// A file truncated after it was mapped is a *FaultError at an address inside the input that
// lost its bytes, as a fault on the mapping would be (the engine names the update from it);
// nothing crashes.
func TestFileInputsTruncated(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	for _, mode := range readModes {
		t.Run(mode.name, func(t *testing.T) {
			fields, inputs, chunks := robustJobSized(r, 4, []tensor.DType{tensor.F32}, tensor.F32, 100000, 64<<10)
			files, osFiles := mappedInputs(t, inputs, mode.direct)
			if err := os.Truncate(osFiles[2].Name(), fileHeader+4*60000); err != nil {
				t.Fatal(err)
			}
			victim := files[2]
			inVictim := func(err error) bool {
				var fe *FaultError
				if !errors.As(err, &fe) || !errors.Is(err, ErrFault) {
					return false
				}
				for _, sp := range victim {
					lo := uintptr(unsafe.Pointer(unsafe.SliceData(sp.Data)))
					if fe.Addr >= lo && fe.Addr < lo+uintptr(len(sp.Data)) {
						return fe.Addr-lo >= 4*60000 // the first lost byte or later
					}
				}
				return false
			}
			c := mustCPU(t, 2, 4096)
			ctx := context.Background()
			sum := &SumJob{Fields: fields, Inputs: files, Weights: []float64{1, 1, 1, 1}, Scale: 1, Chunks: chunks, Output: newTestOutput(fields, chunks)}
			if _, err := c.WeightedSum(ctx, sum); !inVictim(err) {
				t.Fatalf("sum: %v: want a FaultError in the truncated input", err)
			}
			sel := &SelectJob{Fields: fields, Inputs: files, Op: Median, Chunks: chunks, Output: newTestOutput(fields, chunks)}
			if _, err := c.Select(ctx, sel); !inVictim(err) {
				t.Fatalf("median: %v: want a FaultError in the truncated input", err)
			}
			if _, _, err := c.Gram(ctx, fields, files); !inVictim(err) {
				t.Fatalf("gram: %v: want a FaultError in the truncated input", err)
			}
			if c.ScratchInUse() != 0 {
				t.Fatalf("%d scratch buffers not given back", c.ScratchInUse())
			}
		})
	}
}

// A window serves every block inside it from one read, and a block past it reads again; what
// comes back is always the span's bytes, whatever the alignment of direct reads.
func TestBlockReaderWindows(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	sp := randSpan(r, tensor.F32, 50000, 1)
	for _, mode := range readModes {
		t.Run(mode.name, func(t *testing.T) {
			files, _ := mappedInputs(t, [][]Span{{sp}}, mode.direct)
			fs := lookupFiles(files).of(0, 0)
			if fs == nil {
				t.Fatal("the mapped span was not found registered")
			}
			if mode.direct != (fs.direct >= 0) {
				t.Fatalf("direct descriptor %d for mode %s", fs.direct, mode.name)
			}
			var rd blockReader
			check := func(lo, hi, window int) []byte {
				t.Helper()
				b, err := rd.bytes(0, fs, files[0][0], lo, hi, window)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(b, sp.Data[lo:hi]) {
					t.Fatalf("[%d,%d) window %d: wrong bytes", lo, hi, window)
				}
				return b
			}
			a := check(100, 300, 64<<10)
			b := check(4000, 60000, 64<<10) // inside the window read for the first: same buffer
			if uintptr(unsafe.Pointer(&b[0]))-uintptr(unsafe.Pointer(&a[0])) != 4000-100 {
				t.Fatal("a block inside the window was read again")
			}
			check(64<<10+50, 64<<10+51, 64<<10)         // past the window: read again
			check(len(sp.Data)-7, len(sp.Data), 64<<10) // the span's last bytes
			check(0, len(sp.Data), 0)                   // a block larger than the window
			rd.release()
			if rd.held[0].fs != nil {
				t.Fatal("release kept a window")
			}
		})
	}
	if fi := lookupFiles([][]Span{{sp}}); fi != nil {
		t.Fatal("a span in Go memory was found registered")
	}
}

// A running sum's groups (AddGroup, as `wattagg aggregate --stream` and the server add updates)
// of inputs read from their files are bit for bit the groups of the same inputs in memory,
// checked or not; the mappings are never walked; and a checked group names a NaN in an input
// read from its file.
func TestFileInputsAccumulatorSameBits(t *testing.T) {
	ctx := context.Background()
	fields := groupFields
	chunks := must(CutChunks(fields, packed(fields), 8192))(t)
	r := rand.New(rand.NewPCG(15, 16))
	var inputs [][]Span
	var ws []float64
	for i := range 7 {
		inputs = append(inputs, groupUpdate(r, i))
		ws = append(ws, 0.5+r.Float64())
	}
	for _, mode := range readModes {
		t.Run(mode.name, func(t *testing.T) {
			files, _ := mappedInputs(t, inputs, mode.direct)
			c := mustCPU(t, 3, 4096)
			sum := func(xs [][]Span, check bool) [][]byte {
				acc := must(c.NewAccumulator(fields))(t)
				defer acc.Close()
				for lo := 0; lo < len(xs); lo += 3 {
					hi := min(lo+3, len(xs))
					if err := acc.(GroupAccumulator).AddGroup(ctx, xs[lo:hi], ws[lo:hi], check); err != nil {
						t.Fatal(err)
					}
				}
				out := newTestOutput(fields, chunks)
				must(acc.Emit(ctx, 1, chunks, out))(t)
				return out.dst
			}
			want := sum(inputs, false)
			for _, check := range []bool{false, true} {
				got := sum(files, check)
				for k := range fields {
					if !bytes.Equal(want[k], got[k]) {
						t.Fatalf("check %v: field %s: the sum read from files differs from the sum in memory", check, fields[k].Name)
					}
				}
			}
			notWalked(t, files)
			if c.ScratchInUse() != 0 {
				t.Fatalf("%d scratch buffers not given back", c.ScratchInUse())
			}
		})
	}
	// The exact running sum (the server's default) adds an update read from its file to the
	// bits of the same update in memory.
	exactFields := []AccField{{Name: "a", Len: 300001, Acc: tensor.I64, Out: tensor.F32, Grid: -40, Bound: 1 << 16}}
	exactIn := [][]Span{{inputs[0][0]}, {inputs[1][0]}}
	exactFiles, _ := mappedInputs(t, exactIn, false)
	exactChunks := must(CutChunks(exactFields, packed(exactFields), 8192))(t)
	exactSum := func(xs [][]Span) []byte {
		c := mustCPU(t, 3, 4096)
		acc := must(c.NewAccumulator(exactFields))(t)
		defer acc.Close()
		for i, x := range xs {
			if err := acc.Add(ctx, x, ws[i]); err != nil {
				t.Fatal(err)
			}
		}
		out := newTestOutput(exactFields, exactChunks)
		must(acc.Emit(ctx, 1, exactChunks, out))(t)
		return out.dst[0]
	}
	if !bytes.Equal(exactSum(exactIn), exactSum(exactFiles)) {
		t.Fatal("exact sum: the sum read from files differs from the sum in memory")
	}
	notWalked(t, exactFiles)
	bad := slices.Clone(inputs[1])
	bad[0] = Span{DType: tensor.F32, Data: slices.Clone(bad[0].Data)}
	putU32(bad[0].Data[4*123456:], 0x7fc00000) // NaN in a
	files, _ := mappedInputs(t, [][]Span{inputs[0], bad}, false)
	acc := must(mustCPU(t, 3, 4096).NewAccumulator(fields))(t)
	defer acc.Close()
	err := acc.(GroupAccumulator).AddGroup(ctx, files, []float64{1, 1}, true)
	var ie *InputError
	var nf *tensor.NonFiniteError
	if !errors.As(err, &ie) || ie.Input != 1 || !errors.As(err, &nf) || nf.Tensor != "a" || nf.Index != 123456 {
		t.Fatalf("err = %v, want input 1's NaN in a at 123456", err)
	}
}

// The scans of an update (CheckFinite, CheckRange) and the norms and distances (SqNorms) of
// inputs read from their files give what they give for the same inputs in memory, and never
// walk the mappings; a NaN is named alike either way.
func TestFileInputsScansSameResults(t *testing.T) {
	ctx := context.Background()
	fields := []AccField{
		{Name: "a", Len: 300001, Acc: tensor.F32, Out: tensor.F32},
		{Name: "b", Len: 1000, Acc: tensor.F32, Out: tensor.F32},
	}
	r := rand.New(rand.NewPCG(17, 18))
	var inputs [][]Span
	for _, dt := range []tensor.DType{tensor.F32, tensor.BF16, tensor.F16, tensor.I8} {
		inputs = append(inputs, []Span{randSpan(r, dt, 300001, 1), randSpan(r, tensor.F32, 1000, 1)})
	}
	ref := []Span{randSpan(r, tensor.F32, 300001, 1), randSpan(r, tensor.F32, 1000, 1)}
	bad := []Span{{DType: tensor.F32, Data: slices.Clone(inputs[0][0].Data)}, inputs[0][1]}
	putU32(bad[0].Data[4*200003:], 0xff800000) // -Inf in a
	files, _ := mappedInputs(t, append(slices.Clone(inputs), bad), false)
	c := mustCPU(t, 3, 4096)
	for i := range inputs {
		if err := c.CheckFinite(ctx, fields, files[i]); err != nil {
			t.Fatalf("input %d: %v", i, err)
		}
	}
	exact := []AccField{{Name: "a", Len: 300001, Acc: tensor.I64, Out: tensor.F32, Grid: -40, Bound: 1 << 16}, {Name: "b", Len: 1000, Acc: tensor.I64, Out: tensor.F32, Grid: -40, Bound: 1 << 16}}
	if err := c.CheckRange(ctx, exact, files[0]); err != nil {
		t.Fatalf("CheckRange: %v", err)
	}
	for _, rf := range [][]Span{nil, ref} {
		want, _, err := c.SqNorms(ctx, fields, inputs, rf)
		if err != nil {
			t.Fatal(err)
		}
		got, _, err := c.SqNorms(ctx, fields, files[:len(inputs)], rf)
		if err != nil {
			t.Fatal(err)
		}
		if !equalBits(want, got) {
			t.Fatalf("reference %v: norms %v from files, %v in memory", rf != nil, got, want)
		}
	}
	notWalked(t, files)
	want := c.CheckFinite(ctx, fields, bad)
	got := c.CheckFinite(ctx, fields, files[len(inputs)])
	var nf *tensor.NonFiniteError
	if want == nil || got == nil || want.Error() != got.Error() || !errors.As(got, &nf) || nf.Index != 200003 {
		t.Fatalf("a -Inf read from its file: %v; in memory: %v", got, want)
	}
	if err := c.CheckRange(ctx, exact, files[len(inputs)]); err == nil {
		t.Fatal("CheckRange passed a -Inf read from its file")
	}
}

// A secure sum's modular sum (ModSum) of inputs read from their files is the sum of the same
// inputs in memory, and never walks the mappings.
func TestFileInputsModSum(t *testing.T) {
	fields := []AccField{{Name: "a", Len: 100003, Out: tensor.U32}, {Name: "b", Len: 17, Out: tensor.U32}}
	chunks := must(CutChunks(fields, packed(fields), 24<<10))(t)
	r := rand.New(rand.NewPCG(19, 20))
	var inputs [][]Span
	for range 11 {
		var in []Span
		for _, f := range fields {
			b := make([]byte, 4*f.Len)
			for j := 0; j < len(b); j += 4 {
				putU32(b[j:], r.Uint32())
			}
			in = append(in, Span{DType: tensor.U32, Data: b})
		}
		inputs = append(inputs, in)
	}
	files, _ := mappedInputs(t, inputs, false)
	c := mustCPU(t, 3, 4096)
	sum := func(in [][]Span) [][]uint32 {
		out := &u32Output{dst: [][]uint32{make([]uint32, 100003), make([]uint32, 17)}, chunks: chunks, done: make([]bool, len(chunks))}
		if _, err := c.ModSum(context.Background(), fields, in, chunks, out); err != nil {
			t.Fatal(err)
		}
		return out.dst
	}
	want, got := sum(inputs), sum(files)
	for f := range fields {
		if !slices.Equal(want[f], got[f]) {
			t.Fatalf("field %s: the modular sum read from files differs from the sum in memory", fields[f].Name)
		}
	}
	notWalked(t, files)
}
