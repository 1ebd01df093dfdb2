package main

import (
	"context"
	"fmt"
	"time"

	"github.com/handoffvpn/handoff/internal/demo"
)

// demoProvider returns the demo's provider fixture; "memory" is nil (the
// demo's built-in memory cloud).
func demoProvider(name string, latency time.Duration) (func(context.Context, []string) (demo.Fixture, error), error) {
	switch name {
	case "memory":
		return nil, nil
	}
	return nil, usageError{fmt.Sprintf("demo: -provider %q is not memory, aws, gcp or azure", name)}
}
