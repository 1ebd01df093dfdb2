// Package buildinfo says which build of Handoff is running: the version
// `make build` stamps into the binary, or else the module version and the
// VCS revision the Go toolchain records, so that a rolling upgrade can be
// followed node by node (handoff version, /v1/status, members, and the
// handoff_build_info metric all read it here).
package buildinfo

import (
	"runtime"
	"runtime/debug"
)

// stamped is set at link time by `make build`:
//
//	-ldflags "-X github.com/handoffvpn/handoff/internal/buildinfo.stamped=v1.2.3"
//
// It is the only way to give a binary built from a work tree a release
// name; the linker writes it, nothing assigns it at run time.
var stamped string

// Dev is the version of a build that carries no version at all (go run,
// go test, a build outside version control).
const Dev = "dev"

// Info describes one build.
type Info struct {
	// Version is the stamped version, else the main module's version
	// (a tag, or a pseudo-version the toolchain derived from VCS), else Dev.
	Version string `json:"version"`
	// Revision is the VCS commit the binary was built from, "" if unknown.
	Revision string `json:"revision,omitempty"`
	// Modified is true when the work tree had uncommitted changes.
	Modified  bool   `json:"modified,omitempty"`
	GoVersion string `json:"go_version"`
}

// Read returns this binary's build information.
func Read() Info {
	return read(stamped, debug.ReadBuildInfo)
}

func read(stamp string, readBuild func() (*debug.BuildInfo, bool)) Info {
	in := Info{Version: stamp, GoVersion: runtime.Version()}
	bi, ok := readBuild()
	if ok {
		if bi.GoVersion != "" {
			in.GoVersion = bi.GoVersion
		}
		if in.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			in.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				in.Revision = s.Value
			case "vcs.modified":
				in.Modified = s.Value == "true"
			}
		}
	}
	if in.Version == "" {
		in.Version = Dev
	}
	return in
}

// String is the one-line form `handoff version` prints.
func (in Info) String() string {
	s := in.Version
	if in.Revision != "" {
		rev := in.Revision
		if len(rev) > 12 {
			rev = rev[:12]
		}
		s += " (" + rev
		if in.Modified {
			s += ", modified"
		}
		s += ")"
	}
	return s + " " + in.GoVersion
}
