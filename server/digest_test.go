package server

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/wattagg/wattagg/server/api"
	"github.com/wattagg/wattagg/tensor/arrowio"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// TestDigestSchemes pins both digests of one small update: the acknowledgement logs on users'
// disks hold them, and a server that computed another value for the same update would refuse
// its own spool files at replay. v1 hashed the tensors with SHA-256, v2 with XXH3-128; the two
// must differ (the scheme is the digest's first input), and neither may depend on how the
// update was cut into chunks.
func TestDigestSchemes(t *testing.T) {
	set := f32Set(t, [][]int{{3, 5}, {4}}, func(k, i int) float32 { return float32(k*100+i) * 0.25 })
	set.Metadata = map[string]string{"num_examples": "12"}
	h := arrowio.HeaderOf(set)
	digest := func(legacy bool, piece int) string {
		d := newDigesterOf(h, "test", true, legacy)
		for i, tt := range set.Tensors() {
			b := tt.Bytes()
			for off := 0; off < len(b); off += piece {
				end := min(off+piece, len(b))
				if err := d.write(arrowio.Chunk{Tensor: i, Offset: int64(off / 4), Data: b[off:end]}); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := d.complete(); err != nil {
			t.Fatal(err)
		}
		return hexDigest(d.digest())
	}
	const (
		v1 = "21e780454942ecbe29f825b9452f65f3640967a64ccffd90688d4b332ea6db8c" // computed by the v1 code (commit 1227cee)
		v2 = "b27120eb9fc3027aee494c669f87dff0faa2a44c454f69fb55430664328c26a6"
	)
	for _, piece := range []int{4, 8, 64} {
		if got := digest(true, piece); got != v1 {
			t.Errorf("v1 digest (pieces of %d bytes) %s, want %s", piece, got, v1)
		}
		if got := digest(false, piece); got != v2 {
			t.Errorf("v2 digest (pieces of %d bytes) %s, want %s", piece, got, v2)
		}
	}
}

// TestRestartReadsLegacyDigests restarts a server on a round whose acknowledgement log was
// written before XXH3 (its records carry the v1 digest as sha256): the spool files are checked
// against those digests and replayed, a retry of an acknowledged update is still idempotent
// (and gets its v1 digest back), and a different update from the same client is still refused.
func TestRestartReadsLegacyDigests(t *testing.T) {
	leakCheck(t)
	cfg, tokens, admin := testConfig(t, 3)
	ts := startServer(t, cfg, tokens, admin)
	body := func(k int) []byte {
		return encode(t, f32Set(t, [][]int{{9}}, func(_, i int) float32 { return float32(k + i) }), nil)
	}
	ts.push(t, "c0", 1, body(0), nil)
	ts.push(t, "c1", 1, body(1), nil)
	ts.stop()

	dir := filepath.Join(cfg.DataDir, "rounds", "000001")
	recs, err := ReadAckLog(filepath.Join(dir, ackFile))
	if err != nil || len(recs) != 2 {
		t.Fatalf("log: %d records, %v", len(recs), err)
	}
	for i := range recs {
		set, err := safetensors.Open(filepath.Join(dir, spoolDir, recs[i].File))
		if err != nil {
			t.Fatal(err)
		}
		recs[i].SHA256, recs[i].Digest = hexDigest(verifySpool(set, true)), ""
		set.Close()
	}
	frame, err := encodeAckFrame(recs)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ackFile), frame, 0o600); err != nil {
		t.Fatal(err)
	}

	ts2 := startServer(t, cfg, tokens, admin)
	st, err := ts2.Status(1)
	if err != nil || st.State != api.StateOpen || len(st.Updates) != 2 {
		t.Fatalf("resumed round: %+v %v", st, err)
	}
	if again := ts2.push(t, "c0", 1, body(0), nil); !again.Retry || again.Digest != recs[0].SHA256 || again.Seq != 0 {
		t.Fatalf("retry of a legacy acknowledgement: %+v, want digest %s", again, recs[0].SHA256)
	}
	b5 := body(5)
	code, b := ts2.put(t, tokens["c1"], 1, bytes.NewReader(b5), int64(len(b5)), nil)
	wantRefused(t, code, b, 409, "conflict", "already sent a different update")
	ts2.push(t, "c2", 1, body(2), nil)
	ts2.waitState(t, 1, api.StateClosed)
	for i, v := range f32s(t, ts2.readModel(t, 1).At(0)) {
		if want := float32(1 + i); v != want { // mean of i, 1+i, 2+i
			t.Fatalf("element %d: %v, want %v", i, v, want)
		}
	}
}
