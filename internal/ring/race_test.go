//go:build race

package ring_test

// raceEnabled trims TestDistribution's matrix under the race detector, which slows
// its single-goroutine key loop about tenfold and finds nothing in it.
const raceEnabled = true
