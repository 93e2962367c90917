package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// --read chooses how .safetensors inputs are read; every way writes the same bytes, in a batch
// and with --stream, for a sum and for a robust rule. A bad value is a usage error.
func TestAggregateReadModes(t *testing.T) {
	dir := t.TempDir()
	var ins []string
	for k := range 5 {
		p := filepath.Join(dir, "c"+string(rune('0'+k))+".safetensors")
		writeClient(t, p, float32(k)+0.25, "")
		ins = append(ins, p)
	}
	for _, rule := range []string{"fedavg", "median"} {
		for _, stream := range []bool{false, true} {
			var want []byte
			for _, mode := range []string{"map", "copy", "direct", "auto"} {
				out := filepath.Join(dir, rule+"-"+mode+".safetensors")
				args := []string{"aggregate", "-o", out, "--rule", rule, "--read", mode, "--progress", "never"}
				if stream {
					args = append(args, "--stream")
				}
				if _, stderr, code := wattagg(t, append(args, ins...)...); code != 0 {
					t.Fatalf("%s --read %s (stream %v): exit %d: %s", rule, mode, stream, code, stderr)
				}
				got, err := os.ReadFile(out)
				if err != nil {
					t.Fatal(err)
				}
				if want == nil {
					want = got
				} else if !bytes.Equal(got, want) {
					t.Fatalf("%s --read %s (stream %v): the output differs from --read map's", rule, mode, stream)
				}
			}
		}
	}
	out := filepath.Join(dir, "bad.safetensors")
	_, stderr, code := wattagg(t, "aggregate", "-o", out, "--read", "mmap", ins[0])
	checkFailure(t, stderr, code, 2, "--read", `read mode "mmap": want auto, map, copy or direct`)
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatal("output written")
	}
}
