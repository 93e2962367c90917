package server

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/wattagg/wattagg/aggregate"
)

// Config is what `wattagg serve --config FILE` reads: a JSON document. Unknown fields are
// errors (a misspelt limit must not silently fall back to its default). Durations are Go
// duration strings ("90s", "10m").
//
//	{
//	  "listen": "127.0.0.1:8443",
//	  "flight_listen": "127.0.0.1:8815",
//	  "data_dir": "/var/lib/wattagg",
//	  "tls": {"cert_file": "server.pem", "key_file": "server.key", "client_ca_file": "clients-ca.pem"},
//	  "admin_token_sha256": "5e88...",
//	  "clients": [{"id": "hospital-a", "token_sha256": "9f86...", "cert_cn": "hospital-a"}],
//	  "round": {"rule": "fedavg", "min_clients": 2, "max_clients": 64, "quorum": 48, "deadline": "10m",
//	            "sum": "auto", "exact": {"bound": 65536, "max_weight": 1099511627776}},
//	  "limits": {"max_update_bytes": 4294967296, "max_streams": 64, "idle_timeout": "30s"}
//	}
type Config struct {
	// Listen is the address of the HTTP API (host:port).
	Listen string `json:"listen"`
	// FlightListen is the address of the Arrow Flight service (host:port; empty: none).
	FlightListen string `json:"flight_listen,omitempty"`
	// DataDir holds the rounds (acknowledgement logs, spools, models, reports) and the rules'
	// state. One server at a time may use it (it is locked).
	DataDir string `json:"data_dir"`
	// TLS serves HTTPS; with ClientCAFile, clients must present a certificate signed by it.
	TLS *TLSConfig `json:"tls,omitempty"`
	// AdminTokenSHA256 is the hex SHA-256 of the admin token (round control). Empty: no admin
	// actions over the API.
	AdminTokenSHA256 string `json:"admin_token_sha256,omitempty"`
	// Clients are the clients allowed to push, each with the hash of its token.
	Clients []ClientConfig `json:"clients"`
	Round   RoundConfig    `json:"round"`
	Limits  LimitsConfig   `json:"limits"`
	// LogLevel is debug, info (default), warn or error.
	LogLevel string `json:"log_level,omitempty"`
}

// TLSConfig names the PEM files of the server's certificate and, for mutual TLS, of the CA
// that signs the clients' certificates.
type TLSConfig struct {
	CertFile     string `json:"cert_file"`
	KeyFile      string `json:"key_file"`
	ClientCAFile string `json:"client_ca_file,omitempty"`
}

// ClientConfig is one client allowed to push.
type ClientConfig struct {
	// ID names the client: its updates' source in rounds, reports and logs.
	ID string `json:"id"`
	// TokenSHA256 is the hex SHA-256 of the client's bearer token (`wattagg serve hash-token`).
	// Tokens are random secrets (32 random bytes), so a plain hash suffices: there is nothing
	// to guess that a slow hash would protect.
	TokenSHA256 string `json:"token_sha256"`
	// CertCN, under mutual TLS, is the common name the client's certificate must carry: the
	// token and the certificate then both have to be the client's.
	CertCN string `json:"cert_cn,omitempty"`
}

