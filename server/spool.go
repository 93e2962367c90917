package server

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"math"
	"os"
	"slices"
	"strconv"

	"github.com/zeebo/xxh3"
	"golang.org/x/sys/unix"

	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/arrowio"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// spoolWriter writes one update into a .safetensors file of the round's spool as its chunks
// arrive, whatever protocol brought them: each chunk is checked for NaN and Inf, hashed and
// written at its place in the file (pwrite from the receive buffer: nothing of the update is
// held in memory). The file is allocated to its final size when the header arrives, so a full
// disk is found before the body is read; writeback starts as the data arrives
// (sync_file_range), so that the fdatasync that makes the update durable has little left to
// do. The file's data section starts at a multiple of 4096 and lays tensors out widest element
// first, so that every tensor of the mapped spool is aligned.
//
// With no file (newDigester) it only checks and hashes: the digest of a retried update is
// compared with the acknowledged one without writing anything.
type spoolWriter struct {
	f        *os.File
	path     string
	hdr      arrowio.Header
	dataOff  int64
	offs     []int64     // where each tensor's bytes start in the data section
	next     []int64     // the next element offset expected of each tensor
	hash     []hash.Hash // of each tensor's bytes: XXH3-128, or SHA-256 for a legacy digest
	legacy   bool        // the digest of acknowledgement logs written before XXH3 (digestV1)
	size     int64       // of the whole file
	want     int64       // data bytes the layout declares
	got      int64       // data bytes received
	finite   bool        // check values for NaN and Inf
	unsynced int64       // bytes written since writeback was last started
	source   string
	direct   *directFile // O_DIRECT writes (createSpool's direct): f is direct.f
	failed   bool        // a write failed: what the file holds is not what arrived
	back     *os.File    // the file opened again to read what was written (readBack)
}

// writebackEvery is how many bytes are written before writeback of the file is started.
const writebackEvery = 8 << 20

// createSpool creates the spool file at path for an update with header h. checkFinite refuses
// NaN and Inf values as they pass. direct writes it with O_DIRECT (directFile) where the file
// system takes it: for a spool that is not read back while the round runs.
func createSpool(path string, h arrowio.Header, source string, checkFinite, direct bool) (*spoolWriter, error) {
	s := newDigester(h, source, checkFinite)
	head, err := encodeSpoolHeader(h, s.offs)
	if err != nil {
		return nil, err
	}
	s.dataOff = int64(len(head))
	s.size = s.dataOff + s.want
	if direct {
		d, err := openDirect(path)
		switch {
		case err == nil:
			s.direct, s.f = d, d.f
		case err != unix.EINVAL:
			return nil, err
		}
	}
	if s.f == nil {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, err
		}
		s.f = f
	}
	s.path = path
	if s.size > 0 {
		if err := unix.Fallocate(int(s.f.Fd()), 0, 0, s.size); err != nil && err != unix.EOPNOTSUPP {
			s.abort()
			return nil, fmt.Errorf("%s: allocating %d bytes for the spool: %w", source, s.size, err)
		}
	}
	if err := s.writeAt(head, 0); err != nil {
		s.abort()
		return nil, err
	}
	return s, nil
}

// writeAt writes b at file offset off, directly or through the page cache.
func (s *spoolWriter) writeAt(b []byte, off int64) error {
	if s.direct != nil {
		return s.direct.writeAt(b, off)
	}
	_, err := s.f.WriteAt(b, off)
	return err
}

// newDigester checks and hashes an update without writing it.
func newDigester(h arrowio.Header, source string, checkFinite bool) *spoolWriter {
	return newDigesterOf(h, source, checkFinite, false)
}

// newDigesterOf is newDigester with the digest's scheme: legacy is the SHA-256-only digest of
// acknowledgements written by earlier versions (digestV1), kept to check their spool files and
// retries after an upgrade.
func newDigesterOf(h arrowio.Header, source string, checkFinite, legacy bool) *spoolWriter {
	s := &spoolWriter{hdr: h, finite: checkFinite, source: source, legacy: legacy}
	n := len(h.Layout)
	s.offs, s.next, s.hash = make([]int64, n), make([]int64, n), make([]hash.Hash, n)
	order := make([]int, n)
	for i := range order {
		order[i] = i
		if legacy {
			s.hash[i] = sha256.New()
		} else {
			s.hash[i] = xxh128{xxh3.New()}
		}
	}
	// Widest element first, stably: every tensor then starts at a multiple of its element size.
	slices.SortStableFunc(order, func(a, b int) int {
		return cmp.Compare(h.Layout[b].DType.Size(), h.Layout[a].DType.Size())
	})
	var off int64
	for _, i := range order {
		s.offs[i] = off
		off += int64(h.Layout[i].Len()) * int64(h.Layout[i].DType.Size())
	}
	s.want = off
	return s
}

