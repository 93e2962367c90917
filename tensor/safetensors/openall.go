package safetensors

import (
	"errors"
	"runtime"
	"sync"

	"github.com/wattagg/wattagg/tensor"
)

// OpenAll opens files with Open on all cores at once: mapping and page-table population are
// real work when many client updates are read together. Files with the same tensors (names,
// dtypes, shapes, offsets) share one parsed layout, so a federation of clients costs one
// layout's names and shapes, not one per client. It takes Open's options but WithSource: each
// set is named by its path. On error it closes what it opened and returns every file's error
// joined.
func OpenAll(paths []string, opts ...Option) ([]*tensor.Set, error) {
	o, err := applyOptions(forOpenAll, "", opts)
	if err != nil {
		return nil, err
	}
	// One parsed layout for identical headers, and one ReadAuto probe for files that agree.
	o.cache, o.vote = newLayoutCache(), newReadVote()
	sets := make([]*tensor.Set, len(paths))
	errs := make([]error, len(paths))
	var wg sync.WaitGroup
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	for i, p := range paths {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			po := *o
			po.source = p
			sets[i], errs[i] = open(p, &po)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		CloseAll(sets)
		return nil, err
	}
	return sets, nil
}

// CloseAll closes every non-nil set, on all cores at once (tensor.CloseAll).
func CloseAll(sets []*tensor.Set) { _ = tensor.CloseAll(sets) }