// RoundConfig is how every round runs.
type RoundConfig struct {
	// Rule is a rule name or a composition ("fedavg", "median", "norm-clip,median",
	// "dp-fixed,fedadam"); see Rules.
	Rule string `json:"rule"`
	// Params are the rule's parameters by name (f, m, beta, server_lr, clip_bound, ...).
	Params map[string]float64 `json:"params,omitempty"`
	// MinClients is the fewest updates a round may be closed with, by anyone (default 1).
	MinClients int `json:"min_clients,omitempty"`
	// MaxClients closes a round as soon as this many updates are acknowledged (default: the
	// number of configured clients).
	MaxClients int `json:"max_clients,omitempty"`
	// Quorum is the fewest updates a round closes with at its deadline; with fewer it fails
	// and the next round starts from the same global model (default MinClients).
	Quorum int `json:"quorum,omitempty"`
	// Deadline is how long a round stays open (0: until max clients or an admin close).
	Deadline Duration `json:"deadline,omitempty"`
	// InitialGlobal is the model round 1 starts from, for rules that move a global model
	// (server optimizers, private means); later rounds start from the previous result.
	InitialGlobal string `json:"initial_global,omitempty"`
	// MixedDTypes accepts clients that send a tensor in different real dtypes.
	MixedDTypes bool `json:"mixed_dtypes,omitempty"`
	// ManualNext: the next round opens only on an admin POST /v1/rounds, not as soon as one
	// closes or fails.
	ManualNext bool `json:"manual_next,omitempty"`
	// KeepSpool keeps the updates' spool files of a closed round (default: removed once the
	// round's model is published).
	KeepSpool bool `json:"keep_spool,omitempty"`
	// ModelRange [lo, hi) makes every round own only those coordinates of the model's flattened
	// space (its tensors sorted by name, concatenated): clients push whole updates, the round
	// keeps and aggregates its part, and its model is that part (see ModelRangeKey).
	ModelRange *[2]int64 `json:"model_range,omitempty"`
	// Sum is how the rounds of a sum rule add their updates: "auto" (the default: exact sums
	// for every rule the round engine takes them for, float sums for the others), "exact"
	// (a rule that refuses exact sums is a configuration error) or "float" (sums in the order
	// the updates are acknowledged). Exact sums make a round's model a function of its
	// (update, weight) pairs alone, whatever their arrival order, so that anyone holding the
	// acknowledged updates can recompute it bit for bit: what an audit of a federated round
	// needs. They refuse f64 updates and values beyond round.exact's bounds.
	Sum string `json:"sum,omitempty"`
	// Exact sets up exact sums (aggregate.ExactSum); nil takes the defaults. It is an error
	// where the rounds do not sum exactly.
	Exact *ExactConfig `json:"exact,omitempty"`
}

// The values of RoundConfig.Sum.
const (
	SumAuto  = "auto"
	SumExact = "exact"
	SumFloat = "float"
)

// ExactConfig is what a round's exact sums are set up for (aggregate.ExactSum): the grid each
// product is rounded to follows from the bound and the cap, so a smaller bound or cap is a
// finer grid. A field left out (or 0) takes the engine's default.
type ExactConfig struct {
	// Bound bounds every value of every tensor, |x| ≤ Bound (default
	// aggregate.DefaultExactBound, 65536). An update with a value beyond it is refused.
	Bound float64 `json:"bound,omitempty"`
	// MaxWeight caps the total weight of a round's clients (default
	// aggregate.DefaultExactMaxWeight, 2^40). An update whose weight takes the total past it is
	// refused.
	MaxWeight float64 `json:"max_weight,omitempty"`
	// TensorBounds bound the values of the named tensors, in place of Bound.
	TensorBounds map[string]float64 `json:"tensor_bounds,omitempty"`
	// OneLimb keeps the round's running sums in one int64 per parameter instead of two: 8
	// bytes per parameter instead of 16, on a grid 40 bits coarser (aggregate.ExactSum.OneLimb),
	// for rounds that declare a tight bound and max_weight.
	OneLimb bool `json:"one_limb,omitempty"`
}

// exactSum is the engine's setting.
func (e *ExactConfig) exactSum() aggregate.ExactSum {
	if e == nil {
		return aggregate.ExactSum{}
	}
	return aggregate.ExactSum{Bound: e.Bound, MaxWeight: e.MaxWeight, TensorBounds: e.TensorBounds, OneLimb: e.OneLimb}
}

// check asks the engine about each value (a bound or cap that is not a positive finite f32
// is refused there), naming the configuration's field.
func (e *ExactConfig) check() error {
	if e == nil {
		return nil
	}
	fields := []struct {
		name string
		set  aggregate.ExactSum
	}{{"bound", aggregate.ExactSum{Bound: e.Bound}}, {"max_weight", aggregate.ExactSum{MaxWeight: e.MaxWeight}}}
	names := slices.Sorted(maps.Keys(e.TensorBounds))
	for _, n := range names {
		fields = append(fields, struct {
			name string
			set  aggregate.ExactSum
		}{fmt.Sprintf("tensor_bounds[%q]", n), aggregate.ExactSum{TensorBounds: map[string]float64{n: e.TensorBounds[n]}}})
	}
	for _, f := range fields {
		if err := aggregate.CheckOptions(aggregate.WithExactSum(f.set)); err != nil {
			return fmt.Errorf("%w: round.exact.%s: %w", ErrConfig, f.name, err)
		}
	}
	if e.OneLimb && e.MaxWeight == 0 {
		return fmt.Errorf("%w: round.exact.one_limb needs round.exact.max_weight, the largest total weight of a round's clients: with the default cap (2^40) one limb's grid is 2^40 times the bound's 2^-61, too coarse for a mean", ErrConfig)
	}
	return nil
}

