//go:build !race

package tiered

const raceEnabled = false
