package linux

import (
	"strings"
	"testing"
	"time"
)

// TestSkipQuery is the decision a claim takes before its owner query: skip
// it only for a holder known gone (by the caller for this term, or by the
// kernel's neighbour entry), and ask whenever a holder that is not known
// gone may answer.
func TestSkipQuery(t *testing.T) {
	const (
		macA, macB, macC = "52:54:00:00:00:0a", "52:54:00:00:00:0b", "52:54:00:00:00:0c"
		stranger         = "52:54:00:00:00:ff"
		term             = uint64(5)
		probe            = 300 * time.Millisecond
	)
	peers := map[string]string{macA: "a", macB: "b", macC: "c"}
	none := neighEntry{}
	valid := func(mac string) neighEntry { return neighEntry{state: neighValid, mac: mac, age: time.Second} }
	for _, c := range []struct {
		name  string
		decl  goneDecl
		neigh neighEntry
		peers map[string]string
		skip  string // a word the reason must contain; "" = ask
	}{
		{name: "nothing known: ask", neigh: none},
		{name: "entry FAILED", neigh: neighEntry{state: neighFailed}, skip: "FAILED"},
		{name: "entry FAILED, holder declared alive", decl: newGoneDecl(term, "b", nil), neigh: neighEntry{state: neighFailed}, skip: "FAILED"},
		{name: "entry INCOMPLETE for less than the probe timeout", neigh: neighEntry{state: neighIncomplete, age: probe / 3}},
		{name: "entry INCOMPLETE for the probe timeout", neigh: neighEntry{state: neighIncomplete, age: probe}, skip: "INCOMPLETE"},
		{name: "entry resolved, no declaration", neigh: valid(macB)},

		{name: "previous holder declared gone", decl: newGoneDecl(term, "b", []string{"b"}), neigh: none, skip: "b is known gone"},
		{name: "declaration for another term", decl: newGoneDecl(term-1, "b", []string{"b"}), neigh: none},
		{name: "declaration for a later term", decl: newGoneDecl(term+1, "b", []string{"b"}), neigh: none},
		{name: "planned hand-over: previous holder alive", decl: newGoneDecl(term, "b", nil), neigh: none},
		{name: "another node gone, previous holder alive", decl: newGoneDecl(term, "b", []string{"c"}), neigh: none},
		{name: "no previous holder", decl: newGoneDecl(term, "", []string{"b"}), neigh: none},
		{name: "previous holder is this node", decl: newGoneDecl(term, "a", []string{"a"}), neigh: none},
		{name: "young INCOMPLETE entry, holder declared gone", decl: newGoneDecl(term, "b", []string{"b"}), neigh: neighEntry{state: neighIncomplete}, skip: "b is known gone"},

		{name: "VIP resolves to the gone holder", decl: newGoneDecl(term, "b", []string{"b"}), neigh: valid(macB), skip: "resolves to its MAC"},
		{name: "VIP resolves to a live peer: the segment overrules the caller", decl: newGoneDecl(term, "b", []string{"b"}), neigh: valid(macC)},
		{name: "VIP resolves to a gone peer the caller did not name as previous", decl: newGoneDecl(term, "c", []string{"b", "c"}), neigh: valid(macB), skip: "holder b"},
		{name: "VIP resolves to a live peer, caller's holder gone", decl: newGoneDecl(term, "c", []string{"c"}), neigh: valid(macB)},
		{name: "VIP resolves to an unknown MAC with peers configured", decl: newGoneDecl(term, "b", []string{"b"}), neigh: valid(stranger)},
		{name: "VIP resolves to a MAC, no peers to name it", decl: newGoneDecl(term, "b", []string{"b"}), neigh: valid(stranger), peers: map[string]string{}, skip: "previous holder"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := peers
			if c.peers != nil {
				p = c.peers
			}
			why := skipQuery("a", term, c.decl, c.neigh, p, probe)
			switch {
			case c.skip == "" && why != "":
				t.Errorf("skipQuery = %q, want to ask", why)
			case c.skip != "" && !strings.Contains(why, c.skip):
				t.Errorf("skipQuery = %q, want a skip saying %q", why, c.skip)
			}
		})
	}
}
