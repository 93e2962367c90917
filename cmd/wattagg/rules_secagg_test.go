package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/wattagg/wattagg/aggregate/secagg"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// Four clients quantise and mask their updates; client 2 drops out after masking. The command
// sums the three survivors' files, removes the masks from the recovery file's seeds, and writes
// the mean of their (clipped) updates, within the quantisation step.
func TestSecAggCommand(t *testing.T) {
	quickExit(t)
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	r := rand.NewChaCha8([32]byte{9})
	const n = 4
	seed := func() secagg.Seed {
		var s secagg.Seed
		r.Read(s[:])
		return s
	}
	self := make([]secagg.Seed, n)
	pairs := make([]map[int]secagg.Seed, n)
	for i := range n {
		self[i], pairs[i] = seed(), map[int]secagg.Seed{}
	}
	for i := range n {
		for j := i + 1; j < n; j++ {
			s := seed()
			pairs[i][j], pairs[j][i] = s, s
		}
	}
	q := must(secagg.NewQuantizer(12, 0.5))(t)
	values := [][]float32{{0.1, -0.2, 0.3}, {0.4, 0.9, -0.1}, {0, 0, 0}, {-0.3, 0.2, 0.25}}
	var inputs []string
	for i, v := range values {
		x := must(tensor.FromF32("w", []int{3}, v))(t)
		s := must(tensor.NewSet(x))(t)
		u, err := q.QuantizeSet(s, r)
		if err != nil {
			t.Fatal(err)
		}
		c := &secagg.Client{ID: i, Self: &self[i], Pairs: pairs[i]}
		if err := c.Mask(context.Background(), u); err != nil {
			t.Fatal(err)
		}
		if i == 2 {
			continue // dropped
		}
		path := p(fmt.Sprintf("client%d.safetensors", i))
		if err := safetensors.WriteFile(path, u); err != nil {
			t.Fatal(err)
		}
		inputs = append(inputs, path)
	}
	rec := map[string]any{
		"clients": []int{0, 1, 2, 3},
		"self":    map[string]string{},
		"dropped": map[string]map[string]string{"2": {}},
	}
	for _, i := range []int{0, 1, 3} {
		rec["self"].(map[string]string)[strconv.Itoa(i)] = hex.EncodeToString(self[i][:])
		s := pairs[2][i]
		rec["dropped"].(map[string]map[string]string)["2"][strconv.Itoa(i)] = hex.EncodeToString(s[:])
	}
	b, _ := json.Marshal(rec)
	os.WriteFile(p("recovery.json"), b, 0o644)
	out := p("mean.safetensors")
	args := append([]string{"aggregate", "--rule", "secagg", "--secagg-bits", "12", "--secagg-range", "0.5",
		"--secagg-recovery", p("recovery.json"), "--json", "-o", out}, inputs...)
	stdout, stderr, code := wattagg(t, args...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	rep := jsonReport(t, stdout)
	if rep.Rule != "secagg" || rep.Clients != 3 || rep.Details["dropped"] != 1 {
		t.Fatalf("report %+v", rep)
	}
	got := readModel(t, out, "w")
	step := 1.0 / 4095
	for j := range 3 {
		var want float64
		for _, i := range []int{0, 1, 3} {
			want += math.Max(-0.5, math.Min(0.5, float64(values[i][j])))
		}
		want /= 3
		if math.Abs(float64(got[j])-want) > step+1e-7 {
			t.Fatalf("mean[%d] = %v, want %v", j, got[j], want)
		}
	}

	// Errors: a bad flag (2), other decoding parameters than the clients' (1), a bad recovery
	// file (1), a flag of another family (2).
	os.Remove(out)
	os.WriteFile(p("bad.json"), []byte(`{"clients": [0], "self": {"0": "abcd"}}`), 0o644)
	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"--secagg-bits", "0"}, 2, "bit width 0"},
		{[]string{"--secagg-bits", "16"}, 1, "quantised with 12 bits over ±0.5, the rule decodes 16 bits"},
		{[]string{"--secagg-bits", "12", "--secagg-range", "0.5", "--secagg-recovery", p("bad.json")}, 1, "want 64 hex digits"},
		{[]string{"--secagg-bits", "12", "--secagg-range", "0.5", "--global", p("x")}, 2, "--global does not apply to --rule secagg"},
	} {
		args := append(append([]string{"aggregate", "--rule", "secagg", "-o", out}, c.args...), inputs...)
		_, stderr, code := wattagg(t, args...)
		checkFailure(t, stderr, code, c.code, c.msg)
		if _, err := os.Stat(out); !os.IsNotExist(err) {
			t.Fatalf("output written after a failure: %v", err)
		}
	}
}
