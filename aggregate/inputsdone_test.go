package aggregate_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"testing"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// mappedUpdates writes updates to files in a new directory and opens them mapped.
func mappedUpdates(t *testing.T, updates []*tensor.Set) []*tensor.Set {
	dir := t.TempDir()
	paths := make([]string, len(updates))
	for k, u := range updates {
		paths[k] = filepath.Join(dir, fmt.Sprintf("u%02d.safetensors", k))
		if err := safetensors.WriteFile(paths[k], u); err != nil {
			t.Fatal(err)
		}
	}
	sets := must(safetensors.OpenAll(paths, safetensors.WithReadMode(safetensors.ReadMap)))(t)
	t.Cleanup(func() { safetensors.CloseAll(sets) })
	return sets
}

// Every rule tells WithInputsDone that it has read its updates before the result is durable;
// the caller unmaps them concurrently with the final write and sync (as the CLI does), and the
// file has the bits of a run that kept them mapped to the end. Under -race this also shows
// that nothing in the round touches the updates after it said so.
func TestInputsDoneReleasesMappedUpdates(t *testing.T) {
	ctx := context.Background()
	for _, c := range engineCases() {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			updates := c.updates(t)
			kept := filepath.Join(dir, "kept.safetensors")
			rule := c.rule(t)
			defer closeRule(rule)
			if _, err := aggregate.AggregateFile(ctx, rule, kept, updates, nil, c.opts(t)...); err != nil {
				t.Fatal(err)
			}
			sets := mappedUpdates(t, updates)
			rel := tensor.NewRelease(sets)
			called := 0
			done := func() { called++; rel.Start() }
			released := filepath.Join(dir, "released.safetensors")
			rule2 := c.rule(t)
			defer closeRule(rule2)
			_, err := aggregate.AggregateFile(ctx, rule2, released, sets, nil, append(c.opts(t), aggregate.WithInputsDone(done))...)
			if werr := rel.Wait(); werr != nil {
				t.Fatal(werr)
			}
			if err != nil {
				t.Fatal(err)
			}
			if called != 1 {
				t.Fatalf("WithInputsDone's function was called %d times, want once", called)
			}
			if sets[0].At(0).Len() != 0 {
				t.Fatalf("the updates are still open after Release.Wait")
			}
			a := must(safetensors.Open(kept))(t)
			defer a.Close()
			b := must(safetensors.Open(released))(t)
			defer b.Close()
			sameBits(t, c.name, a, b)
		})
	}
}

// A computation that fails does not say that its inputs were read: the caller keeps them (a
// robust rule could still retry without a client), and closes them itself.
func TestInputsDoneNotCalledOnFailure(t *testing.T) {
	updates := pinClients(t, 91, 3, []tensor.DType{tensor.F32}, nil, 1)
	must(updates[1].At(0).F32())(t)[5] = float32(math.NaN())
	called := false
	_, err := aggregate.AggregateFile(context.Background(), aggregate.NewFedAvg(), filepath.Join(t.TempDir(), "out.safetensors"),
		updates, nil, aggregate.WithInputsDone(func() { called = true }))
	var nf *tensor.NonFiniteError
	if !errors.As(err, &nf) {
		t.Fatalf("err %v: want a NonFiniteError", err)
	}
	if called {
		t.Fatal("WithInputsDone's function was called for a failed computation")
	}
	if err := aggregate.CheckOptions(aggregate.WithInputsDone(nil)); !errors.Is(err, aggregate.ErrOption) {
		t.Fatalf("WithInputsDone(nil): %v, want ErrOption", err)
	}
}
