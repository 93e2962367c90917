package arrowio

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"

	"github.com/apache/arrow-go/v18/arrow/ipc"

	"github.com/wattagg/wattagg/internal/durable"
	"github.com/wattagg/wattagg/tensor"
)

// WriteFile writes s as an Arrow IPC file at path, atomically: into a temporary file beside
// it, synced, renamed over path, and the directory synced, so that readers see the old file or
// the whole new one. Tensors are not cut at the batch size in a file: each is one chunk, laid
// out at a multiple of its element size, so that ReadFile maps it back as a view.
func WriteFile(path string, s *tensor.Set, opts ...Option) (err error) {
	o, err := newOptions(path, opts)
	if err != nil {
		return err
	}
	h := HeaderOf(s)
	if err := h.check(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	dir := filepath.Dir(path)
	f, err := createTemp(dir, filepath.Base(path))
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	bw := bufio.NewWriterSize(f, 1<<20)
	schema := writeSchema(h)
	enc, err := ipc.NewFileWriter(bw, ipc.WithSchema(schema), ipc.WithAllocator(o.mem))
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	wr := newWriter(enc, h, schema, o, true)
	err = wr.writeSet(s)
	if cerr := wr.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = f.Close()
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := durable.SyncDir(dir); err != nil {
		return fmt.Errorf("%s: syncing the directory: %w", path, err)
	}
	return nil
}

// createTemp is os.CreateTemp with mode 0666 instead of 0600, so that the committed file gets
// the permissions os.Create would have given it.
func createTemp(dir, base string) (*os.File, error) {
	for range 100 {
		name := filepath.Join(dir, "."+base+".tmp-"+strconv.FormatUint(rand.Uint64(), 36))
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o666)
		if !errors.Is(err, fs.ErrExist) {
			return f, err
		}
	}
	return nil, fmt.Errorf("no unused temporary file name for %s in %s", base, dir)
}
