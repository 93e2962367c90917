// Package safetensors reads and writes .safetensors files: an 8-byte little-endian header
// length N, N bytes of UTF-8 JSON mapping tensor names to {"dtype", "shape", "data_offsets"}
// (plus an optional "__metadata__" object of strings), then the data section.
//
// Reading maps the file (Open) or views a byte slice (Parse) without copying: the tensors of
// the returned Set view the file until Set.Close, in the header's order. The header is
// validated strictly, the way the reference implementation does and then some: tensors must
// cover the data section contiguously, with no gaps, overlaps or trailing bytes; duplicate
// names are an error instead of one silently replacing the other; every failure is a one-line
// error naming the file and the tensor, quoting at most about 200 characters of an offending
// value, and wrapping ErrFormat, ErrHeaderSize, ErrOffset or tensor.ErrDType. Unknown keys
// inside a tensor entry are ignored, as the reference (serde) ignores them. Only regular files
// are opened: a named pipe, directory or device is refused with ErrNotRegular before anything
// could block on it.
//
// Parsing costs a small multiple of the header's bytes, whatever the header holds: shapes are
// bounded by Limits.Rank while they are read, and nothing but the result is built. Limits
// (header size, name length, rank) are shared by reader and writer: the writer refuses to
// write what the reader would refuse (ErrLimit). OpenAll parses a layout once for all the
// files that share it.
//
// Writing is atomic: a Writer fills a temporary file beside the destination, at offsets and
// from several goroutines if wanted, and Commit renames it over the destination only once
// every byte is written and synced, so readers never see a partial file. The header is padded
// with spaces (which the format allows) so that the data section starts on a 4096-byte
// boundary, so that a mapped data section is page aligned and whole pages can be written
// with O_DIRECT. Every tensor starts at a multiple of its element size: WriteFile lays the data
// out widest element first (the header keeps the Set's order), and Create, which keeps the
// caller's order so that callers can place data themselves, refuses an order that would
// misalign a tensor. A writer holds an flock on its temporary file, so that the temporary
// files of killed writers can be told stale and removed (CleanStale, which Create runs).
// CommitGroup publishes several files as one unit across crashes, with a journal that
// RecoverGroup rolls forward.
//
// The readers (Open, OpenAll, Parse, ReadHeader, ReadHeaderAt) and the writers (Create,
// WriteFile) take one functional Option type; each option's doc says which functions take it,
// and an option given to another is refused with ErrOption, naming it. WithLimits and
// WithMaxHeaderSize apply to both sides, so that a file is read under the limits it was
// written with.
//
// The I8 dtype of wattagg is symmetric quantisation with one positive float32 scale per
// tensor. The format has no field for it, so the scale is stored in __metadata__ under
// ScaleKeyPrefix followed by the tensor name; readers set tensor.Tensor.Scale from it and leave
// those keys out of Set.Metadata. An I8 tensor without its scale is an error (wattagg's writer
// always writes one). Other safetensors readers see a plain I8 tensor.
//
// We evaluated github.com/nlpodyssey/safetensors and wrote our own because it decodes the
// header into a Go map, so duplicate tensor names are silently merged; its errors have no
// sentinels and name neither the file nor the tensor; it sorts tensors by dtype on write,
// which breaks wattagg's flat coordinate order; and it has neither mmap nor atomic writes.
package safetensors