// lend returns where the next bytes of tensor t, from element off, go in the spool's staging
// buffer, at most max bytes and whole elements: a Source that reads them there (lendingSource)
// spares write its copy. It returns nil when the spool has no staging buffer (a file written
// through the page cache, a digester) or no whole element fits.
func (s *spoolWriter) lend(t int, off, max int64) ([]byte, error) {
	if s.direct == nil || t < 0 || t >= len(s.hdr.Layout) {
		return nil, nil
	}
	es := int64(s.hdr.Layout[t].DType.Size())
	b, err := s.direct.lend(s.dataOff+s.offs[t]+off*es, int(min(max, 1<<30)))
	if err != nil {
		s.failed = true
		return nil, err
	}
	return b[:int64(len(b))/es*es], nil
}

// write checks, hashes and writes one chunk.
func (s *spoolWriter) write(c arrowio.Chunk) error {
	if c.Tensor < 0 || c.Tensor >= len(s.hdr.Layout) {
		return fmt.Errorf("%s: %w: chunk of tensor %d of %d", s.source, arrowio.ErrChunk, c.Tensor, len(s.hdr.Layout))
	}
	f := s.hdr.Layout[c.Tensor]
	es := int64(f.DType.Size())
	if c.Offset != s.next[c.Tensor] || int64(len(c.Data))%es != 0 || c.Offset+int64(len(c.Data))/es > int64(f.Len()) {
		return fmt.Errorf("%s: %w: tensor %q: chunk of %d bytes at element %d does not continue it (next element %d of %d)",
			s.source, arrowio.ErrChunk, f.Name, len(c.Data), c.Offset, s.next[c.Tensor], f.Len())
	}
	if s.finite {
		if err := checkFinite(f, c); err != nil {
			return fmt.Errorf("%s: %w", s.source, err)
		}
	}
	s.hash[c.Tensor].Write(c.Data)
	if s.f != nil {
		if err := s.writeAt(c.Data, s.dataOff+s.offs[c.Tensor]+c.Offset*es); err != nil {
			s.failed = true
			return err
		}
		s.unsynced += int64(len(c.Data))
		if s.direct == nil && s.unsynced >= writebackEvery {
			// Start writing back what is dirty without waiting for it; errors surface at fdatasync.
			_ = unix.SyncFileRange(int(s.f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
			s.unsynced = 0
		}
	}
	s.next[c.Tensor] += int64(len(c.Data)) / es
	s.got += int64(len(c.Data))
	return nil
}

// checkFinite finds the first NaN or Inf of a chunk (the fast scan first, the plain loop only
// to name the element).
func checkFinite(f tensor.Field, c arrowio.Chunk) error {
	var any bool
	switch f.DType {
	case tensor.F32:
		any = kernels.AnyNonFiniteF32(c.Data)
	case tensor.F64:
		any = kernels.AnyNonFiniteF64(c.Data)
	case tensor.F16:
		any = kernels.AnyNonFiniteF16(c.Data)
	case tensor.BF16:
		any = kernels.AnyNonFiniteBF16(c.Data)
	default:
		return nil // integers are always finite
	}
	if !any {
		return nil
	}
	i := tensor.FirstNonFinite(f.DType, c.Data)
	if i < 0 {
		return fmt.Errorf("%w in tensor %q", tensor.ErrNonFinite, f.Name)
	}
	return &tensor.NonFiniteError{Tensor: f.Name, Index: int(c.Offset) + i, Value: valueAt(f.DType, c.Data, i)}
}

// valueAt decodes element i of little-endian data of a float dtype.
func valueAt(dt tensor.DType, data []byte, i int) float64 {
	switch dt {
	case tensor.F32:
		return float64(math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:])))
	case tensor.F64:
		return math.Float64frombits(binary.LittleEndian.Uint64(data[8*i:]))
	case tensor.F16:
		return float64(tensor.F16ToF32(binary.LittleEndian.Uint16(data[2*i:])))
	case tensor.BF16:
		return float64(tensor.BF16ToF32(binary.LittleEndian.Uint16(data[2*i:])))
	}
	return math.NaN()
}

