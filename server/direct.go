package server

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/wattagg/wattagg/tensor"
)

// directFile writes a file with O_DIRECT: from an aligned staging buffer that is reused, to the
// disk without the page cache. A buffered write copies every byte into fresh page-cache pages,
// and on the VMs this was measured on (2 vCPUs; `wattagg bench serve`) that copy was 86% of the
// ingest's CPU time: first touch of pages the hypervisor has not backed is slow. A spool that
// the round never reads back (the sum takes the pieces as they arrive) has no use for the cache.
//
// Bytes written (or received in a lent slice) stay where they are until the next call on the
// file: the caller may still read them (the server adds a chunk to the sum after the spool has
// it), so a buffer handed to a background write goes back to the free list only at a later call.
//
// Writes may come at any offsets, each byte once. A run of consecutive bytes is gathered in the
// staging buffer; its whole blocks go to the disk when the run breaks or the buffer fills, and a
// block the run covers in part is kept aside (pending) until its other bytes arrive, so that
// every block is written whole, once. The blocks still pending at the end (the file's last one)
// are written by finish, and the file is cut to its size.
type directFile struct {
	f       *os.File
	buf     []byte     // staging: file bytes [start+lo, start+hi) are buf[lo:hi]
	busy    chan error // the background write's outcome, nil when none is in flight
	writing []byte     // the staging buffer of the background write (until reaped)
	start   int64      // block-aligned
	lo, hi  int
	pending map[int64]*partBlock // by the block's file offset
	end     int64                // the furthest byte written to the disk
}

// partBlock is a block of which some bytes have arrived.
type partBlock struct {
	data   []byte // one block, aligned
	filled int
}

// directBlock is the unit of O_DIRECT I/O: offsets, lengths and buffer addresses are multiples
// of it (the logical block size of the disks here is 512; 4096 covers 4Kn disks too).
const directBlock = 4096

// directStage is the staging buffer's size: half a chunk of the default limits.chunk_bytes, so
// that the two an upload holds (one filling, one being written) are one chunk together.
const directStage = DefaultChunkBytes / 2

// stages recycles staging buffers across uploads. An upload holds one buffer while it fills it
// and hands it to a background write when it is full, taking another; the written buffer goes
// back to the list at the upload's next call once the disk has it (reap). So the buffers in use
// are about one per upload plus the writes in flight, not two per upload: at 17 MB/s per stream
// (64 streams at 1.1 GB/s) a buffer fills in 30 ms and is written in a few. A free list rather
// than a sync.Pool: a collection would empty the pool, and every buffer after it would be fresh
// memory again.
var stages = freeList{c: make(chan []byte, 2*DefaultMaxStreams)}

// freeList is a bounded list of staging buffers.
type freeList struct{ c chan []byte }

func (l freeList) get() []byte {
	select {
	case b := <-l.c:
		return b
	default:
		return tensor.PageAligned(directStage)
	}
}

func (l freeList) put(b []byte) {
	select {
	case l.c <- b[:directStage:directStage]:
	default: // more buffers than the list keeps: the collector takes this one
	}
}

// openDirect creates the file at path for O_DIRECT writes. It fails with EINVAL where the file
// system does not take them (tmpfs): the caller writes through the page cache then.
func openDirect(path string) (*directFile, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_DIRECT, 0o600)
	if err != nil {
		return nil, err
	}
	return &directFile{f: f, buf: stages.get(), pending: map[int64]*partBlock{}}, nil
}

// lend returns the staging buffer's room for the bytes at file offset p, at most max of them,
// so that they can be received straight into it (a flush first if p does not continue the run
// being staged). A writeAt of a prefix of that slice at p then takes it without a copy.
func (d *directFile) lend(p int64, max int) ([]byte, error) {
	if err := d.reap(); err != nil {
		return nil, err
	}
	if d.hi > d.lo && p != d.start+int64(d.hi) {
		if err := d.flush(); err != nil {
			return nil, err
		}
	}
	if d.hi == d.lo {
		d.start = p &^ (directBlock - 1)
		d.lo = int(p - d.start)
		d.hi = d.lo
	}
	return d.buf[d.hi:min(len(d.buf), d.hi+max)], nil
}

