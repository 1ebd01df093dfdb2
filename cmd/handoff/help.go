package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
)

// Help the way the tools operators know do it: `VERB -h` (or -help,
// --help) prints the verb's usage on stdout and exits 0; a mistake prints
// what was wrong on stderr, says where the usage is, and exits 2.

// synopses are the verbs' argument forms, for their usage lines.
var synopses = map[string]string{
	"agent":                             "agent -config FILE [flags]",
	"validate":                          "validate -config FILE [flags]",
	"demo":                              "demo [flags]",
	"emulator":                          "emulator [flags]",
	"keygen":                            "keygen [-out FILE] [-force]",
	"version":                           "version [-json]",
	"tls ca":                            "tls ca [flags]",
	"tls cert":                          "tls cert -node ID [flags]",
	"tls show":                          "tls show CERT.pem...",
	"status":                            "status [flags]",
	"members":                           "members [flags]",
	"history":                           "history [flags]",
	"sa ls":                             "sa ls [-limit N] [-peer ADDR|ID] [-ike NAME] [flags]",
	"promote":                           "promote NODE [flags]",
	"drain":                             "drain [flags]",
	"operator raft list-peers":          "operator raft list-peers [flags]",
	"operator raft remove-peer":         "operator raft remove-peer NODE [flags]",
	"operator raft transfer-leadership": "operator raft transfer-leadership [NODE] [flags]",
	"snapshot save":                     "snapshot save FILE [flags]",
	"snapshot restore":                  "snapshot restore FILE [flags]",
}

// groups are the verbs that only choose a sub-verb.
var groups = map[string]string{
	"tls":           "usage: handoff tls ca|cert|show [flags]\n\n  ca    create a cluster CA (ca.pem, ca-key.pem)\n  cert  issue a node certificate from the CA\n  show  print a certificate's node ID, serial (for tls.deny_serials), expiry, fingerprint\n",
	"sa":            "usage: handoff sa ls [flags]\n\n  ls    the replicated SAs: IDs, SPIs, peers, algorithms (no keys)\n",
	"operator":      "usage: handoff operator raft list-peers | remove-peer NODE | transfer-leadership [NODE]\n",
	"operator raft": "usage: handoff operator raft list-peers | remove-peer NODE | transfer-leadership [NODE]\n\n  list-peers           the Raft configuration\n  remove-peer NODE     remove NODE from the Raft configuration and the members\n  transfer-leadership  hand Raft leadership to NODE, or to the voter Raft picks\n",
	"snapshot":      "usage: handoff snapshot save FILE | restore FILE\n",
}

func isHelp(arg string) bool {
	return arg == "-h" || arg == "-help" || arg == "--help" || arg == "help"
}

// groupHelp prints a group's usage when args ask for it, and reports
// whether they did.
func groupHelp(group string, args []string, stdout io.Writer) bool {
	if len(args) == 0 || !isHelp(args[0]) {
		return false
	}
	fmt.Fprint(stdout, groups[group])
	return true
}

// parseFlags parses args into fs (whose name is the verb, as in synopses).
// On -h it prints the usage to stdout and returns flag.ErrHelp, which run
// turns into exit status 0; a bad flag is a usageError.
func parseFlags(fs *flag.FlagSet, args []string, stdout io.Writer) error {
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		printUsage(fs, stdout)
		return flag.ErrHelp
	}
	if err != nil {
		return usageError{fmt.Sprintf("handoff %s: %v (handoff %s -h lists the flags)", fs.Name(), err, fs.Name())}
	}
	return nil
}

func printUsage(fs *flag.FlagSet, w io.Writer) {
	syn := synopses[fs.Name()]
	if syn == "" {
		syn = fs.Name() + " [flags]"
	}
	fmt.Fprintf(w, "usage: handoff %s\n\nflags:\n", syn)
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}
