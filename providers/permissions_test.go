package providers_test

import (
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/handoffvpn/handoff/providers/aws"
	"github.com/handoffvpn/handoff/providers/azure"
	"github.com/handoffvpn/handoff/providers/gcp"
)

// TestPermissionsTable keeps docs/providers.md equal to what the code calls.
func TestPermissionsTable(t *testing.T) {
	doc, err := os.ReadFile("../docs/providers.md")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{"aws": aws.Permissions(), "gcp": gcp.Permissions(), "azure": azure.Permissions()}
	seen := 0
	for _, line := range strings.Split(string(doc), "\n") {
		for name, perms := range want {
			if !strings.HasPrefix(line, "| ["+name+"](") {
				continue
			}
			seen++
			cell := strings.Split(line, "|")[2]
			var got []string
			for _, p := range strings.Split(cell, "<br>") {
				got = append(got, strings.Trim(strings.TrimSpace(p), "`"))
			}
			a, b := slices.Clone(perms), got
			slices.Sort(a)
			slices.Sort(b)
			if !slices.Equal(a, b) {
				t.Errorf("docs/providers.md lists for %s:\n%v\nthe code calls:\n%v", name, b, a)
			}
		}
	}
	if seen != len(want) {
		t.Fatalf("found %d provider rows in docs/providers.md, want %d", seen, len(want))
	}
}
