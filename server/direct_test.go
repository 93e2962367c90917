package server

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/arrowio"
)

// TestDirectFileWritesWhatArrived: regions of every size (inside one block, across blocks,
// longer than the staging buffer) written in interleaved pieces of random length, half of them
// received in place (lend: into the staging buffer, then written without a copy), make the
// file a plain write of the same bytes would, cut to its size.
func TestDirectFileWritesWhatArrived(t *testing.T) {
	for seed := range uint64(6) {
		r := rand.New(rand.NewPCG(seed, 77))
		var sizes []int
		total := 0
		for range 5 + r.IntN(30) {
			var n int
			switch r.IntN(4) {
			case 0:
				n = 1 + r.IntN(100)
			case 1:
				n = 1 + r.IntN(3*directBlock)
			case 2:
				n = directBlock * (1 + r.IntN(4))
			default:
				n = 1 + r.IntN(3*directStage)
			}
			sizes = append(sizes, n)
			total += n
		}
		want := make([]byte, total)
		for i := range want {
			want[i] = byte(r.Uint32())
		}
		path := filepath.Join(t.TempDir(), "f")
		d, err := openDirect(path)
		if err != nil {
			t.Skipf("no O_DIRECT here: %v", err)
		}
		// Each region's pieces in order, the regions' pieces interleaved.
		type cursor struct{ at, end int }
		var cs []cursor
		at := 0
		for _, n := range sizes {
			cs = append(cs, cursor{at, at + n})
			at += n
		}
		for len(cs) > 0 {
			k := r.IntN(len(cs))
			c := &cs[k]
			n := min(1+r.IntN(directStage/2), c.end-c.at)
			piece := want[c.at : c.at+n]
			if r.IntN(2) == 0 { // received in place, as the HTTP body is (lend)
				b, err := d.lend(int64(c.at), n)
				if err != nil {
					t.Fatal(err)
				}
				n = copy(b, piece)
				piece = b[:n]
			}
			if err := d.writeAt(piece, int64(c.at)); err != nil {
				t.Fatal(err)
			}
			if c.at += n; c.at == c.end {
				cs = append(cs[:k], cs[k+1:]...)
			}
		}
		if err := d.flushAll(int64(total)); err != nil {
			t.Fatal(err)
		}
		if err := d.close(); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			i := 0
			for i < min(len(got), len(want)) && got[i] == want[i] {
				i++
			}
			t.Fatalf("seed %d: %d bytes, want %d; first difference at byte %d", seed, len(got), len(want), i)
		}
	}
}

// TestDirectKeepsBytesUntilNextCall: a chunk received into the staging buffer stays intact
// after the write that sends its buffer to the disk, even once the disk has it and other
// uploads take every buffer the free list holds, until the upload's next call (the server adds
// the chunk to the sum after the spool has it); then the buffer goes back to the list.
func TestDirectKeepsBytesUntilNextCall(t *testing.T) {
	dir := t.TempDir()
	d, err := openDirect(filepath.Join(dir, "a"))
	if err != nil {
		t.Skipf("no O_DIRECT here: %v", err)
	}
	defer d.close()
	b, err := d.lend(0, directStage)
	if err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] = byte(i % 251)
	}
	if err := d.writeAt(b, 0); err != nil { // fills the buffer: written behind
		t.Fatal(err)
	}
	if d.busy == nil {
		t.Fatal("a full staging buffer was not written behind")
	}
	for len(d.busy) == 0 { // the disk has it
		runtime.Gosched()
	}
	var taken [][]byte // what other uploads would take now, overwritten
	for range cap(stages.c) + 1 {
		x := stages.get()
		for i := range x {
			x[i] = 0xee
		}
		taken = append(taken, x)
	}
	for i := range b {
		if b[i] != byte(i%251) {
			t.Fatalf("byte %d of the chunk is %#x once its buffer was written: given away before the next call", i, b[i])
		}
	}
	for _, x := range taken {
		stages.put(x)
	}
	for len(stages.c) > 0 { // empty the list, so that the reaped buffer is the one there
		<-stages.c
	}
	if _, err := d.lend(directStage, 10); err != nil {
		t.Fatal(err)
	}
	if d.busy != nil || len(stages.c) != 1 || &(<-stages.c)[0] != &b[0] {
		t.Fatal("the next call did not give the written buffer back")
	}
}

