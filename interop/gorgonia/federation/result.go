package federation

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/wattagg/wattagg/energy"
)

// Round is what one round of a federation did, from the server's round report and the
// inference node's answer.
type Round struct {
	Round int `json:"round"`
	// Accuracy is the held-out accuracy of the round's global model, answered by the
	// inference node's HTTP service.
	Accuracy float64 `json:"accuracy"`
	// Clients and Bytes are the updates the server acknowledged and their tensor bytes.
	Clients int   `json:"clients"`
	Bytes   int64 `json:"bytes"`
	// Seconds is the aggregation's time in the round report.
	Seconds float64 `json:"aggregation_seconds"`
	// Joules is the aggregation's energy (nil with JoulesReason when it could not be
	// measured); JoulesSource and Energy are its provenance, as the round report gives them.
	Joules       *float64             `json:"joules"`
	JoulesSource string               `json:"joules_source,omitempty"`
	JoulesReason string               `json:"joules_reason,omitempty"`
	Energy       []energy.Measurement `json:"energy,omitempty"`
	// Generation is the inference node's model generation that answered.
	Generation uint64 `json:"generation"`
	// Dropped says which clients sent nothing, and why (training diverged, update refused).
	Dropped []string `json:"dropped,omitempty"`
	// Wall is the round from the clients' start to the accuracy.
	Wall time.Duration `json:"wall_ns"`
}

// Result is a whole federation.
type Result struct {
	Rule     Rule     `json:"rule"`
	Attack   Attack   `json:"attack"`
	Poisoned []string `json:"poisoned,omitempty"`
	Clients  int      `json:"clients"`
	// Shards are the clients' training rows (Dirichlet label skew: unequal sizes and class
	// mixes); TestRows the held-out rows the inference node answers.
	Shards   []int     `json:"shard_rows"`
	Alpha    float64   `json:"dirichlet_alpha"`
	Hidden   int       `json:"hidden"`
	TestRows int       `json:"test_rows"`
	Rounds   []Round   `json:"rounds"`
	Load     LoadStats `json:"inference_load"`
	// Collapsed says why the run ended before its last round, if it did.
	Collapsed string `json:"collapsed,omitempty"`
	// Error is why the run failed, in a Table (Run returns it as an error).
	Error string `json:"error,omitempty"`
	// Server is the address the server listened on.
	Server string        `json:"server"`
	Wall   time.Duration `json:"wall_ns"`
}

// Final is the last round's accuracy (0 without rounds).
func (r *Result) Final() float64 {
	if len(r.Rounds) == 0 {
		return 0
	}
	return r.Rounds[len(r.Rounds)-1].Accuracy
}

// FirstReaching is the first round whose accuracy is at least acc, or 0.
func (r *Result) FirstReaching(acc float64) int {
	for _, rd := range r.Rounds {
		if rd.Accuracy >= acc {
			return rd.Round
		}
	}
	return 0
}

// FirstDropped is the first round in which a client sent nothing (its training diverged or
// its update was refused), or 0.
func (r *Result) FirstDropped() int {
	for _, rd := range r.Rounds {
		if len(rd.Dropped) > 0 {
			return rd.Round
		}
	}
	return 0
}

// Provenance says in one line where a round's joules come from: each meter's source, the
// domains it covers and, for an estimate, its formula.
func Provenance(ms []energy.Measurement) string {
	var parts []string
	for _, m := range ms {
		s := fmt.Sprintf("%s from %s", m.Source, m.Meter)
		if len(m.Domains) > 0 {
			s += " over " + strings.Join(m.Domains, ", ")
		}
		if m.Model != "" {
			s += " (" + m.Model + ")"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

// WriteRoundsHeader writes the column heads of WriteRound.
func WriteRoundsHeader(w io.Writer) error {
	_, err := fmt.Fprintf(w, "%5s  %8s  %7s  %9s  %11s  %10s  %s\n",
		"round", "accuracy", "clients", "bytes", "aggregation", "joules", "source")
	return err
}

// WriteRound writes one round as a line under WriteRoundsHeader.
func WriteRound(w io.Writer, rd Round) error {
	j, src := "n/a", rd.JoulesSource
	if rd.Joules != nil {
		j = fmt.Sprintf("%.4f J", *rd.Joules)
	} else if src == "" {
		src = rd.JoulesReason
	}
	_, err := fmt.Fprintf(w, "%5d  %8.3f  %7d  %9d  %9.2f ms  %10s  %s\n",
		rd.Round, rd.Accuracy, rd.Clients, rd.Bytes, rd.Seconds*1e3, j, src)
	return err
}