// writeAt writes data at file offset p.
func (d *directFile) writeAt(data []byte, p int64) error {
	if err := d.reap(); err != nil {
		return err
	}
	if len(data) > 0 && d.hi < len(d.buf) && &data[0] == &d.buf[d.hi] && p == d.start+int64(d.hi) && len(data) <= len(d.buf)-d.hi {
		// Received in place (lend): the bytes are already staged.
		d.hi += len(data)
		if d.hi == len(d.buf) {
			return d.flush()
		}
		return nil
	}
	for len(data) > 0 {
		if d.hi > d.lo && p != d.start+int64(d.hi) {
			if err := d.flush(); err != nil {
				return err
			}
		}
		if d.hi == d.lo {
			d.start = p &^ (directBlock - 1)
			d.lo = int(p - d.start)
			d.hi = d.lo
		}
		n := copy(d.buf[d.hi:], data)
		d.hi += n
		data = data[n:]
		p += int64(n)
		if d.hi == len(d.buf) {
			if err := d.flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

// flush writes the staged run's whole blocks and sets its partial ones aside.
func (d *directFile) flush() error {
	lo, hi := d.lo, d.hi
	d.lo, d.hi = 0, 0
	if lo == hi {
		return nil
	}
	full := lo
	if r := lo % directBlock; r != 0 { // the run starts inside a block
		b := lo - r
		end := min(b+directBlock, hi)
		if err := d.merge(d.start+int64(b), d.buf[lo:end], r); err != nil {
			return err
		}
		full = b + directBlock
	}
	last := hi &^ (directBlock - 1)
	if hi > last && last >= full { // the run ends inside a block it did not start in
		if err := d.merge(d.start+int64(last), d.buf[last:hi], 0); err != nil {
			return err
		}
	}
	if full < last {
		return d.writeBehind(full, last)
	}
	return nil
}

// writeBehind writes buf[a:b] at start+a on a goroutine, and gives the upload another staging
// buffer meanwhile: the next chunk arrives while this one goes to the disk.
func (d *directFile) writeBehind(a, b int) error {
	if err := d.wait(); err != nil {
		return err
	}
	off := d.start + int64(a)
	d.end = max(d.end, off+int64(b-a))
	d.writing, d.buf = d.buf, stages.get()
	d.busy = make(chan error, 1)
	go func(done chan error, b []byte) { done <- d.pwrite(b, off) }(d.busy, d.writing[a:b])
	return nil
}

// wait waits for the background write and gives its buffer back.
func (d *directFile) wait() error {
	if d.busy == nil {
		return nil
	}
	return d.done(<-d.busy)
}

// reap gives the background write's buffer back if the write is over (its error, if any, is
// the call's), without waiting for it. The caller's earlier bytes are then no longer needed.
func (d *directFile) reap() error {
	if d.busy == nil {
		return nil
	}
	select {
	case err := <-d.busy:
		return d.done(err)
	default:
		return nil
	}
}

func (d *directFile) done(err error) error {
	d.busy = nil
	stages.put(d.writing)
	d.writing = nil
	return err
}

// merge puts bytes src at offset at of the block at file offset off, and writes the block once
// all its bytes are there.
func (d *directFile) merge(off int64, src []byte, at int) error {
	pb := d.pending[off]
	if pb == nil {
		pb = &partBlock{data: tensor.PageAligned(directBlock)}
		d.pending[off] = pb
	}
	copy(pb.data[at:], src)
	pb.filled += len(src)
	if pb.filled < directBlock {
		return nil
	}
	delete(d.pending, off)
	d.end = max(d.end, off+directBlock)
	return d.pwrite(pb.data, off)
}

func (d *directFile) pwrite(b []byte, off int64) error {
	for len(b) > 0 {
		n, err := unix.Pwrite(int(d.f.Fd()), b, off)
		if err != nil {
			return fmt.Errorf("writing the spool: %w", err)
		}
		b, off = b[n:], off+int64(n)
	}
	return nil
}

// flushAll writes everything written so far to the disk, the blocks still in part too (their
// missing bytes as zeros; they stay pending, so that bytes arriving later complete them and
// write them again), and cuts the file to size if a last block went past it.
func (d *directFile) flushAll(size int64) error {
	if err := d.flush(); err != nil {
		return err
	}
	if err := d.wait(); err != nil {
		return err
	}
	for off, pb := range d.pending {
		d.end = max(d.end, off+directBlock)
		if err := d.pwrite(pb.data, off); err != nil {
			return err
		}
	}
	if d.end > size {
		if err := d.f.Truncate(size); err != nil {
			return fmt.Errorf("writing the spool: %w", err)
		}
		d.end = size
	}
	return nil
}

// close closes the file and gives the staging buffer back.
func (d *directFile) close() error {
	d.wait()
	if d.buf != nil {
		stages.put(d.buf)
	}
	d.buf = nil
	return d.f.Close()
}
