package secagg

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"

	"github.com/wattagg/wattagg/aggregate"
)

// The JSON form of a Recovery, what `wattagg aggregate --secagg-recovery` reads and a server's
// recovery action takes: client IDs as decimal keys, seeds as 64 hex digits.
//
//	{"clients": [0, 1, 2, 3],                        every client that was sent masks
//	 "self": {"0": "<64 hex digits>", ...},           self-mask seeds of the survivors
//	 "dropped": {"3": {"0": "<hex>", ...}},           seeds each dropped client shared with them
//	 "no_self_masks": false}
type recoveryJSON struct {
	Clients     []int                        `json:"clients"`
	Self        map[string]string            `json:"self,omitempty"`
	Dropped     map[string]map[string]string `json:"dropped,omitempty"`
	NoSelfMasks bool                         `json:"no_self_masks,omitempty"`
}

// MarshalJSON writes the JSON form.
func (r *Recovery) MarshalJSON() ([]byte, error) {
	f := recoveryJSON{Clients: r.Clients, NoSelfMasks: r.NoSelfMasks}
	if len(r.Self) > 0 {
		f.Self = map[string]string{}
		for i, s := range r.Self {
			f.Self[strconv.Itoa(i)] = hex.EncodeToString(s[:])
		}
	}
	if len(r.Dropped) > 0 {
		f.Dropped = map[string]map[string]string{}
		for d, m := range r.Dropped {
			dm := map[string]string{}
			for i, s := range m {
				dm[strconv.Itoa(i)] = hex.EncodeToString(s[:])
			}
			f.Dropped[strconv.Itoa(d)] = dm
		}
	}
	return json.Marshal(f)
}

// UnmarshalJSON reads the JSON form; an unknown field, a key that is not a client ID or a seed
// that is not 64 hex digits is an error wrapping aggregate.ErrOption that names it.
func (r *Recovery) UnmarshalJSON(b []byte) error {
	var f recoveryJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return fmt.Errorf("%w: secure-sum recovery: %v", aggregate.ErrOption, err)
	}
	id := func(what, v string) (int, error) {
		n, err := strconv.Atoi(v)
		if err != nil {
			return 0, fmt.Errorf("%w: secure-sum recovery: %s %q is not a client ID", aggregate.ErrOption, what, v)
		}
		return n, nil
	}
	seed := func(what, h string) (Seed, error) {
		var s Seed
		b, err := hex.DecodeString(h)
		if err != nil || len(b) != len(s) {
			return s, fmt.Errorf("%w: secure-sum recovery: %s: want 64 hex digits (32 bytes)", aggregate.ErrOption, what)
		}
		copy(s[:], b)
		return s, nil
	}
	out := Recovery{Clients: f.Clients, Self: map[int]Seed{}, Dropped: map[int]map[int]Seed{}, NoSelfMasks: f.NoSelfMasks}
	for _, k := range slices.Sorted(maps.Keys(f.Self)) {
		i, err := id("self", k)
		if err != nil {
			return err
		}
		if out.Self[i], err = seed("self seed of client "+k, f.Self[k]); err != nil {
			return err
		}
	}
	for _, k := range slices.Sorted(maps.Keys(f.Dropped)) {
		d, err := id("dropped", k)
		if err != nil {
			return err
		}
		out.Dropped[d] = map[int]Seed{}
		for _, k2 := range slices.Sorted(maps.Keys(f.Dropped[k])) {
			i, err := id("survivor", k2)
			if err != nil {
				return err
			}
			if out.Dropped[d][i], err = seed(fmt.Sprintf("seed of clients %d and %d", d, i), f.Dropped[k][k2]); err != nil {
				return err
			}
		}
	}
	*r = out
	return nil
}
