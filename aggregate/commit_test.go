package aggregate_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/aggregate/dp"
	"github.com/wattagg/wattagg/aggregate/optim"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// A private round whose privacy state cannot be recorded releases no model: ε is recorded
// before the noised model exists anywhere (issue: the model was written, the ledger was not).
func TestPrivacyLedgerBeforeModel(t *testing.T) {
	dir := t.TempDir()
	global := globalModel(t)
	u := pinClients(t, 90, 5, []tensor.DType{tensor.F32}, global, 0.01)
	out := filepath.Join(dir, "next.safetensors")
	for _, inMemory := range []bool{false, true} {
		rule := must(dp.New("dp-fixed", dp.WithClipBound(1), dp.WithNoiseMultiplier(1),
			dp.WithStateFile(filepath.Join(dir, "no such dir", "privacy.safetensors"))))(t)
		var err error
		if inMemory {
			_, _, err = aggregate.Aggregate(context.Background(), rule, u, nil, aggregate.WithGlobal(global))
		} else {
			_, err = aggregate.AggregateFile(context.Background(), rule, out, u, nil, aggregate.WithGlobal(global))
		}
		if err == nil {
			t.Fatalf("in memory %v: a round whose ledger cannot be written succeeded", inMemory)
		}
		if _, serr := os.Stat(out); !os.IsNotExist(serr) {
			t.Fatalf("the noised model was released without its privacy record (%v)", err)
		}
		if st := rule.State(); st != nil {
			t.Fatalf("the failed round moved the rule to round %d", st.Round)
		}
	}
}

// The ledger is written before the model, in memory too, and a later round continues it.
func TestPrivacyLedgerFollowsEveryRound(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "privacy.safetensors")
	global := globalModel(t)
	for round := 1; round <= 3; round++ {
		rule := must(dp.New("dp-fixed", dp.WithClipBound(1), dp.WithNoiseMultiplier(1), dp.WithStateFile(state)))(t)
		u := pinClients(t, uint64(91+round), 5, []tensor.DType{tensor.F32}, global, 0.01)
		next, rep, err := aggregate.Aggregate(context.Background(), rule, u, nil, aggregate.WithGlobal(global))
		if err != nil {
			t.Fatal(err)
		}
		st := must(dp.LoadPrivacyState(state))(t)
		if st.Round != round || st.Accountant.Rounds() != round || rep.Details["rounds"] != float64(round) {
			t.Fatalf("round %d: the ledger holds round %d (%d accounted), the report %v", round, st.Round, st.Accountant.Rounds(), rep.Details["rounds"])
		}
		global = next
	}
}

// A server optimizer's model and state are published together: after a successful round both
// are the new ones, and a round that fails (its state cannot be written) changes neither.
func TestOptimizerModelAndStateCommitTogether(t *testing.T) {
	dir := t.TempDir()
	global := globalModel(t)
	out, state := filepath.Join(dir, "next.safetensors"), filepath.Join(dir, "adam.safetensors")
	rule := must(optim.NewFedAdam(optim.WithStateFile(state)))(t)
	defer rule.Close()
	u := pinClients(t, 95, 5, []tensor.DType{tensor.F32}, global, 0.01)
	if _, err := aggregate.AggregateFile(context.Background(), rule, out, u, nil, aggregate.WithGlobal(global)); err != nil {
		t.Fatal(err)
	}
	model := must(safetensors.Open(out))(t)
	defer model.Close()
	st := must(optim.LoadState(state))(t)
	defer st.Close()
	if model.Metadata[aggregate.RoundKey] != "1" || st.Round != 1 {
		t.Fatalf("model of round %q, state of round %d: want both 1", model.Metadata[aggregate.RoundKey], st.Round)
	}
	if _, err := os.Stat(aggregate.JournalPath(state)); !os.IsNotExist(err) {
		t.Fatal("the commit journal was left behind")
	}
	before := func(p string) []byte {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	m0, s0 := before(out), before(state)
	// Round 2 cannot publish: its journal cannot be written (a directory is in the way).
	if err := os.Mkdir(aggregate.JournalPath(state), 0o755); err != nil {
		t.Fatal(err)
	}
	u2 := pinClients(t, 96, 5, []tensor.DType{tensor.F32}, model, 0.01)
	if _, err := aggregate.AggregateFile(context.Background(), rule, out, u2, nil, aggregate.WithGlobal(model)); err == nil {
		t.Fatal("a round that cannot write its state succeeded")
	}
	if string(before(out)) != string(m0) || string(before(state)) != string(s0) || rule.Round() != 1 {
		t.Fatalf("a failed round changed the model, the state or the rule (round %d)", rule.Round())
	}
}
