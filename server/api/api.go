// Package api holds the JSON documents of wattagg's HTTP API, shared by the server (package
// server) and its Go client (package server/client), so that both sides encode the same
// fields. It imports nothing of wattagg beyond the round engine's Report.
package api

import (
	"time"

	"github.com/wattagg/wattagg/aggregate"
)

// Header names of the HTTP API.
const (
	// WeightHeader carries a client's weight for its update; without it the update's
	// num_examples metadata is the weight, or 1.
	WeightHeader = "X-Wattagg-Weight"
)

// Round states.
const (
	StateOpen   = "open"   // taking updates
	StateClosed = "closed" // its model and report are published
	StateFailed = "failed" // closed without a model (Reason says why)
)

// Ack is the server's acknowledgement of an update: sent only once the update is durable. A
// retry of the same update gets the same Ack.
type Ack struct {
	Round  int       `json:"round"`
	Client string    `json:"client"`
	Seq    int       `json:"seq"`    // position of the update in the round, from 0, in acknowledgement order
	Digest string    `json:"digest"` // of the update (tensors, layout, metadata), hex: the same for a retry
	Bytes  int64     `json:"bytes"`  // tensor data bytes
	Weight float64   `json:"weight"`
	From   string    `json:"weight_from"` // "given", "num_examples" or "uniform"
	At     time.Time `json:"acknowledged_at"`
	// Retry is true when the update had already been acknowledged (an idempotent retry).
	Retry bool `json:"retry,omitempty"`
}

// ClientUpdate is one acknowledged update as a round's status lists it.
type ClientUpdate struct {
	Client string    `json:"client"`
	Seq    int       `json:"seq"`
	Bytes  int64     `json:"bytes"`
	Weight float64   `json:"weight"`
	At     time.Time `json:"acknowledged_at"`
}

// Round is the status of one round.
type Round struct {
	Round      int               `json:"round"`
	State      string            `json:"state"`
	Rule       string            `json:"rule"`
	Clients    int               `json:"clients"` // acknowledged updates
	Arriving   int               `json:"arriving,omitempty"`
	Bytes      int64             `json:"bytes"` // tensor data bytes acknowledged
	MinClients int               `json:"min_clients"`
	MaxClients int               `json:"max_clients"`
	Quorum     int               `json:"quorum"`
	Opened     time.Time         `json:"opened"`
	Deadline   *time.Time        `json:"deadline,omitempty"`
	Closed     *time.Time        `json:"closed,omitempty"`
	Global     string            `json:"global,omitempty"` // the global model the round started from
	Reason     string            `json:"reason,omitempty"` // why it failed, or a note on how it closed
	Updates    []ClientUpdate    `json:"updates,omitempty"`
	Report     *aggregate.Report `json:"report,omitempty"`
	ModelRange *[2]int64         `json:"model_range,omitempty"`
	// Sum is how the round adds its updates: "exact" (its model is a function of its updates
	// and weights alone, whatever their arrival order) or "float" (in acknowledgement order,
	// and for rules that need every update at once). The report's acc_dtype says "exact" too.
	Sum string `json:"sum,omitempty"`
	// Exact is what the round's exact sums were set up for: with the acknowledged updates,
	// what recomputing its model bit for bit needs (aggregate.WithExactSum).
	Exact *ExactSum `json:"exact,omitempty"`
	// SumBytes is, for an open round, the memory its running sums held after the last group
	// commit (exact sums: 8 bytes per parameter, 16 for parameters whose sums needed a second
	// limb); a closed round's report has it at the close.
	SumBytes int64 `json:"sum_bytes,omitempty"`
	// Recovery is, for an open secure-sum round, whether the recovery that unmasks its sum was
	// given: "stored" or "waiting" (the round does not close without it).
	Recovery string `json:"recovery,omitempty"`
}

// ExactSum is a round's exact-sum setting (aggregate.ExactSum): every value within ±Bound
// (TensorBounds for the named tensors), the clients' weights totalling at most MaxWeight.
type ExactSum struct {
	Bound        float64            `json:"bound"`
	MaxWeight    float64            `json:"max_weight"`
	TensorBounds map[string]float64 `json:"tensor_bounds,omitempty"`
	// OneLimb: the round's running sums are kept in one int64 per parameter (8 bytes).
	OneLimb bool `json:"one_limb,omitempty"`
}

// Rounds is the answer of GET /v1/rounds: every round, oldest first.
type Rounds struct {
	Rounds []Round `json:"rounds"`
	// Latest is the last round with a model (0: none yet).
	Latest int `json:"latest"`
}

// Error is the body of every error response.
type Error struct {
	Error string `json:"error"`
	// Code is a stable word for the kind of failure ("unauthorized", "layout", "non_finite",
	// "truncated", "round_closed", "conflict", "too_large", "busy", "stalled", ...); the
	// server's metrics count rejections by it.
	Code string `json:"code"`
}
