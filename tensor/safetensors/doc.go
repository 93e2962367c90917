// Package safetensors reads and writes .safetensors files: an 8-byte little-endian header
// length N, N bytes of UTF-8 JSON mapping tensor names to {"dtype", "shape", "data_offsets"}
// (plus an optional "__metadata__" object of strings), then the data section.
//
// Reading maps the file (Open) or views a byte slice (Parse) without copying: the tensors of
// the returned Set view the file until Set.Close. The header is validated strictly, the way
// the reference implementation does and then some: tensors must cover the data section
// contiguously, with no gaps, overlaps or trailing bytes; duplicate names are an error instead
// of one silently replacing the other; every failure is a one-line error naming the file and
// the tensor and wrapping ErrFormat, ErrHeaderSize, ErrOffset or tensor.ErrDType. Unknown keys
// inside a tensor entry are ignored, as the reference (serde) ignores them.
//
// Writing is atomic: a Writer fills a temporary file beside the destination, at offsets and
// from several goroutines if wanted, and Commit renames it over the destination only once
// every byte is written and synced, so readers never see a partial file. The header is padded
// with spaces (which the format allows) so that the data section starts on a 4096-byte
// boundary, so that a mapped data section is page aligned and whole pages can be written
// with O_DIRECT. Tensors are written in layout order, never reordered: a tensor's offset is
// the sum of the sizes before it, so an F32 tensor after an odd number of BF16 elements is
// not 4-byte aligned, and its typed view reports tensor.ErrUnaligned (put wider dtypes first
// where typed views matter).
//
// The I8 dtype of wattagg is symmetric quantisation with one float32 scale per tensor. The
// format has no field for it, so the scale is stored in __metadata__ under ScaleKeyPrefix
// followed by the tensor name; readers set tensor.Tensor.Scale from it and leave those keys
// out of Set.Metadata. Other safetensors readers see a plain I8 tensor.
//
// We evaluated github.com/nlpodyssey/safetensors and wrote our own because it decodes the
// header into a Go map, so duplicate tensor names are silently merged; its errors have no
// sentinels and name neither the file nor the tensor; it sorts tensors by dtype on write,
// which breaks wattagg's flat coordinate order; and it has neither mmap nor atomic writes.
package safetensors
