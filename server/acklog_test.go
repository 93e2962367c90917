package server

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

func testRecords(from, n int) []AckRecord {
	var recs []AckRecord
	for i := range n {
		recs = append(recs, AckRecord{Seq: from + i, Client: "c" + string(rune('a'+from+i)), File: "f", Size: int64(100 + i),
			Bytes: 64, Digest: "00ff", Weight: float64(i + 1), From: "given", At: time.Unix(1700000000, int64(i)).UTC()})
	}
	return recs
}

// TestAckLogRoundTrip appends groups and reads them back in order.
func TestAckLogRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "acks.log")
	l, recs, err := openAckLog(path)
	if err != nil || len(recs) != 0 {
		t.Fatal(err, recs)
	}
	want := append(testRecords(0, 3), testRecords(3, 1)...)
	if err := l.append(want[:3]); err != nil {
		t.Fatal(err)
	}
	if err := l.append(want[3:]); err != nil {
		t.Fatal(err)
	}
	l.close()
	l, got, err := openAckLog(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("read %+v\nwant %+v", got, want)
	}
}

// TestAckLogTornTail cuts the log at every offset, as a crash in the middle of an append
// would leave it, and zero-fills tails as a crash after an allocation would: each reopens with
// exactly the complete frames before the cut, and the file is cut back to them.
func TestAckLogTornTail(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "acks.log")
	l, _, err := openAckLog(path)
	if err != nil {
		t.Fatal(err)
	}
	groups := [][]AckRecord{testRecords(0, 2), testRecords(2, 3), testRecords(5, 1)}
	var ends []int
	for _, g := range groups {
		if err := l.append(g); err != nil {
			t.Fatal(err)
		}
		ends = append(ends, int(l.size))
	}
	l.close()
	full, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	complete := func(cut int) []AckRecord {
		var out []AckRecord
		for i, e := range ends {
			if e <= cut {
				out = append(out, groups[i]...)
			}
		}
		return out
	}
	for cut := 0; cut <= len(full); cut++ {
		for _, zeros := range []int{0, 7, 4096} {
			b := append(append([]byte(nil), full[:cut]...), make([]byte, zeros)...)
			want := complete(cut)
			got, good, err := parseAckLog(b)
			wantGood := 0
			for _, e := range ends {
				if e <= cut {
					wantGood = e
				}
			}
			if err != nil || good != wantGood || len(got) != len(want) || (len(want) > 0 && !reflect.DeepEqual(got, want)) {
				t.Fatalf("cut at %d + %d zeros: %d records, valid prefix %d (want %d records, %d): %v",
					cut, zeros, len(got), good, len(want), wantGood, err)
			}
			if cut%29 != 0 && cut != len(full) {
				continue
			}
			// Reopening repairs the file, and appending after the repair continues the log.
			p := filepath.Join(dir, "cut.log")
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
			l, _, err := openAckLog(p)
			if err != nil {
				t.Fatalf("cut at %d + %d zeros: %v", cut, zeros, err)
			}
			if err := l.append(testRecords(len(want), 1)); err != nil {
				t.Fatal(err)
			}
			l.close()
			after, err := ReadAckLog(p)
			if err != nil || len(after) != len(want)+1 {
				t.Fatalf("cut at %d + %d zeros: after an append: %d records, %v", cut, zeros, len(after), err)
			}
		}
	}
}

// TestAckLogCorruption: a flipped byte in a frame followed by others is corruption, not a torn
// tail, and is refused rather than cut.
func TestAckLogCorruption(t *testing.T) {
	path := filepath.Join(t.TempDir(), "acks.log")
	l, _, err := openAckLog(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.append(testRecords(0, 2)); err != nil {
		t.Fatal(err)
	}
	first := int(l.size)
	if err := l.append(testRecords(2, 2)); err != nil {
		t.Fatal(err)
	}
	l.close()
	b, _ := os.ReadFile(path)
	for _, off := range []int{0, 5, 9, ackFrameHead + 3, first - 1} {
		c := append([]byte(nil), b...)
		c[off] ^= 0x40
		if err := os.WriteFile(path, c, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, _, err := openAckLog(path); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("byte %d flipped: %v, want ErrCorrupt", off, err)
		}
		got, _ := os.ReadFile(path)
		if len(got) != len(c) {
			t.Fatalf("byte %d flipped: the corrupt log was cut to %d bytes", off, len(got))
		}
	}
}
