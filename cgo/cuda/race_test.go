//go:build race

package cuda

// raceEnabled: the race detector slows the tests' Go references ten times; see gpus.
const raceEnabled = true