// digest is the update's identity: SHA-256 over its layout, scales, metadata and the XXH3-128
// of each tensor's bytes (digestV2). It does not depend on how the update was framed
// (safetensors or Arrow, chunk sizes, tensor order in the data), so a retry of the same update
// has the same digest whichever protocol brings it.
//
// XXH3 is not a cryptographic hash, and the digest does not need one: it only ever compares an
// update with an earlier one of the same authenticated client in the same round (a retry, or a
// conflict), and a spool file with the bytes it was written from (replay). A client that made
// two different updates collide would only have its second taken for a retry of its first,
// which is what refusing it does. It hashes at 23 GB/s per core here against SHA-256's 1.7
// (SHA-NI), and was the largest part of the ingest's CPU time (README, Server).
func (s *spoolWriter) digest() [32]byte {
	h := sha256.New()
	if s.legacy {
		h.Write([]byte(digestV1))
	} else {
		h.Write([]byte(digestV2))
	}
	var b [8]byte
	for i, f := range s.hdr.Layout {
		h.Write([]byte(f.Name))
		h.Write([]byte{0})
		h.Write([]byte(f.DType.SafetensorsName()))
		h.Write([]byte{0})
		for _, d := range f.Shape {
			binary.LittleEndian.PutUint64(b[:], uint64(d))
			h.Write(b[:])
		}
		scale := float32(1)
		if s.hdr.Scales != nil {
			scale = s.hdr.Scales[i]
		}
		binary.LittleEndian.PutUint32(b[:4], math.Float32bits(scale))
		h.Write(b[:4])
		h.Write(s.hash[i].Sum(nil))
	}
	keys := make([]string, 0, len(s.hdr.Metadata))
	for k := range s.hdr.Metadata {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		h.Write([]byte{1})
		h.Write([]byte(k))
		h.Write([]byte{0})
		h.Write([]byte(s.hdr.Metadata[k]))
	}
	var d [32]byte
	h.Sum(d[:0])
	return d
}

// complete checks that every byte the layout declares arrived.
func (s *spoolWriter) complete() error {
	if s.got != s.want {
		return fmt.Errorf("%s: %w: %d of the %d data bytes the header declares arrived", s.source, ErrTruncated, s.got, s.want)
	}
	for i, f := range s.hdr.Layout {
		if s.next[i] != int64(f.Len()) {
			return fmt.Errorf("%s: %w: tensor %q has %d of its %d elements", s.source, ErrTruncated, f.Name, s.next[i], f.Len())
		}
	}
	return nil
}

// finish checks that the update is complete, makes the spool file durable (fdatasync: the
// file was allocated to its size, so its data is all there is to sync) and closes it. The
// directory entry is made durable by the group commit. It returns the update's digest. On an
// error the file stays, for readBack: the caller aborts.
func (s *spoolWriter) finish() ([32]byte, error) {
	if err := s.complete(); err != nil {
		return [32]byte{}, err
	}
	if s.f != nil {
		var err error
		if s.direct != nil {
			err = s.direct.flushAll(s.size)
		}
		if err == nil {
			err = unix.Fdatasync(int(s.f.Fd()))
		}
		if cerr := s.closeFile(); err == nil {
			err = cerr
		}
		if err != nil {
			s.failed = true
			return [32]byte{}, fmt.Errorf("%s: syncing the spool: %w", s.source, err)
		}
	}
	return s.digest(), nil
}

// abort removes the spool file of an update that failed.
func (s *spoolWriter) abort() {
	if s.back != nil {
		s.back.Close()
		s.back = nil
	}
	if s.f != nil {
		s.closeFile()
	}
	if s.path != "" {
		os.Remove(s.path)
		s.path = ""
	}
}

// closeFile closes the file being written.
func (s *spoolWriter) closeFile() error {
	var err error
	if s.direct != nil {
		err = s.direct.close()
		s.direct = nil
	} else {
		err = s.f.Close()
	}
	s.f = nil
	return err
}

