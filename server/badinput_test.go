package server

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wattagg/wattagg/server/api"
)

// rawPut sends an update over a raw TCP connection: the request with Content-Length declared,
// then body; then closes its write side (close) or just waits (a stalled client). It returns
// the server's status and body.
func rawPut(t testing.TB, url, token string, round int, declared int64, body []byte, closeWrite bool) (int, []byte) {
	t.Helper()
	addr := strings.TrimPrefix(url, "http://")
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "PUT /v1/rounds/%d/update HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n", round, addr, token, declared)
	if _, err := conn.Write(body); err != nil {
		t.Fatal(err)
	}
	if closeWrite {
		conn.(*net.TCPConn).CloseWrite()
	}
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// TestBadInputOverTheWire sends every kind of bad update the issue lists and checks that each
// is refused with a clear status naming what is wrong, that the round is unchanged (its
// clients, its spool, and in the end its result, the mean of the good updates only), and that
// nothing leaks.
func TestBadInputOverTheWire(t *testing.T) {
	leakCheck(t)
	cfg, tokens, admin := testConfig(t, 4)
	cfg.Round.MaxClients = 3
	cfg.Limits.IdleTimeout = Duration(300 * time.Millisecond)
	cfg.Limits.MaxUpdateBytes = 1 << 20
	ts := startServer(t, cfg, tokens, admin)
	shapes := [][]int{{4, 8}, {16}}
	good := func(k int) []byte {
		return encode(t, f32Set(t, shapes, func(tn, i int) float32 { return float32(k + tn + i) }), nil)
	}
	g0 := good(0)
	ack0 := ts.push(t, "c0", 1, g0, nil)
	spool := filepath.Join(cfg.DataDir, "rounds", "000001", spoolDir)
	unchanged := func(t *testing.T) {
		t.Helper()
		waitFor(t, func() bool { return ts.bufsOut.Load() == 0 }) // every receive buffer given back
		st, err := ts.Status(1)
		if err != nil || st.Clients != 1 || st.State != api.StateOpen || st.Arriving != 0 {
			t.Fatalf("round changed: %+v %v", st, err)
		}
		es, _ := os.ReadDir(spool)
		if len(es) != 1 {
			t.Fatalf("spool holds %d files, want the one acknowledged", len(es))
		}
	}
	c1 := tokens["c1"]
	cases := []struct {
		name   string
		send   func() (int, []byte)
		status int
		reason string
		msg    string
	}{
		{"missing token", func() (int, []byte) {
			return ts.put(t, "", 1, bytes.NewReader(good(1)), int64(len(good(1))), nil)
		}, 401, "unauthorized", "no bearer token"},
		{"wrong token", func() (int, []byte) {
			return ts.put(t, "not-a-token", 1, bytes.NewReader(good(1)), int64(len(good(1))), nil)
		}, 401, "unauthorized", "not valid"},
		{"admin token", func() (int, []byte) {
			return ts.put(t, admin, 1, bytes.NewReader(good(1)), int64(len(good(1))), nil)
		}, 403, "forbidden", "admin token"},
		{"unknown round", func() (int, []byte) {
			return ts.put(t, c1, 7, bytes.NewReader(good(1)), int64(len(good(1))), nil)
		}, 404, "unknown_round", "round 7"},
		{"bad round number", func() (int, []byte) {
			req, _ := http.NewRequest(http.MethodPut, ts.url+"/v1/rounds/x/update", bytes.NewReader(g0))
			req.Header.Set("Authorization", "Bearer "+c1)
			resp, err := ts.httpClient().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, b
		}, 400, "bad_request", `round "x"`},
		{"truncated stream", func() (int, []byte) {
			b := good(1)
			return rawPut(t, ts.url, c1, 1, int64(len(b)), b[:len(b)-100], true)
		}, 400, "truncated", "ended"},
		{"truncated header", func() (int, []byte) {
			b := good(1)
			return rawPut(t, ts.url, c1, 1, int64(len(b)), b[:20], true)
		}, 400, "truncated", "ended"},
		{"layout differs", func() (int, []byte) {
			b := encode(t, f32Set(t, [][]int{{4, 8}, {15}}, func(int, int) float32 { return 1 }), nil)
			return ts.put(t, c1, 1, bytes.NewReader(b), int64(len(b)), nil)
		}, 400, "layout", "w1"},
		{"tensor missing", func() (int, []byte) {
			b := encode(t, f32Set(t, [][]int{{4, 8}}, func(int, int) float32 { return 1 }), nil)
			return ts.put(t, c1, 1, bytes.NewReader(b), int64(len(b)), nil)
		}, 400, "layout", "c1"},
		{"oversize", func() (int, []byte) {
			big := encode(t, f32Set(t, [][]int{{4, 8}, {16}, {300000}}, func(int, int) float32 { return 1 }), nil)
			return ts.put(t, c1, 1, bytes.NewReader(big), int64(len(big)), nil)
		}, 413, "too_large", "max_update_bytes"},
		{"NaN", func() (int, []byte) {
			b := encode(t, f32Set(t, shapes, func(tn, i int) float32 {
				if tn == 1 && i == 9 {
					return float32(math.NaN())
				}
				return 1
			}), nil)
			return ts.put(t, c1, 1, bytes.NewReader(b), int64(len(b)), nil)
		}, 400, "non_finite", `tensor "w1": non-finite value NaN at element 9`},
		{"Inf", func() (int, []byte) {
			b := encode(t, f32Set(t, shapes, func(tn, i int) float32 {
				if tn == 0 && i == 31 {
					return float32(math.Inf(-1))
				}
				return 1
			}), nil)
			return ts.put(t, c1, 1, bytes.NewReader(b), int64(len(b)), nil)
		}, 400, "non_finite", `tensor "w0": non-finite value -Inf at element 31`},
		{"garbage header", func() (int, []byte) {
			b := append(binary.LittleEndian.AppendUint64(nil, 12), []byte("{not json!}}")...)
			b = append(b, make([]byte, 64)...)
			return ts.put(t, c1, 1, bytes.NewReader(b), int64(len(b)), nil)
		}, 400, "bad_header", "c1"},
		{"header length beyond the body", func() (int, []byte) {
			b := append(binary.LittleEndian.AppendUint64(nil, 1<<19), make([]byte, 64)...)
			return ts.put(t, c1, 1, bytes.NewReader(b), int64(len(b)), nil)
		}, 400, "bad_header", "header length"},
		{"body longer than the header declares", func() (int, []byte) {
			b := append(good(1), make([]byte, 8)...)
			return ts.put(t, c1, 1, bytes.NewReader(b), int64(len(b)), nil)
		}, 400, "bad_header", "belong to no tensor"},
		{"no length", func() (int, []byte) {
			b := good(1)
			return ts.put(t, c1, 1, io.MultiReader(bytes.NewReader(b)), -1, nil)
		}, 411, "length_required", "Content-Length"},
		{"bad weight header", func() (int, []byte) {
			b := good(1)
			return ts.put(t, c1, 1, bytes.NewReader(b), int64(len(b)), map[string]string{api.WeightHeader: "heavy"})
		}, 400, "bad_request", "X-Wattagg-Weight"},
		{"negative weight", func() (int, []byte) {
			b := good(1)
			return ts.put(t, c1, 1, bytes.NewReader(b), int64(len(b)), map[string]string{api.WeightHeader: "-2"})
		}, 400, "weight", "positive"},
		{"bad num_examples", func() (int, []byte) {
			b := encode(t, f32Set(t, shapes, func(int, int) float32 { return 1 }), map[string]string{"num_examples": "many"})
			return ts.put(t, c1, 1, bytes.NewReader(b), int64(len(b)), nil)
		}, 400, "weight", "num_examples"},
		{"a second, different update", func() (int, []byte) {
			b := good(5)
			return ts.put(t, tokens["c0"], 1, bytes.NewReader(b), int64(len(b)), nil)
		}, 409, "conflict", "already sent a different update"},
		{"the same update with another weight", func() (int, []byte) {
			return ts.put(t, tokens["c0"], 1, bytes.NewReader(g0), int64(len(g0)), map[string]string{api.WeightHeader: "3"})
		}, 409, "conflict", "already sent a different update"},
		{"stall mid-stream", func() (int, []byte) {
			b := good(1)
			return rawPut(t, ts.url, c1, 1, int64(len(b)), b[:len(b)/2], false)
		}, 408, "stalled", "idle_timeout"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, b := c.send()
			wantRefused(t, code, b, c.status, c.reason, c.msg)
			unchanged(t)
		})
	}
	t.Run("replayed update", func(t *testing.T) {
		ack := ts.push(t, "c0", 1, g0, nil)
		if !ack.Retry || ack.Seq != ack0.Seq || ack.Digest != ack0.Digest || !ack.At.Equal(ack0.At) {
			t.Fatalf("retry ack %+v, first %+v", ack, ack0)
		}
		unchanged(t)
	})
	t.Run("concurrent second upload", func(t *testing.T) {
		b := good(1)
		conn, err := net.Dial("tcp", strings.TrimPrefix(ts.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "PUT /v1/rounds/1/update HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n", c1, len(b))
		conn.Write(b[:len(b)/2])
		waitFor(t, func() bool { st, _ := ts.Status(1); return st.Arriving == 1 })
		code, body := ts.put(t, c1, 1, bytes.NewReader(b), int64(len(b)), nil)
		wantRefused(t, code, body, 409, "conflict", "already arriving")
		conn.Write(b[len(b)/2:])
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("first upload: %d", resp.StatusCode)
		}
	})
	ts.push(t, "c2", 1, good(2), nil)
	ts.waitState(t, 1, api.StateClosed)
	t.Run("push to a closed round", func(t *testing.T) {
		b := good(3)
		code, body := ts.put(t, tokens["c3"], 1, bytes.NewReader(b), int64(len(b)), nil)
		wantRefused(t, code, body, 409, "round_closed", "round 1 is closed")
	})
	// The result is the mean of the three good updates, as if nothing else had been sent.
	m := ts.readModel(t, 1)
	for tn := range m.Len() {
		got := f32s(t, m.At(tn))
		for i, v := range got {
			if want := float32(0+1+2)/3 + float32(tn+i); math.Abs(float64(v-want)) > 1e-5 {
				t.Fatalf("tensor %d element %d: %v, want %v", tn, i, v, want)
			}
		}
	}
	var refused float64
	mf, _ := ts.metrics.reg.Gather()
	for _, f := range mf {
		if f.GetName() == "wattagg_updates_rejected_total" {
			for _, m := range f.GetMetric() {
				refused += m.GetCounter().GetValue()
			}
		}
	}
	if refused < 20 {
		t.Fatalf("rejections counted: %v", refused)
	}
}

// waitFor polls cond for up to 10 s.
func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
