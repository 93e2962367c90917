package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wattagg/wattagg/interop/gorgonia/digits"
	"github.com/wattagg/wattagg/interop/gorgonia/mlp"
	"github.com/wattagg/wattagg/interop/gorgonia/serving"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

func writeModel(t *testing.T, path string, seed uint64) {
	t.Helper()
	s, err := mlp.Init(8, seed)
	if err != nil {
		t.Fatal(err)
	}
	if err := safetensors.WriteFile(path, s); err != nil {
		t.Fatal(err)
	}
}

// syncBuffer is a log sink safe for the server's goroutines and the test.
type syncBuffer struct {
	ch chan []byte
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.ch <- bytes.Clone(p)
	return len(p), nil
}

// TestServe runs the command on a loopback port: a prediction, a reload on SIGHUP and one by
// polling, then a graceful stop when the context ends.
func TestServe(t *testing.T) {
	path := filepath.Join(t.TempDir(), "global.safetensors")
	writeModel(t, path, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan string, 1)
	logs := &syncBuffer{ch: make(chan []byte, 1000)}
	errc := make(chan error, 1)
	go func() {
		errc <- run(ctx, []string{"-model", path, "-addr", "127.0.0.1:0", "-poll", "10ms"}, logs, ready)
	}()
	var addr string
	select {
	case addr = <-ready:
	case err := <-errc:
		t.Fatalf("run returned before listening: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("not listening after 10 s")
	}
	url := "http://" + addr

	d, err := digits.Load()
	if err != nil {
		t.Fatal(err)
	}
	row := make([]float64, digits.Features)
	for j, v := range d.Row(0) {
		row[j] = float64(v * digits.MaxPixel)
	}
	body, err := json.Marshal(serving.PredictRequest{Inputs: [][]float64{row}})
	if err != nil {
		t.Fatal(err)
	}
	predict := func() serving.PredictResponse {
		t.Helper()
		resp, err := http.Post(url+"/predict", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var r serving.PredictResponse
		if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &r) != nil || len(r.Logits) != 1 || len(r.Logits[0]) != 10 {
			t.Fatalf("predict: %d %s", resp.StatusCode, b)
		}
		return r
	}
	waitGen := func(gen uint64) serving.PredictResponse {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if r := predict(); r.Model.Generation == gen {
				return r
			}
		}
		t.Fatalf("generation %d not served after 10 s", gen)
		return serving.PredictResponse{}
	}
	first := predict()
	if first.Model.Generation != 1 {
		t.Fatalf("first model: %+v", first.Model)
	}

	// Reload by polling: a new file renamed over the old one.
	writeModel(t, path, 2)
	second := waitGen(2)
	if slices := second.Logits[0]; slicesEqual(slices, first.Logits[0]) {
		t.Fatal("model 2 answers like model 1")
	}
	// Reload on SIGHUP (the file is unchanged, so the poller does not reload it too).
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	third := waitGen(3)
	if !slicesEqual(third.Logits[0], second.Logits[0]) {
		t.Fatal("SIGHUP reload of the same file changed the answer")
	}

	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("run after cancel: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return 15 s after cancel")
	}
	var all strings.Builder
	for len(logs.ch) > 0 {
		all.Write(<-logs.ch)
	}
	for _, want := range []string{"model loaded", "listening", `msg="model reloaded" path=`, "model reloaded on SIGHUP", "msg=stopped"} {
		if !strings.Contains(all.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, all.String())
		}
	}
}

func slicesEqual(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestUsage(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.safetensors")
	for name, args := range map[string][]string{
		"no model":     {},
		"extra arg":    {"-model", missing, "x"},
		"bad flag":     {"-nope"},
		"negative":     {"-model", missing, "-poll", "-1s"},
		"max rows 0":   {"-model", missing, "-max-rows", "0"},
		"not duration": {"-model", missing, "-poll", "soon"},
	} {
		if err := run(context.Background(), args, io.Discard, nil); !errors.Is(err, errUsage) {
			t.Errorf("%s: %v, want a usage error", name, err)
		}
	}
	if err := run(context.Background(), []string{"-model", missing}, io.Discard, nil); err == nil || errors.Is(err, errUsage) {
		t.Errorf("missing model file: %v, want a load error", err)
	}
}
