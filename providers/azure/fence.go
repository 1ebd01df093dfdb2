package azure

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/handoffvpn/handoff/providers"
)

// Fencing tags, written on the route table and on the public IP.
const (
	// TagTerm carries the Raft term of the last claim (the fencing token).
	TagTerm = "handoff-term"
	// TagNode carries the Handoff node ID of the last claim.
	TagNode = "handoff-node"
	// TagTarget carries where that claim pointed the resource (next-hop IP
	// of a route table's routes, ipConfiguration ID of a public IP), so
	// Owner can tell a completed claim from one that never finished or
	// was overridden by hand.
	TagTarget = "handoff-target"
)

// fence is the claim recorded in a resource's tags.
type fence struct {
	node   string
	term   uint64
	target string
}

func readFence(tags map[string]*string) (fence, error) {
	var f fence
	f.node = deref(tags[TagNode])
	f.target = deref(tags[TagTarget])
	if t := deref(tags[TagTerm]); t != "" {
		n, err := strconv.ParseUint(t, 10, 64)
		if err != nil {
			// A tag Handoff cannot read could hide a higher term: refuse
			// rather than guess, and say which tag to fix.
			return fence{}, fmt.Errorf("fencing tag %s=%q is not a term number: fix or remove it", TagTerm, t)
		}
		f.term = n
	}
	return f, nil
}

// check refuses a claim at term when the resource carries a higher term,
// or the same term for another node (two leaders in one term cannot be:
// refuse rather than flap).
func (f fence) check(node string, term uint64, what string) error {
	if f.term > term {
		return fmt.Errorf("%s carries term %d of node %q, the claim is at term %d: %w", what, f.term, f.node, term, providers.ErrStaleTerm)
	}
	if f.term == term && f.node != "" && f.node != node {
		return fmt.Errorf("%s was claimed at term %d by node %q: %w", what, term, f.node, providers.ErrStaleTerm)
	}
	return nil
}

// is reports whether the fence already records node's claim at term to target.
func (f fence) is(node string, term uint64, target string) bool {
	return f.node == node && f.term == term && strings.EqualFold(f.target, target)
}

// holder reports who holds a resource that points at actual: the fence's
// node when the fence points there too, nobody Handoff knows otherwise.
func (f fence) holder(actual string) providers.Holder {
	h := providers.Holder{Term: f.term, Target: actual}
	if actual != "" && strings.EqualFold(f.target, actual) {
		h.Node = f.node
	}
	return h
}

// withFence returns tags with the fence of node's claim set, keeping every
// other tag (PATCH replaces the whole set).
func withFence(tags map[string]*string, node string, term uint64, target string) map[string]*string {
	out := make(map[string]*string, len(tags)+3)
	for k, v := range tags {
		out[k] = v
	}
	t := strconv.FormatUint(term, 10)
	out[TagTerm], out[TagNode], out[TagTarget] = &t, &node, &target
	return out
}
