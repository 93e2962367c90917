package main

import (
	"os"
	"testing"

	"github.com/wattagg/wattagg/internal/clitest"
)

// TestMain lets the test binary act as the wattagg-server command, so that tests can run the
// server and its clients as processes and check real exit statuses and stderr.
func TestMain(m *testing.M) {
	clitest.Main(main)
	os.Exit(m.Run())
}

// wattagg runs a wattagg-server command (what `wattagg serve|push|pull ...` runs) and returns
// stdout, stderr and the exit status.
func wattagg(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	return clitest.Run(t, nil, args...)
}

var writeClient = clitest.WriteClient