// readBack reads elements from off of the update's tensor j, as written, into dst: what an
// arrival that fails takes out of the sum again (aggregate.Arrival.Cancel). What is still
// staged is written first.
func (s *spoolWriter) readBack(j, off int, dst []byte) error {
	if s.failed {
		return fmt.Errorf("%s: %w: the spool could not be written, so what was added cannot be read back", s.source, ErrCorrupt)
	}
	if s.direct != nil {
		if err := s.direct.flushAll(s.size); err != nil {
			s.failed = true
			return err
		}
	}
	if s.back == nil {
		f, err := os.Open(s.path)
		if err != nil {
			return fmt.Errorf("%s: reading the spool back: %w", s.source, err)
		}
		s.back = f
	}
	es := int64(s.hdr.Layout[j].DType.Size())
	if _, err := s.back.ReadAt(dst, s.dataOff+s.offs[j]+int64(off)*es); err != nil {
		return fmt.Errorf("%s: reading the spool back: %w", s.source, err)
	}
	return nil
}

// encodeSpoolHeader makes the length prefix and header JSON of a spool file: tensors listed in
// layout order at the data offsets offs, metadata (with the I8 scales) in sorted key order,
// padded with spaces so that the data section starts at a multiple of 4096.
func encodeSpoolHeader(h arrowio.Header, offs []int64) ([]byte, error) {
	js := []byte{'{'}
	meta := map[string]string{}
	for k, v := range h.Metadata {
		meta[k] = v
	}
	for i, f := range h.Layout {
		if f.DType == tensor.I8 {
			scale := float32(1)
			if h.Scales != nil {
				scale = h.Scales[i]
			}
			meta[safetensors.ScaleKeyPrefix+f.Name] = strconv.FormatFloat(float64(scale), 'g', -1, 32)
		}
	}
	if len(meta) > 0 {
		b, err := json.Marshal(meta) // encoding/json sorts map keys
		if err != nil {
			return nil, err
		}
		js = append(js, `"__metadata__":`...)
		js = append(js, b...)
	}
	for i, f := range h.Layout {
		if len(js) > 1 {
			js = append(js, ',')
		}
		name, err := json.Marshal(f.Name)
		if err != nil {
			return nil, err
		}
		shape := f.Shape
		if shape == nil {
			shape = []int{}
		}
		sh, err := json.Marshal(shape)
		if err != nil {
			return nil, err
		}
		n := int64(f.Len()) * int64(f.DType.Size())
		js = append(js, name...)
		js = fmt.Appendf(js, `:{"dtype":%q,"shape":%s,"data_offsets":[%d,%d]}`, f.DType.SafetensorsName(), sh, offs[i], offs[i]+n)
	}
	js = append(js, '}')
	total := (8 + int64(len(js)) + 4095) / 4096 * 4096
	out := make([]byte, total)
	binary.LittleEndian.PutUint64(out, uint64(total-8))
	copy(out[8:], js)
	for i := 8 + len(js); i < len(out); i++ {
		out[i] = ' '
	}
	return out, nil
}

// The digest schemes, written first into the digest: v1 hashed each tensor's bytes with SHA-256,
// v2 with XXH3-128.
const (
	digestV1 = "wattagg.update.v1\x00"
	digestV2 = "wattagg.update.v2\x00"
)

// xxh128 is XXH3's streaming hasher as a hash.Hash of its 128-bit sum (big-endian).
type xxh128 struct{ *xxh3.Hasher }

func (h xxh128) Sum(b []byte) []byte {
	s := h.Sum128().Bytes()
	return append(b, s[:]...)
}

func (h xxh128) Size() int { return 16 }

// hexDigest spells a digest as the acknowledgement log and the API do.
func hexDigest(d [32]byte) string { return hex.EncodeToString(d[:]) }

// verifySpool recomputes the digest of a mapped spool file (replay after a restart), in the
// scheme of the acknowledgement that wrote it.
func verifySpool(set *tensor.Set, legacy bool) [32]byte {
	h := arrowio.HeaderOf(set)
	d := newDigesterOf(h, set.Source, false, legacy)
	for i, t := range set.Tensors() {
		d.hash[i].Write(t.Bytes())
	}
	return d.digest()
}
