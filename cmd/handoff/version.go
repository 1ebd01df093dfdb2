package main

import (
	"flag"
	"fmt"
	"io"

	"github.com/handoffvpn/handoff/internal/buildinfo"
)

// runVersion prints this binary's build: the same value the agent reports
// in /v1/status, its member entry and handoff_build_info.
func runVersion(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the build as JSON")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("usage: handoff version [-json]: unexpected argument %q", fs.Arg(0))}
	}
	bi := buildinfo.Read()
	if *asJSON {
		return printJSON(stdout, bi)
	}
	_, err := fmt.Fprintln(stdout, "handoff", bi)
	return err
}
