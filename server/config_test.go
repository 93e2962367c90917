package server

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const goodConfig = `{
  "listen": "127.0.0.1:8443",
  "data_dir": "/tmp/x",
  "admin_token_sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
  "clients": [
    {"id": "a", "token_sha256": "3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d"},
    {"id": "b", "token_sha256": "2e7d2c03a9507ae265ecf5b5356885a53393a2029d241394997265a1a25aefc6"}
  ],
  "round": {"rule": "trimmed-mean", "params": {"beta": 0.2}, "quorum": 2, "deadline": "90s"},
  "limits": {"max_streams": 8, "idle_timeout": "5s"}
}`

func TestParseConfig(t *testing.T) {
	c, err := ParseConfig([]byte(goodConfig), "good")
	if err != nil {
		t.Fatal(err)
	}
	r, l := c.Round, c.Limits
	if r.MinClients != 1 || r.MaxClients != 2 || r.Quorum != 2 || time.Duration(r.Deadline) != 90*time.Second ||
		l.MaxStreams != 8 || time.Duration(l.IdleTimeout) != 5*time.Second || l.ChunkBytes != DefaultChunkBytes ||
		l.MaxUpdateBytes != DefaultMaxUpdateBytes {
		t.Fatalf("defaults: %+v %+v", r, l)
	}
	if HashToken("abc") != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Fatal("HashToken is not SHA-256")
	}
}

// TestConfigErrors checks that each bad configuration is refused with ErrConfig, naming the
// field.
func TestConfigErrors(t *testing.T) {
	for _, c := range []struct {
		edit func(string) string
		msg  string
	}{
		{func(s string) string { return strings.Replace(s, `"listen"`, `"listne"`, 1) }, `unknown field "listne"`},
		{func(s string) string { return strings.Replace(s, `"127.0.0.1:8443"`, `"localhost"`, 1) }, "listen"},
		{func(s string) string { return strings.Replace(s, `"/tmp/x"`, `""`, 1) }, "data_dir"},
		{func(s string) string { return strings.Replace(s, `"id": "b"`, `"id": "a"`, 1) }, `id "a" given twice`},
		{func(s string) string { return strings.Replace(s, `"id": "b"`, `"id": "../b"`, 1) }, "only letters"},
		{func(s string) string { return strings.Replace(s, `2e7d2c03`, `zz7d2c03`, 1) }, "not a hex SHA-256"},
		{func(s string) string {
			return strings.Replace(s, `2e7d2c03a9507ae265ecf5b5356885a53393a2029d241394997265a1a25aefc6`, `3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d`, 1)
		}, "also a's"},
		{func(s string) string { return strings.Replace(s, `"quorum": 2`, `"quorum": 3`, 1) }, "quorum 3"},
		{func(s string) string { return strings.Replace(s, `"quorum": 2`, `"max_clients": 5`, 1) }, "max_clients 5 is more than the 2"},
		{func(s string) string { return strings.Replace(s, `"90s"`, `"soon"`, 1) }, "duration"},
		{func(s string) string { return strings.Replace(s, `"max_streams": 8`, `"chunk_bytes": 1000`, 1) }, "chunk_bytes 1000"},
		{func(s string) string { return strings.Replace(s, `"max_streams": 8`, `"max_streams": -1`, 1) }, "negative"},
		{func(s string) string { return s + "{}" }, "more than one JSON document"},
		{func(s string) string {
			return strings.Replace(s, `"round": {`, `"tls": {"cert_file": "x"}, "round": {`, 1)
		}, "cert_file and key_file"},
	} {
		_, err := ParseConfig([]byte(c.edit(goodConfig)), "bad")
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%q: error %v, want ErrConfig mentioning %q", c.msg, err, c.msg)
		}
	}
}

// TestRuleConfigErrors: rules and their parameters are checked when the server starts.
func TestRuleConfigErrors(t *testing.T) {
	for _, c := range []struct {
		rule   string
		params map[string]float64
		global bool
		msg    string
	}{
		{"fedmedian", nil, false, `unknown rule "fedmedian"`},
		{"secagg", map[string]float64{"bits": 0}, false, "bit width 0"},
		{"secagg", map[string]float64{"beta": 0.1}, false, "round.params.beta does not apply to rule secagg"},
		{"median", map[string]float64{"beta": 0.1}, false, "round.params.beta does not apply to rule median"},
		{"krum", map[string]float64{"f": 1.5}, false, "want an integer"},
		{"trimmed-mean", map[string]float64{"beta": 0.7}, false, "trimmed-mean"},
		{"norm-clip", nil, false, "clip_bound or clip_quantile"},
		{"fedadam", nil, false, "round.initial_global must name the model round 1 starts from"},
		{"median,fedavg", nil, false, "must come last"},
		{"krum", map[string]float64{"f": 1}, false, "f=1 (n > 2f+2) needs at least 5 clients, but a round takes at most 4"},
		{"multi-krum", map[string]float64{"f": 0, "m": 5}, false, "m=5 updates to average needs at least 5 clients"},
		{"bulyan", map[string]float64{"f": 1}, false, "f=1 (n >= 4f+3) needs at least 7 clients"},
		{"norm-clip,bulyan", map[string]float64{"f": 0, "clip_bound": 1}, false, "needs at least 3 clients"},
		{"median", map[string]float64{"nnm": 1.5}, false, "round.params.nnm = 1.5: want an integer"},
		{"median", map[string]float64{"nnm": -1}, false, "nnm f=-1: want f >= 1"},
		{"geomed", map[string]float64{"nnm": 2}, false, "round.params.nnm does not apply to rule geomed"},
	} {
		cfg, tokens, admin := testConfig(t, 4)
		_ = tokens
		_ = admin
		cfg.Round.Rule, cfg.Round.Params = c.rule, c.params
		if strings.Contains(c.rule, "bulyan") && c.params["f"] == 0 {
			cfg.Round.MaxClients = 2
		}
		_, err := New(cfg)
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("rule %s %v: error %v, want ErrConfig mentioning %q", c.rule, c.params, err, c.msg)
		}
	}
}

// TestDataDirLocked: a second server on the same data directory is refused.
func TestDataDirLocked(t *testing.T) {
	leakCheck(t)
	cfg, _, _ := testConfig(t, 2)
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = New(cfg)
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "in use by another server") {
		t.Fatalf("second server: %v", err)
	}
}

func TestLoadConfigFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.json")
	if err := os.WriteFile(p, []byte(goodConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(p); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(p + ".missing"); !errors.Is(err, ErrConfig) {
		t.Fatalf("missing file: %v", err)
	}
}
