package server

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wattagg/wattagg/internal/durable"
)

// AckRecord is one acknowledged update, as a round's acknowledgement log (acks.log in the
// round's directory) keeps it: enough to find its spool file, check it byte for byte and add it
// again with the same weight.
type AckRecord struct {
	Seq    int       `json:"seq"` // position in the round, from 0
	Client string    `json:"client"`
	File   string    `json:"file"`             // spool file, relative to the spool directory
	Size   int64     `json:"size"`             // of the spool file
	Bytes  int64     `json:"bytes"`            // tensor data bytes
	Digest string    `json:"digest,omitempty"` // the update's digest (spoolWriter.digest), hex
	SHA256 string    `json:"sha256,omitempty"` // the digest of logs written before XXH3 (digestV1)
	Weight float64   `json:"weight"`
	From   string    `json:"weight_from"` // given, num_examples or uniform
	At     time.Time `json:"at"`
}

// digest is the record's digest and whether it is in the legacy scheme (digestV1): a log
// written before XXH3 keeps its records' sha256, and they are checked as they were made.
func (r AckRecord) digest() (hex string, legacy bool) {
	if r.Digest == "" && r.SHA256 != "" {
		return r.SHA256, true
	}
	return r.Digest, false
}

// The acknowledgement log is a sequence of frames, one per group commit:
//
//	magic uint32 LE | length uint32 LE | CRC-32C of the payload uint32 LE | payload
//
// the payload being the JSON array of the group's records. One write and one fdatasync per
// group: concurrent uploads that finish together share them. As in etcd's wal and
// Prometheus's wlog, a crash can tear only the frame being written, at the end of the file; on
// open, a torn tail (a short frame, a zero-filled tail, a CRC mismatch of the last frame) is
// cut, while a bad frame followed by more data is corruption and an error.
const (
	ackMagic      = 0x474c4157 // "WALG"
	ackFrameHead  = 12
	maxAckPayload = 64 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ackLog appends frames to a round's acknowledgement log.
type ackLog struct {
	f    *os.File
	path string
	size int64 // bytes of valid frames
}

// openAckLog opens (creating) the log at path, reads its records, and cuts a torn tail. A
// created log's directory entry is made durable before it is used.
func openAckLog(path string) (*ackLog, []AckRecord, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, err
	}
	b, err := io.ReadAll(f)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if len(b) == 0 {
		if err := durable.SyncDir(filepath.Dir(path)); err != nil {
			f.Close()
			return nil, nil, err
		}
	}
	recs, good, err := parseAckLog(b)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	if good < len(b) {
		if err := f.Truncate(int64(good)); err != nil {
			f.Close()
			return nil, nil, err
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return nil, nil, err
		}
	}
	return &ackLog{f: f, path: path, size: int64(good)}, recs, nil
}

// ReadAckLog reads the records of an acknowledgement log, in acknowledgement order (a torn tail
// is left out; corruption before it is an ErrCorrupt error). An audit, or a check that
// recomputes a round from its spool, reads the log this way.
func ReadAckLog(path string) ([]AckRecord, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	recs, _, err := parseAckLog(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return recs, nil
}

// parseAckLog decodes the frames of a log and returns their records and the length of the
// valid prefix: what follows it is a torn tail. Corruption before the tail is an ErrCorrupt
// error.
func parseAckLog(b []byte) ([]AckRecord, int, error) {
	var recs []AckRecord
	off := 0
	for off < len(b) {
		rest := b[off:]
		// A frame that is short, misplaced or fails its checksum is a torn tail when no valid
		// frame follows it (the crash cut the last append), and corruption when one does.
		torn := func(what string) ([]AckRecord, int, error) {
			if frameAfter(rest[min(4, len(rest)):]) {
				return recs, off, fmt.Errorf("%w: acknowledgement log: %s at byte %d, with valid frames after it", ErrCorrupt, what, off)
			}
			return recs, off, nil
		}
		if len(rest) < ackFrameHead {
			return torn("a frame header cut short")
		}
		magic := binary.LittleEndian.Uint32(rest)
		n := int(binary.LittleEndian.Uint32(rest[4:]))
		sum := binary.LittleEndian.Uint32(rest[8:])
		switch {
		case magic != ackMagic:
			return torn("no frame")
		case n < 2: // every frame holds at least "[]"; zeros after a torn header read as 0
			return torn("an empty frame")
		case n > maxAckPayload || ackFrameHead+n > len(rest):
			return torn(fmt.Sprintf("a frame of %d bytes past the end", n))
		}
		payload := rest[ackFrameHead : ackFrameHead+n]
		if crc32.Checksum(payload, castagnoli) != sum {
			return torn("a checksum mismatch")
		}
		var group []AckRecord
		if err := json.Unmarshal(payload, &group); err != nil {
			return recs, off, fmt.Errorf("%w: acknowledgement log: frame at byte %d: %v", ErrCorrupt, off, err)
		}
		for _, r := range group {
			if r.Seq != len(recs) {
				return recs, off, fmt.Errorf("%w: acknowledgement log: record %d of the frame at byte %d has sequence %d, want %d",
					ErrCorrupt, len(recs), off, r.Seq, len(recs))
			}
			recs = append(recs, r)
		}
		off += ackFrameHead + n
	}
	return recs, off, nil
}

// frameAfter reports whether b holds a whole valid frame anywhere: a frame that claims to run
// past the end of the log is then a corrupt length, not a torn tail.
func frameAfter(b []byte) bool {
	var magic [4]byte
	binary.LittleEndian.PutUint32(magic[:], ackMagic)
	for i := 0; ; i++ {
		j := bytes.Index(b[i:], magic[:])
		if j < 0 {
			return false
		}
		i += j
		rest := b[i:]
		if len(rest) >= ackFrameHead {
			n := int(binary.LittleEndian.Uint32(rest[4:]))
			if n <= maxAckPayload && ackFrameHead+n <= len(rest) &&
				crc32.Checksum(rest[ackFrameHead:ackFrameHead+n], castagnoli) == binary.LittleEndian.Uint32(rest[8:]) {
				return true
			}
		}
	}
}

// encodeAckFrame makes the frame of a group of records.
func encodeAckFrame(recs []AckRecord) ([]byte, error) {
	payload, err := json.Marshal(recs)
	if err != nil {
		return nil, err
	}
	if len(payload) > maxAckPayload {
		return nil, fmt.Errorf("acknowledgement group of %d bytes", len(payload))
	}
	frame := make([]byte, ackFrameHead+len(payload))
	binary.LittleEndian.PutUint32(frame, ackMagic)
	binary.LittleEndian.PutUint32(frame[4:], uint32(len(payload)))
	binary.LittleEndian.PutUint32(frame[8:], crc32.Checksum(payload, castagnoli))
	copy(frame[ackFrameHead:], payload)
	return frame, nil
}

// append writes one group of records as one frame and makes it durable. On failure the log is
// cut back to what it held, as far as the disk allows; the caller treats the group as not
// acknowledged.
func (l *ackLog) append(recs []AckRecord) error {
	if l.f == nil {
		return errors.New("acknowledgement log closed")
	}
	frame, err := encodeAckFrame(recs)
	if err != nil {
		return err
	}
	if _, err := l.f.WriteAt(frame, l.size); err != nil {
		_ = l.f.Truncate(l.size)
		return err
	}
	if err := unix.Fdatasync(int(l.f.Fd())); err != nil {
		_ = l.f.Truncate(l.size)
		return err
	}
	l.size += int64(len(frame))
	return nil
}

func (l *ackLog) close() error {
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}
