package aws

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/handoffvpn/handoff/providers"
)

// Fencing tags. An Elastic IP carries its claim as three tags on the
// allocation, readable in the console and usable in filters
// (tag:handoff:node=gw1). Routes cannot carry tags, so a route table
// carries one tag per managed destination, the whole record in one value
// so a table stays within EC2's 50 tags per resource.
const (
	tagTerm        = "handoff:term"
	tagNode        = "handoff:node"
	tagENI         = "handoff:eni"
	routeTagPrefix = "handoff:route:"
)

// fence is the claim record written on a resource: who claimed it, under
// which Raft term, and which network interface that node moved it to (so
// Owner can tell a resource someone moved by hand from one Handoff holds).
type fence struct {
	term uint64
	node string
	eni  string
}

// eipFence reads an allocation's fencing tags. A missing or unreadable term
// counts as no claim (term 0): an operator's stray edit must not block
// every future failover.
func eipFence(tags []types.Tag) fence {
	var f fence
	for _, t := range tags {
		v := strings.TrimSpace(deref(t.Value))
		switch deref(t.Key) {
		case tagTerm:
			f.term, _ = strconv.ParseUint(v, 10, 64)
		case tagNode:
			f.node = v
		case tagENI:
			f.eni = v
		}
	}
	if f.term == 0 {
		return fence{}
	}
	return f
}

func (f fence) eipTags() []types.Tag {
	return []types.Tag{
		{Key: ptr(tagTerm), Value: ptr(strconv.FormatUint(f.term, 10))},
		{Key: ptr(tagNode), Value: ptr(f.node)},
		{Key: ptr(tagENI), Value: ptr(f.eni)},
	}
}

func routeTagKey(dest netip.Prefix) string { return routeTagPrefix + dest.String() }

// routeValue encodes a route's record as "term=7 node=gw1 eni=eni-0abc".
func (f fence) routeValue() string {
	return fmt.Sprintf("term=%d node=%s eni=%s", f.term, f.node, f.eni)
}

// routeFence reads the record of one destination from its table's tags.
func routeFence(tags []types.Tag, dest netip.Prefix) fence {
	key := routeTagKey(dest)
	for _, t := range tags {
		if deref(t.Key) != key {
			continue
		}
		var f fence
		for _, field := range strings.Fields(deref(t.Value)) {
			k, v, _ := strings.Cut(field, "=")
			switch k {
			case "term":
				f.term, _ = strconv.ParseUint(v, 10, 64)
			case "node":
				f.node = v
			case "eni":
				f.eni = v
			}
		}
		if f.term == 0 {
			return fence{}
		}
		return f
	}
	return fence{}
}

// holder turns a record and where the resource really points into an
// Owner answer: the node counts only when the resource still points at
// the interface that node moved it to.
func (f fence) holder(target, targetENI string) providers.Holder {
	h := providers.Holder{Term: f.term, Target: target}
	if targetENI != "" && targetENI == f.eni {
		h.Node = f.node
	}
	return h
}

func ptr[T any](v T) *T { return &v }

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