// LimitsConfig bounds what clients can make the server hold.
type LimitsConfig struct {
	// MaxUpdateBytes bounds one update, framing included (default 8 GiB).
	MaxUpdateBytes int64 `json:"max_update_bytes,omitempty"`
	// MaxHeaderBytes bounds a .safetensors header (default 16 MiB).
	MaxHeaderBytes int64 `json:"max_header_bytes,omitempty"`
	// MaxStreams bounds the uploads in progress at once; one more is answered 503 with
	// Retry-After (default 64).
	MaxStreams int `json:"max_streams,omitempty"`
	// IdleTimeout cuts an upload that makes no progress for this long (408), and closes idle
	// keep-alive connections (default 30s). A large upload that keeps moving is never cut.
	IdleTimeout Duration `json:"idle_timeout,omitempty"`
	// ReadHeaderTimeout bounds the time to read a request's headers (default 10s).
	ReadHeaderTimeout Duration `json:"read_header_timeout,omitempty"`
	// ChunkBytes is the read and write unit of an upload (default 1 MiB): the server holds
	// about MaxStreams × ChunkBytes of upload buffers.
	ChunkBytes int `json:"chunk_bytes,omitempty"`
}

// Duration is a time.Duration read from and written as a Go duration string.
type Duration time.Duration

// UnmarshalJSON reads "90s", "10m", "1h30m".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration string such as \"30s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	if v < 0 {
		return fmt.Errorf("negative duration %q", s)
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// Defaults.
const (
	DefaultMaxUpdateBytes    = 8 << 30
	DefaultMaxHeaderBytes    = 16 << 20
	DefaultMaxStreams        = 64
	DefaultIdleTimeout       = 30 * time.Second
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultChunkBytes        = 1 << 20
)

// LoadConfig reads and checks the configuration at path.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	return ParseConfig(b, path)
}

// ParseConfig reads and checks a configuration document; name is its source in errors.
func ParseConfig(b []byte, name string) (*Config, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrConfig, name, err)
	}
	if dec.Decode(&struct{}{}) != io.EOF {
		return nil, fmt.Errorf("%w: %s: more than one JSON document", ErrConfig, name)
	}
	if err := c.check(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &c, nil
}

// check validates the configuration and fills in defaults.
func (c *Config) check() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(format, args...))
	}
	if c.Listen == "" {
		return bad("listen: missing (host:port, e.g. 127.0.0.1:8443)")
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return bad("listen %q: %v", c.Listen, err)
	}
	if c.FlightListen != "" {
		if _, _, err := net.SplitHostPort(c.FlightListen); err != nil {
			return bad("flight_listen %q: %v", c.FlightListen, err)
		}
	}
	if c.DataDir == "" {
		return bad("data_dir: missing")
	}
	if t := c.TLS; t != nil && (t.CertFile == "" || t.KeyFile == "") {
		return bad("tls: cert_file and key_file are both needed")
	}
	if c.AdminTokenSHA256 != "" {
		if _, err := parseTokenHash(c.AdminTokenSHA256); err != nil {
			return bad("admin_token_sha256: %v", err)
		}
	}
	if len(c.Clients) == 0 {
		return bad("clients: none configured")
	}
	ids := map[string]bool{}
	hashes := map[string]string{strings.ToLower(c.AdminTokenSHA256): "the admin"}
	for i, cl := range c.Clients {
		if err := checkClientID(cl.ID); err != nil {
			return bad("clients[%d]: %v", i, err)
		}
		if ids[cl.ID] {
			return bad("clients[%d]: id %q given twice", i, cl.ID)
		}
		ids[cl.ID] = true
		if _, err := parseTokenHash(cl.TokenSHA256); err != nil {
			return bad("clients[%d] (%s): token_sha256: %v", i, cl.ID, err)
		}
		h := strings.ToLower(cl.TokenSHA256)
		if who, ok := hashes[h]; ok {
			return bad("clients[%d] (%s): token_sha256 is also %s's: every client needs its own token", i, cl.ID, who)
		}
		hashes[h] = cl.ID
		if cl.CertCN != "" && (c.TLS == nil || c.TLS.ClientCAFile == "") {
			return bad("clients[%d] (%s): cert_cn needs tls.client_ca_file (mutual TLS)", i, cl.ID)
		}
	}
	if err := c.Round.check(len(c.Clients)); err != nil {
		return err
	}
	return c.Limits.check()
}

