package aggregate

import "errors"

// Sentinel errors of the round engine and the rules. Errors about tensors wrap the tensor
// package's sentinels (tensor.ErrLayoutMismatch, tensor.ErrNonFinite, tensor.ErrDType), errors
// about devices the device package's.
var (
	// ErrNoInputs reports a round closed without an update to aggregate.
	ErrNoInputs = errors.New("no updates to aggregate")
	// ErrWeight reports a weight a rule cannot use (zero, negative, NaN, infinite, unequal
	// where the rule counts every client once).
	ErrWeight = errors.New("invalid weight")
	// ErrOption reports an option or rule parameter out of range, or one the rule cannot use.
	ErrOption = errors.New("invalid option")
	// ErrOverflow reports a result that does not fit its dtype although every input is finite.
	ErrOverflow = errors.New("overflow")
	// ErrClosed reports a use of a round (or rule) after Close, or an Add after the round was
	// closed into its result.
	ErrClosed = errors.New("round closed")
	// ErrDuplicate reports an update given twice to one round (the same file, or the same
	// client).
	ErrDuplicate = errors.New("duplicate update")
	// ErrTooFewClients reports a round with fewer usable clients than the rule's parameters
	// need (Krum: n > 2f+2; Bulyan: n >= 4f+3), counting only the clients left after those with
	// non-finite updates were excluded.
	ErrTooFewClients = errors.New("too few clients")
	// ErrUpdateKind reports a client file marked as a delta where full models are expected.
	ErrUpdateKind = errors.New("update kind mismatch")
	// ErrState reports a state file (optimizer moments, privacy accounting) that does not belong
	// to the rule: another rule, other hyperparameters, another model, or corrupt.
	ErrState = errors.New("invalid rule state")
)