// TestDirectSpoolMatchesBuffered: the spool file of an update written with O_DIRECT has the
// bytes of the one written through the page cache, and reads back what arrived before finish.
func TestDirectSpoolMatchesBuffered(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	layout := tensor.Layout{
		{Name: "a", DType: tensor.F32, Shape: []int{1000, 333}},
		{Name: "b", DType: tensor.BF16, Shape: []int{7}},
		{Name: "c", DType: tensor.F32, Shape: []int{5}},
		{Name: "d", DType: tensor.F16, Shape: []int{70000}},
	}
	h := arrowio.Header{Layout: layout, Metadata: map[string]string{"num_examples": "12"}}
	data := make([][]byte, len(layout))
	for j, f := range layout {
		data[j] = make([]byte, f.Len()*f.DType.Size())
		for i := range data[j] {
			data[j][i] = byte(r.IntN(60)) // small values: finite in every float dtype
		}
	}
	dir := t.TempDir()
	write := func(name string, direct bool, check func(*spoolWriter)) []byte {
		sp, err := createSpool(filepath.Join(dir, name), h, "c1", true, direct)
		if err != nil {
			t.Fatal(err)
		}
		if direct && sp.direct == nil {
			t.Skip("no O_DIRECT here")
		}
		next := make([]int, len(layout))
		for {
			var open []int
			for j, f := range layout {
				if next[j] < f.Len() {
					open = append(open, j)
				}
			}
			if len(open) == 0 {
				break
			}
			j := open[r.IntN(len(open))]
			es := layout[j].DType.Size()
			n := min(1+r.IntN(200000), layout[j].Len()-next[j])
			if err := sp.write(arrowio.Chunk{Tensor: j, Offset: int64(next[j]), Data: data[j][next[j]*es : (next[j]+n)*es]}); err != nil {
				t.Fatal(err)
			}
			next[j] += n
			if check != nil && next[0] > layout[0].Len()/2 {
				check(sp)
				check = nil
			}
		}
		if _, err := sp.finish(); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	buffered := write("buffered", false, nil)
	direct := write("direct", true, func(sp *spoolWriter) {
		got := make([]byte, 4*1000)
		if err := sp.readBack(0, 5000, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data[0][4*5000:4*6000]) {
			t.Fatal("readBack before finish: not the bytes written")
		}
	})
	if !bytes.Equal(buffered, direct) {
		i := 0
		for i < min(len(direct), len(buffered)) && direct[i] == buffered[i] {
			i++
		}
		t.Fatalf("the O_DIRECT spool differs from the buffered one (%d and %d bytes) from byte %d", len(direct), len(buffered), i)
	}
}

// TestDirectFallsBackWithoutODirect: where the file system refuses O_DIRECT (tmpfs), the spool
// is written through the page cache.
func TestDirectFallsBackWithoutODirect(t *testing.T) {
	dir, err := os.MkdirTemp("/dev/shm", "wattagg-direct-")
	if err != nil {
		t.Skipf("no /dev/shm: %v", err)
	}
	defer os.RemoveAll(dir)
	if d, err := openDirect(filepath.Join(dir, "probe")); err == nil {
		d.close()
		t.Skip("this /dev/shm takes O_DIRECT")
	}
	h := arrowio.Header{Layout: tensor.Layout{{Name: "a", DType: tensor.F32, Shape: []int{3}}}}
	sp, err := createSpool(filepath.Join(dir, "s"), h, "c1", true, true)
	if err != nil {
		t.Fatal(err)
	}
	if sp.direct != nil {
		t.Fatal("a direct spool on a file system without O_DIRECT")
	}
	if err := sp.write(arrowio.Chunk{Tensor: 0, Data: make([]byte, 12)}); err != nil {
		t.Fatal(err)
	}
	if _, err := sp.finish(); err != nil {
		t.Fatal(err)
	}
}
