package bench

import (
	"context"
	"os"
	"testing"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// TestMeasureReadModes times both ways on a few small files, chooses the faster, and leaves
// nothing in its directory.
func TestMeasureReadModes(t *testing.T) {
	dev, err := device.NewCPU()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	m, err := MeasureReadModes(context.Background(), dir, dev, 3, 1<<16, 2)
	if err != nil {
		t.Fatal(err)
	}
	if m.Files != 3 || m.Bytes != 3<<18 || !(m.MapS > 0 && m.MapS < 1e9) || !(m.CopyS > 0 && m.CopyS < 1e9) {
		t.Fatalf("%+v", m)
	}
	want := safetensors.ReadCopy
	if m.MapS < m.CopyS {
		want = safetensors.ReadMap
	}
	if m.Choice != want {
		t.Fatalf("chose %s from map %v s, copy %v s", m.Choice, m.MapS, m.CopyS)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Fatalf("left behind: %v", left)
	}
	if _, err := MeasureReadModes(context.Background(), "/nonexistent/dir", dev, 1, 1024, 1); err == nil {
		t.Fatal("no error for a missing directory")
	}
}
