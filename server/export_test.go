package server

// For the tests of package server_test (crash_test.go).
var (
	SecaggSeeds  = secaggSeeds
	MaskedUpdate = maskedUpdate
)
