package cli

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/wattagg/wattagg/aggregate/secagg"
)

// ReadRecovery reads a secure-sum recovery's JSON file (secagg.Recovery's form), for
// `wattagg aggregate --secagg-recovery` and `wattagg round recovery`. What is wrong with the
// file's contents is an input error (exit status 1), named with the file.
func ReadRecovery(path string) (*secagg.Recovery, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var rec secagg.Recovery
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return &rec, nil
}
