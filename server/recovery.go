package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/wattagg/wattagg/aggregate/secagg"
	"github.com/wattagg/wattagg/server/api"
)

// Secure-sum rounds (rule "secagg", Bonawitz et al., 2017). Clients push masked, quantised u32
// updates, which the round adds modulo 2^32 like any other sum; no update is ever seen in the
// clear. The masks that did not cancel — every survivor's self mask, and the masks survivors
// added toward clients that dropped out — are removed with seeds the server learns only after
// the updates are in (the protocol's unmasking round, whose key agreement and secret sharing
// are not the server's business): an admin PUTs them as the round's recovery, in
// secagg.Recovery's JSON form. The recovery is written to the round's directory, so that it
// survives a restart, and may be replaced until the round closes. A close checks it against
// the updates acknowledged: a recovery that does not unmask exactly them is refused, with what
// is missing, and the round stays open for a corrected one; a round without a recovery does
// not close (at its deadline it fails). A round that is full closes once its recovery comes.

// recoveryFile is a secure-sum round's recovery in its directory.
const recoveryFile = "recovery.json"

// errNoRecovery is a secure-sum round's close before its recovery was given.
var errNoRecovery = errors.New("no recovery yet")

// SetRecovery stores the recovery of round n, an open secure-sum round (admin), replacing an
// earlier one, and returns the round's status. A round that is full was waiting for it and
// closes now: an error then is the close's (the recovery stays stored, to be replaced).
func (s *Server) SetRecovery(ctx context.Context, n int, rec *secagg.Recovery) (api.Round, error) {
	r, err := s.round(n)
	if err != nil {
		return api.Round{}, err
	}
	full, err := r.setRecovery(rec)
	if err != nil {
		return api.Round{}, err
	}
	if full {
		// The committer may have closed it already with this recovery (a full round tries
		// after each commit): closed is what was asked for.
		if err := r.requestClose(ctx, closeFull); err != nil && !(errors.Is(err, ErrRoundClosed) && r.state() == api.StateClosed) {
			return api.Round{}, err
		}
	}
	return r.status(false), nil
}

// setRecovery writes rec to the round's directory and reports whether the round is full.
func (r *round) setRecovery(rec *secagg.Recovery) (full bool, err error) {
	if rec == nil {
		return false, fmt.Errorf("%w: no recovery", ErrBadRequest)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.openLocked(); err != nil {
		return false, err
	}
	if r.agg == nil || r.agg.sec == nil {
		return false, fmt.Errorf("%w: round %d's rule %s takes no recovery: only a secure sum (secagg) does", ErrConflict, r.n, r.meta.Rule)
	}
	if err := writeJSONAtomic(filepath.Join(r.dir, recoveryFile), rec); err != nil {
		return false, err
	}
	r.logger.Info("secure-sum recovery stored", "clients", len(rec.Clients), "dropped", len(rec.Dropped))
	return len(r.records) >= r.meta.MaxClients, nil
}

// recoveryState is "stored" once the round's recovery is in its directory, else "waiting".
func (r *round) recoveryState() string {
	if exists(filepath.Join(r.dir, recoveryFile)) {
		return "stored"
	}
	return "waiting"
}

// unmask gives the round's secure sum its recovery, checked against the updates in it; r.mu is
// held and the committer is the caller, so no update is added meanwhile. Its error says why the
// round cannot close (a close wraps it in ErrConflict; at the deadline it is the failure's
// reason), or wraps ErrCorrupt for a recovery file that cannot be read back.
func (r *round) unmask(sec *secagg.Sum) error {
	path := filepath.Join(r.dir, recoveryFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("round %d is a secure sum with %d updates: PUT the seeds of its unmasking round to /v1/rounds/%d/recovery first (%w)",
			r.n, len(r.records), r.n, errNoRecovery)
	}
	if err != nil {
		return err
	}
	var rec secagg.Recovery
	if err := json.Unmarshal(b, &rec); err != nil {
		return fmt.Errorf("%w: round %d: %s: %v", ErrCorrupt, r.n, path, err)
	}
	if err := sec.Recover(&rec); err != nil {
		return fmt.Errorf("round %d: the recovery does not unmask its %d updates: %v", r.n, len(r.records), err)
	}
	return nil
}
