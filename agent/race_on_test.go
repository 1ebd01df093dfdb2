//go:build race

package agent_test

// raceEnabled: the race detector slows the code five to ten times, past
// the "twice as slow" the load tests are sized for.
const raceEnabled = true
