// Package profiling starts the CPU profiles the agent (`-cpuprofile`) and
// the performance driver write, so that both write them the same way.
package profiling

import (
	"fmt"
	"os"
	"runtime/pprof"
)

// StartCPU profiles the process into path (created 0600: a profile names
// the code and may carry addresses) until the returned stop is called.
func StartCPU(path string) (stop func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("creating the CPU profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting the CPU profile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}