func (r *RoundConfig) check(clients int) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: round: %s", ErrConfig, fmt.Sprintf(format, args...))
	}
	if r.Rule == "" {
		r.Rule = "fedavg"
	}
	if r.MinClients < 0 || r.MaxClients < 0 || r.Quorum < 0 {
		return bad("min_clients, max_clients and quorum cannot be negative")
	}
	if r.MinClients == 0 {
		r.MinClients = 1
	}
	if r.MaxClients == 0 {
		r.MaxClients = clients
	}
	if r.Quorum == 0 {
		r.Quorum = r.MinClients
	}
	switch {
	case r.MaxClients > clients:
		return bad("max_clients %d is more than the %d configured clients", r.MaxClients, clients)
	case r.MinClients > r.MaxClients:
		return bad("min_clients %d is more than max_clients %d", r.MinClients, r.MaxClients)
	case r.Quorum < r.MinClients || r.Quorum > r.MaxClients:
		return bad("quorum %d must lie between min_clients %d and max_clients %d", r.Quorum, r.MinClients, r.MaxClients)
	}
	if m := r.ModelRange; m != nil && (m[0] < 0 || m[1] <= m[0]) {
		return bad("model_range [%d, %d): want 0 <= lo < hi", m[0], m[1])
	}
	switch r.Sum {
	case "":
		r.Sum = SumAuto
	case SumAuto, SumExact, SumFloat:
	default:
		return bad("sum %q: want \"auto\" (the default), \"exact\" or \"float\"", r.Sum)
	}
	if r.Exact != nil && r.Sum == SumFloat {
		return bad("exact is set but sum is \"float\": exact sums are not in effect")
	}
	if err := r.Exact.check(); err != nil {
		return err
	}
	// The rule itself is checked by building it once (newRuleFactory), which needs the data
	// directory for state files; whether it takes exact sums is asked of the engine then
	// (Server.resolveSum).
	return nil
}

func (l *LimitsConfig) check() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: limits: %s", ErrConfig, fmt.Sprintf(format, args...))
	}
	if l.MaxUpdateBytes < 0 || l.MaxHeaderBytes < 0 || l.MaxStreams < 0 || l.ChunkBytes < 0 {
		return bad("limits cannot be negative")
	}
	if l.MaxUpdateBytes == 0 {
		l.MaxUpdateBytes = DefaultMaxUpdateBytes
	}
	if l.MaxHeaderBytes == 0 {
		l.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if l.MaxStreams == 0 {
		l.MaxStreams = DefaultMaxStreams
	}
	if l.IdleTimeout == 0 {
		l.IdleTimeout = Duration(DefaultIdleTimeout)
	}
	if l.ReadHeaderTimeout == 0 {
		l.ReadHeaderTimeout = Duration(DefaultReadHeaderTimeout)
	}
	if l.ChunkBytes == 0 {
		l.ChunkBytes = DefaultChunkBytes
	}
	if l.ChunkBytes < 4096 || l.ChunkBytes%4096 != 0 || l.ChunkBytes > 64<<20 {
		return bad("chunk_bytes %d: want a multiple of 4096 up to 64 MiB", l.ChunkBytes)
	}
	if l.MaxHeaderBytes > l.MaxUpdateBytes {
		l.MaxHeaderBytes = l.MaxUpdateBytes
	}
	return nil
}

// checkClientID allows ids that are safe as file names and in logs.
func checkClientID(id string) error {
	if id == "" {
		return fmt.Errorf("empty id")
	}
	if len(id) > 128 {
		return fmt.Errorf("id %.20q...: longer than 128 bytes", id)
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("id %q: only letters, digits, '-', '_' and '.' are allowed", id)
		}
	}
	if id == "." || id == ".." {
		return fmt.Errorf("id %q is not a name", id)
	}
	return nil
}

// HashToken is the hex SHA-256 of a token, as the configuration stores it.
func HashToken(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// parseTokenHash decodes a configured token hash.
func parseTokenHash(s string) ([32]byte, error) {
	var h [32]byte
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 32 {
		return h, fmt.Errorf("%.16q... is not a hex SHA-256 (64 hex digits; wattagg serve hash-token prints one)", s)
	}
	copy(h[:], b)
	return h, nil
}
