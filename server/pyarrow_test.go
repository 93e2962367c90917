package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/wattagg/wattagg/internal/pyarrowtest"
	"github.com/wattagg/wattagg/server/api"
	"github.com/wattagg/wattagg/tensor/arrowio"
)

// pyarrowFlightPrelude sets what the README's Flight block takes as given (the server, a token,
// the round, the update's tensors) from sys.argv: client k's update of round 1 is
// w0 = 0.5i + k (3×4) and w1 = i - 3k (5).
const pyarrowFlightPrelude = `
import sys, json, numpy as np, pyarrow as pa, pyarrow.flight as fl
addr, token, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
tensors = [("w0", np.arange(12, dtype=np.float32).reshape(3, 4) * np.float32(0.5) + np.float32(k)),
           ("w1", np.arange(5, dtype=np.float32) - np.float32(3 * k))]
if k < 0:  # an update whose layout is not the round's: w0 transposed
    tensors[0] = ("w0", tensors[0][1].T.copy())
`

// readmeFlight is the README's pyarrow Flight block with its server address and round taken
// from the prelude, and, unless pull, without its last line (the DoGet of the model).
func readmeFlight(t *testing.T, pull bool) string {
	t.Helper()
	code := pyarrowtest.ReadmeBlock(t, "../README.md", "fl.connect(")
	for old, repl := range map[string]string{`"grpc://127.0.0.1:8815"`: `"grpc://" + addr`, `for_path("rounds", "3")`: `for_path("rounds", "1")`} {
		if !strings.Contains(code, old) {
			t.Fatalf("README's Flight block has no %s", old)
		}
		code = strings.Replace(code, old, repl, 1)
	}
	var keep []string
	for _, line := range strings.Split(code, "\n") {
		if strings.HasPrefix(line, "model = ") != pull && !strings.HasPrefix(line, "client = ") && !strings.HasPrefix(line, "import ") {
			continue
		}
		keep = append(keep, line)
	}
	return strings.Join(keep, "\n")
}

// TestPyarrowFlightClient runs the README's pyarrow clients — write_update and the Flight
// block — in real pyarrow (internal/pyarrowtest) against a server on loopback: a wrong token
// refused as Unauthenticated, an update of another layout refused as InvalidArgument (pyarrow's
// ArrowInvalid) with the server's message, two updates acknowledged, and the model read with
// do_get, which must be the server's model and the mean of the two updates.
func TestPyarrowFlightClient(t *testing.T) {
	py := pyarrowtest.Python(t)
	def := pyarrowtest.ReadmeBlock(t, "../README.md", "def write_update(")
	push := def + pyarrowFlightPrelude + "try:\n    exec(" + pyString(readmeFlight(t, false)) + `)
except pa.ArrowException as e:  # FlightError and its kinds, and ArrowInvalid for InvalidArgument
    print(type(e).__name__ + ": " + str(e).splitlines()[0], file=sys.stderr); sys.exit(3)
print(json.dumps(ack))
`
	cfg, tokens, admin := testConfig(t, 2)
	ts := startServer(t, cfg, tokens, admin)
	addr := serveFlight(t, ts)

	_, stderr, err := pyarrowtest.Run(py, push, nil, addr, "wrong-token", "0")
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 3 || !strings.HasPrefix(string(stderr), "FlightUnauthenticatedError: ") || !strings.Contains(string(stderr), "the token is not valid") {
		t.Fatalf("push with a wrong token: %v, stderr %q", err, stderr)
	}
	for k, id := range []string{"c0", "c1"} {
		if k == 1 {
			// After c0 fixed the round's layout: c1's update transposed is refused before its
			// body, and c1 can still push its own.
			_, stderr, err := pyarrowtest.Run(py, push, nil, addr, tokens[id], "-1")
			if !errors.As(err, &exit) || exit.ExitCode() != 3 || !strings.HasPrefix(string(stderr), "ArrowInvalid: ") || !strings.Contains(string(stderr), `layout mismatch: tensor "w0" has shape [4 3], want [3 4]`) {
				t.Fatalf("push of a transposed tensor: %v, stderr %q", err, stderr)
			}
			t.Logf("refused: %s", strings.TrimSpace(string(stderr)))
		}
		stdout, stderr, err := pyarrowtest.Run(py, push, nil, addr, tokens[id], string(rune('0'+k)))
		if err != nil {
			t.Fatalf("push %s: %v\n%s", id, err, stderr)
		}
		var ack api.Ack
		if err := json.Unmarshal(stdout, &ack); err != nil || ack.Round != 1 || ack.Client != id || ack.Weight != 1200 {
			t.Fatalf("ack of %s: %q (%v)", id, stdout, err)
		}
	}
	ts.waitState(t, 1, api.StateClosed)

	pull := pyarrowFlightPrelude + readmeFlight(t, true) + `
with pa.ipc.new_stream(sys.stdout.buffer, model.schema) as w:
    w.write_table(model)
`
	stdout, stderr, err := pyarrowtest.Run(py, pull, nil, addr, "", "0")
	if err != nil {
		t.Fatalf("do_get: %v\n%s", err, stderr)
	}
	got, err := arrowio.ReadStream(bytes.NewReader(stdout))
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	want := ts.readModel(t, 1)
	if !got.Layout().Equal(want.Layout()) {
		t.Fatalf("model layout %v, the server's %v", got.Layout(), want.Layout())
	}
	mean := []func(i int) float32{func(i int) float32 { return 0.5*float32(i) + 0.5 }, func(i int) float32 { return float32(i) - 1.5 }}
	for k := range got.Len() {
		if !bytes.Equal(got.At(k).Bytes(), want.At(k).Bytes()) {
			t.Fatalf("%s: do_get's bytes differ from the server's model", got.At(k).Name)
		}
		for i, v := range f32s(t, got.At(k)) {
			if v != mean[k](i) {
				t.Fatalf("%s[%d] = %v, want the mean %v", got.At(k).Name, i, v, mean[k](i))
			}
		}
	}
}

// pyString quotes s as a Python string literal (a JSON string is one).
func pyString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
