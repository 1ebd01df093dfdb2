package linux

import (
	"fmt"
	"time"
)

// A holder known to be gone. A claim's owner query goes to the VIP, and
// when whoever holds the VIP is dead it waits out ProbeTimeout for an
// answer that cannot come: about a third of the outage of every kill in
// the kernel lab. The query exists to refuse a live holder's higher term
// and to find a live old holder to tell to yield; a gone holder has
// neither to offer, so the claim need not ask it. The rules are here,
// free of netlink, so that they are tested on any machine; gone_linux.go
// gathers the evidence.

// goneDecl is a caller's declaration (providers.GoneAware) for the claims
// at one term.
type goneDecl struct {
	term     uint64
	previous string          // the node that held the VIPs before, per the caller
	gone     map[string]bool // nodes that hold nothing and answer for nothing
}

func newGoneDecl(term uint64, previous string, gone []string) goneDecl {
	d := goneDecl{term: term, previous: previous, gone: make(map[string]bool, len(gone))}
	for _, n := range gone {
		d.gone[n] = true
	}
	return d
}

// neighState is what the kernel's neighbour entry for a VIP says about who
// answers for it on the segment.
type neighState int

const (
	neighNone       neighState = iota // no entry, or one that says nothing (NONE, NOARP)
	neighValid                        // resolved to a MAC: REACHABLE, STALE, DELAY, PROBE, PERMANENT
	neighIncomplete                   // resolution under way, unanswered so far
	neighFailed                       // resolution gave up: nobody answered
)

// neighEntry is the kernel's neighbour entry for a VIP on the claim's
// interface.
type neighEntry struct {
	state neighState
	mac   string        // for neighValid, in net.HardwareAddr's form (the peers keys)
	age   time.Duration // since the entry entered its state
}

// skipQuery decides whether a claim at term may take a VIP without asking
// the segment who holds it. It returns why (for the log), or "" when the
// claim must ask, as it always did. It skips when:
//
//   - The kernel's entry for the VIP is FAILED: the kernel asked the
//     segment for the VIP and nobody answered, and nobody has announced it
//     since (a gratuitous ARP or unsolicited NA updates an existing entry,
//     whatever its state, and every claim announces). The query would go
//     unanswered too.
//   - The entry has been INCOMPLETE for at least probeTimeout: the kernel
//     has been asking for as long as the query would wait. A younger one
//     is only a resolution in progress (possibly the last query's own).
//   - The caller declared the holder gone for this term. The holder is the
//     node the VIP resolves to when the kernel has a valid entry and peers
//     names its MAC (the segment's view: a STALE or REACHABLE entry is
//     where the query would go); otherwise the caller's previous holder.
//     A valid entry with a MAC that none of the configured peers has is an
//     unknown host answering for the VIP: the claim asks.
//
// Nothing here overrides the term records: a claim still refuses a term
// it has on record (check), before any of this.
func skipQuery(self string, term uint64, d goneDecl, n neighEntry, peers map[string]string, probeTimeout time.Duration) string {
	switch {
	case n.state == neighFailed:
		return "the kernel's neighbour entry for the VIP is FAILED: nobody answered for it, and nobody has announced it since"
	case n.state == neighIncomplete && n.age >= probeTimeout:
		return fmt.Sprintf("the kernel's neighbour entry for the VIP has been INCOMPLETE for %v: nobody answers for it", n.age)
	}
	if d.term != term || len(d.gone) == 0 {
		return ""
	}
	holder, by := d.previous, "the previous holder"
	if n.state == neighValid {
		node, ok := peers[n.mac]
		if !ok && len(peers) > 0 {
			return "" // a host none of the peers is answers for the VIP: ask it
		}
		if ok {
			holder, by = node, "the VIP resolves to its MAC "+n.mac
		}
	}
	if holder == "" || holder == self || !d.gone[holder] {
		return ""
	}
	return fmt.Sprintf("holder %s is known gone (%s)", holder, by)
}
