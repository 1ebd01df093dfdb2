package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
)

// TestEveryVerbHelpExitsZero: `VERB -h` (and -help, --help) prints the
// verb's usage on stdout and succeeds (exit status 0) for every verb and
// sub-verb; it used to print "flag: help requested" and exit 2, and tls
// and operator raft refused -h. A bad flag is still a usage error.
func TestEveryVerbHelpExitsZero(t *testing.T) {
	verbs := [][]string{
		{"demo"}, {"agent"}, {"validate"}, {"emulator"}, {"keygen"}, {"version"},
		{"tls"}, {"tls", "ca"}, {"tls", "cert"}, {"tls", "show"},
		{"status"}, {"members"}, {"history"}, {"sa"}, {"sa", "ls"}, {"promote"}, {"drain"},
		{"operator"}, {"operator", "raft"}, {"operator", "raft", "list-peers"}, {"operator", "raft", "remove-peer"},
		{"operator", "raft", "transfer-leadership"}, {"snapshot"}, {"snapshot", "save"}, {"snapshot", "restore"},
	}
	for _, v := range verbs {
		for _, h := range []string{"-h", "-help", "--help"} {
			args := append(append([]string(nil), v...), h)
			var out, errOut bytes.Buffer
			err := run(context.Background(), args, &out, &errOut)
			if err != nil {
				t.Errorf("handoff %s: %v, want success", strings.Join(args, " "), err)
				continue
			}
			if !strings.HasPrefix(out.String(), "usage: handoff "+v[0]) || errOut.Len() != 0 {
				t.Errorf("handoff %s: stdout %q, stderr %q; want the usage on stdout", strings.Join(args, " "), out.String(), errOut.String())
			}
		}
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"promote", "-h"}, &out, &out); err != nil || !strings.Contains(out.String(), "usage: handoff promote NODE") ||
		!strings.Contains(out.String(), "-addr") || !strings.Contains(out.String(), "-wait") {
		t.Errorf("promote -h: %v\n%s", err, out.String())
	}
	err := run(context.Background(), []string{"status", "-nope"}, &out, &out)
	var ue usageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "-nope") || !strings.Contains(err.Error(), "handoff status -h") {
		t.Errorf("status -nope: %v, want a usage error pointing at -h", err)
	}
}
