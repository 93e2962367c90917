package aggregate

import (
	"context"
	"errors"
	"fmt"

	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// commit publishes a round's result and its stages' state as one unit, in the order the papers'
// guarantees need: every state file first, in stage order (a privacy ledger records the ε a
// noised model spends before the model exists anywhere), then the result. Files are published
// by a journaled group commit, so a crash leaves either all old files or all new ones. Only
// then do the stages move on (their in-memory state); a failure before leaves them as they were.
func (r *Round) commit(ctx context.Context, out *sink) error {
	var committers []Committer
	var outcomes []*Outcome
	var files []*safetensors.Writer
	for _, st := range r.stages {
		var o *Outcome
		o, files = stageOutcome(st, out, files)
		c, ok := st.(Committer)
		if !ok {
			continue
		}
		fs, err := c.Prepare(ctx, o)
		committers = append(committers, c)
		if err != nil {
			return abortCommit(err, committers, files, out)
		}
		files = append(files, fs...)
		outcomes = append(outcomes, o)
	}
	if out.path != "" {
		w, err := r.resultWriter(out)
		if err != nil {
			return abortCommit(err, committers, files, out)
		}
		files = append(files, w)
	}
	if err := ctx.Err(); err != nil {
		return abortCommit(err, committers, files, out)
	}
	if err := publish(r.journal(), files); err != nil {
		return abortCommit(err, committers, files, out)
	}
	out.release() // the stages own their in-memory sides now (their Close frees them)
	return commitStages(committers, outcomes)
}

// stageOutcome is what stage st is told of the round's result: the result (in memory) or its
// path, and the stage's side sets held in memory; its side state files are added to files.
func stageOutcome(st Stage, out *sink, files []*safetensors.Writer) (*Outcome, []*safetensors.Writer) {
	o := &Outcome{Path: out.path, Info: out.info, Round: map[string]any{}}
	if out.path == "" {
		o.Result = out.set
	}
	for _, sd := range out.sides {
		if Stage(sd.stage) != st {
			continue
		}
		if sd.w != nil {
			files = append(files, sd.w)
		} else {
			o.Sides = sd.sets
		}
	}
	return o, files
}

// resultWriter is the unpublished file of a result written to a path: the sink's, or, for a
// quantised result computed in memory, one written now.
func (r *Round) resultWriter(out *sink) (*safetensors.Writer, error) {
	if out.w != nil {
		return out.w, nil
	}
	return writeUnpublished(out.path, out.set, out.plan, r.metadata())
}

// abortCommit gives up a commit that failed with err before publishing: the committers prepared
// so far abort, and so does every file written for it but the sink's result file (the sink
// aborts that itself). It returns err.
func abortCommit(err error, committers []Committer, files []*safetensors.Writer, out *sink) error {
	for _, c := range committers {
		c.Abort()
	}
	for _, w := range files {
		if w != out.w {
			_ = w.Abort()
		}
	}
	return err
}

// commitStages moves the committed stages on to their new state, every one even if some fail.
func commitStages(committers []Committer, outcomes []*Outcome) error {
	var errs []error
	for i, c := range committers {
		errs = append(errs, c.Commit(outcomes[i]))
	}
	return errors.Join(errs...)
}

// publish makes the files appear, all or none: one file by its atomic rename, several by a
// group commit whose journal makes the renames one unit across a crash.
func publish(journal string, files []*safetensors.Writer) error {
	switch {
	case len(files) == 0:
		return nil
	case len(files) == 1:
		return files[0].Commit()
	case journal == "":
		return fmt.Errorf("aggregate: %d files to publish and no state file to journal them beside", len(files))
	}
	return safetensors.CommitGroup(journal, files...)
}

// Stateful is a Rule that keeps state files between rounds. The engine finishes an interrupted
// commit of them (RecoverState) before the rule begins a round, and journals a commit beside
// the first of them.
type Stateful interface {
	Rule
	StatePaths() []string
}

// JournalPath is the journal of a group commit of a round whose first state file is state.
func JournalPath(state string) string { return state + ".journal" }

// RecoverState finishes a commit of the state file at path (and of the files committed with it)
// that a crash interrupted: afterwards every file of that commit is either all old or all new.
func RecoverState(path string) error {
	if path == "" {
		return nil
	}
	return safetensors.RecoverGroup(JournalPath(path))
}

// statePaths lists the state files of the round's rules, in chain order.
func (r *Round) statePaths() []string {
	var paths []string
	rules := []Rule{r.rule}
	if c, ok := r.rule.(chain); ok {
		rules = c
	}
	for _, rl := range rules {
		if s, ok := rl.(Stateful); ok {
			for _, p := range s.StatePaths() {
				if p != "" {
					paths = append(paths, p)
				}
			}
		}
	}
	return paths
}

// journal is where the round's group commit journals: beside its first state file.
func (r *Round) journal() string {
	if ps := r.statePaths(); len(ps) > 0 {
		return JournalPath(ps[0])
	}
	return ""
}

// writeUnpublished writes a result held in memory (a quantised one) to a temporary file that
// publish renames into place.
func writeUnpublished(path string, s *tensor.Set, p *plan, meta map[string]string) (*safetensors.Writer, error) {
	var layout tensor.Layout
	var ts []*tensor.Tensor
	for _, t := range p.order {
		tt := s.At(t)
		layout = append(layout, tt.Field())
		ts = append(ts, tt)
	}
	w, err := safetensors.Create(path, layout, meta)
	if err != nil {
		return nil, err
	}
	for i, t := range ts {
		if t.DType == tensor.I8 {
			if err := w.SetScale(i, t.Scale); err != nil {
				_ = w.Abort()
				return nil, err
			}
		}
		if _, err := w.WriteAt(t.Bytes(), w.TensorOffset(i)); err != nil {
			_ = w.Abort()
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	return w, nil
}
