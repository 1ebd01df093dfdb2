// Package gotune sets the Go runtime's knobs that decide whether a busy
// node still answers Raft in time: the garbage collector's target and
// memory limit, and how many Ps (GOMAXPROCS) run goroutines.
//
// # Why more Ps than CPUs
//
// Go runs a goroutine until it blocks or has run for 10 ms; a goroutine
// that a socket or a timer woke waits in a run queue behind the CPU-bound
// ones of its P. With as many Ps as CPUs, a node busy replicating or
// installing 100,000 SAs had every P running bulk work (the bulk lane
// bounds the SA work, not Raft's own decoding, TLS, log writes and the
// collector's assists), and a heartbeat's round trip — four such wake-ups
// — could wait out the 50 ms lease. With more Ps than CPUs the kernel
// time-slices the runtime's threads instead, in slices of about 3 ms, and
// a P is usually idle to poll the network and run what it wakes at once.
// The SA work still runs on no more Ps than the bulk lane admits (sized
// from the CPUs, see Report.CPUs and bulk.WorkersFor); Raft's own decoding and TLS may now run
// on more at once. Measured with `make bench-stability`
// (docs/performance.md, Stability under load): the spurious failovers of
// a 100,000-SA storm under busy loops went from every run to none.
//
// Environment variables win, as they do for Go itself: GOGC over
// GCPercent, GOMEMLIMIT over MemoryLimit, GOMAXPROCS over ProcsPerCPU.
package gotune

import (
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
)

// Options are the knobs. The zero value changes nothing.
type Options struct {
	// GCPercent is the collector's target (GOGC); 0 keeps Go's.
	GCPercent int
	// MemoryLimit is the soft memory limit in bytes; 0 sets none.
	MemoryLimit int64
	// ProcsPerCPU sets GOMAXPROCS to this many Ps per CPU the runtime
	// finds (its default GOMAXPROCS, which honours a cgroup CPU quota);
	// 0 or 1 keeps one per CPU. Setting it stops the runtime following
	// a quota that changes later.
	ProcsPerCPU int
}

// Report is what Apply set.
type Report struct {
	// CPUs is the runtime's default GOMAXPROCS (or the environment's,
	// at most the CPU count): the CPUs the process may use. Size
	// CPU-bound pools (the bulk lane) from it, not from GOMAXPROCS.
	CPUs int
	// Procs is GOMAXPROCS after Apply.
	Procs int
	// GC, Limit and ProcsFrom say where each setting came from.
	GC, Limit, ProcsFrom string
}

// Apply sets the runtime's knobs from o, unless the environment set them,
// and logs one line saying what took effect. It is meant for a process's
// start, before the goroutines that the settings concern run.
func Apply(log *slog.Logger, o Options) Report {
	rep := Report{GC: "Go's default", Limit: "none", ProcsFrom: "one per CPU"}
	switch {
	case os.Getenv("GOGC") != "":
		rep.GC = "GOGC from the environment"
	case o.GCPercent > 0:
		debug.SetGCPercent(o.GCPercent)
		rep.GC = strconv.Itoa(o.GCPercent)
	}
	switch {
	case os.Getenv("GOMEMLIMIT") != "":
		rep.Limit = "GOMEMLIMIT from the environment"
	case o.MemoryLimit > 0:
		debug.SetMemoryLimit(o.MemoryLimit)
		rep.Limit = strconv.FormatInt(o.MemoryLimit, 10) + " bytes"
	}
	if os.Getenv("GOMAXPROCS") != "" {
		rep.ProcsFrom = "GOMAXPROCS from the environment"
		rep.CPUs = min(runtime.GOMAXPROCS(0), runtime.NumCPU())
	} else {
		// From the runtime's own count, not the current setting: a second
		// Apply (tests, a restarted agent in one process) must not
		// multiply the first one's Ps again.
		runtime.SetDefaultGOMAXPROCS()
		rep.CPUs = runtime.GOMAXPROCS(0)
		if o.ProcsPerCPU > 1 {
			runtime.GOMAXPROCS(rep.CPUs * o.ProcsPerCPU)
			rep.ProcsFrom = strconv.Itoa(o.ProcsPerCPU) + " per CPU"
		}
	}
	rep.Procs = runtime.GOMAXPROCS(0)
	log.Info("go runtime tuned", "gc_percent", rep.GC, "memory_limit", rep.Limit,
		"cpus", rep.CPUs, "gomaxprocs", rep.Procs, "procs", rep.ProcsFrom)
	return rep
}
