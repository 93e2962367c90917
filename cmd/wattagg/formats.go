package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/wattagg/wattagg/internal/durable"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/arrowio"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// The file formats of updates and models: .safetensors, Arrow IPC files (.arrow, mapped back
// without copying) and Arrow IPC streams (.arrows, what a client pushes; read whole). See
// tensor/arrowio for the Arrow schema.

// updateExts are the extensions of update files, in the order a directory is searched.
var updateExts = []string{".safetensors", ".arrow", ".arrows"}

// isArrow reports whether path names an Arrow IPC file or stream.
func isArrow(path string) bool {
	ext := strings.ToLower(filepath.Ext(path))
	return ext == ".arrow" || ext == ".arrows"
}

// openUpdate opens an update file by its extension: mapped (.safetensors, .arrow) or read
// (.arrows). Close releases it. opts apply to .safetensors (the read mode).
func openUpdate(path string, opts ...safetensors.Option) (*tensor.Set, error) {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".arrow":
		return arrowio.ReadFile(path)
	case ".arrows":
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		return arrowio.ReadStream(f, arrowio.WithSource(path))
	}
	return safetensors.Open(path, opts...)
}

// openUpdates opens every path, closing those opened on error. opts apply to .safetensors.
func openUpdates(paths []string, opts ...safetensors.Option) ([]*tensor.Set, error) {
	sets := make([]*tensor.Set, 0, len(paths))
	var arrowPaths []string
	for _, p := range paths {
		if isArrow(p) {
			arrowPaths = append(arrowPaths, p)
		}
	}
	if len(arrowPaths) == 0 {
		return safetensors.OpenAll(paths, opts...) // layouts shared between identical headers
	}
	for _, p := range paths {
		s, err := openUpdate(p, opts...)
		if err != nil {
			_ = tensor.CloseAll(sets)
			return nil, err
		}
		sets = append(sets, s)
	}
	return sets, nil
}

// headerOf returns an update's layout and metadata without reading its data where the format
// allows (a .safetensors header; an Arrow file is mapped, not read).
func headerOf(path string) (tensor.Layout, map[string]string, error) {
	if !isArrow(path) {
		h, err := safetensors.ReadHeader(path)
		if err != nil {
			return nil, nil, err
		}
		return h.Fields, h.Metadata, nil
	}
	s, err := openUpdate(path)
	if err != nil {
		return nil, nil, err
	}
	defer s.Close()
	return s.Layout(), s.Metadata, nil
}

// writeModelFile writes s to path in the format its extension names, atomically.
func writeModelFile(path string, s *tensor.Set) error {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".arrow":
		return arrowio.WriteFile(path, s)
	case ".arrows":
		return writeArrowStream(path, s)
	}
	return safetensors.WriteFile(path, s)
}

// writeArrowStream writes s as an Arrow IPC stream file, atomically (temp, sync, rename).
func writeArrowStream(path string, s *tensor.Set) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	err = arrowio.WriteSet(f, s)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return durable.SyncDir(filepath.Dir(path))
}

func newConvertCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "convert IN OUT",
		Short: "Convert an update or model between .safetensors and Arrow IPC (.arrow file, .arrows stream)",
		Long: `Convert reads IN and writes the same tensors, dtypes, shapes, i8 scales and metadata to OUT,
atomically, in the format OUT's extension names:

  .safetensors   the safetensors format (what aggregate writes)
  .arrow         an Arrow IPC file, mapped back without copying
  .arrows        an Arrow IPC stream, what a client pushes (pyarrow.ipc.new_stream)

The Arrow schema (one row per chunk: tensor, offset, data; the layout in the schema's metadata)
is documented in the README and in package tensor/arrowio.`,
		Example: `  wattagg convert client.safetensors client.arrows
  wattagg convert global.arrow global.safetensors`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usagef("convert takes an input and an output file (see wattagg convert --help)")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			in, out := args[0], args[1]
			if err := checkDistinct(out, []string{in}); err != nil {
				return err
			}
			s, err := openUpdate(in)
			if err != nil {
				return err
			}
			defer s.Close()
			if err := writeModelFile(out, s); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s: %d tensors, %s params\n", out, s.Len(), human(float64(s.NumParams()), ""))
			return nil
		},
	}
}
