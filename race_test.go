//go:build race

package tiered

// raceEnabled widens latency bounds under the race detector, which slows every
// goroutine several times on a small machine.
const raceEnabled = true
