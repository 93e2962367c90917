package aggregate

// Metadata keys wattagg reads from updates and writes to results and state files.
const (
	// NumExamplesKey is the key whose value is an update's default weight (the number of
	// examples the client trained on), as Flower and the FedAvg paper weight clients. A result
	// whose weights came from it carries their total under the same key.
	NumExamplesKey = "num_examples"
	// UpdateKindKey says what a client file holds: "model" (the default) or "delta". Rules that
	// take a global model take full client models and subtract the global model themselves; a
	// file marked "delta" is an ErrUpdateKind error rather than a model silently taken for a
	// step.
	UpdateKindKey = "wattagg.update"
	// RuleKey names the rule (or composition, "dp-fixed,fedadam") that made a result or state.
	RuleKey = "wattagg.rule"
	// ClientsKey is the number of clients a result aggregates.
	ClientsKey = "wattagg.clients"
	// ExcludedKey is the number of clients a robust rule left out (NaN or Inf updates).
	ExcludedKey = "wattagg.excluded"
	// RoundKey is the round number of a stateful rule's result or state.
	RoundKey = "wattagg.round"
	// StateKindKey and StateVersionKey identify a rule's state file.
	StateKindKey    = "wattagg.state"
	StateVersionKey = "wattagg.state_version"
)

// Values of UpdateKindKey.
const (
	UpdateModel = "model"
	UpdateDelta = "delta"
)
