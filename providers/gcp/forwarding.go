package gcp

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"cloud.google.com/go/compute/apiv1/computepb"

	"github.com/handoffvpn/handoff/providers"
)

// Fencing labels on a forwarding rule. A claim first writes its intent
// (node, term, target instance) and keeps the holder it replaces as
// "prev", with the label fingerprint as compare-and-swap; then it moves the
// target. Owner believes whichever record matches the rule's actual target,
// so a claim that wrote its labels but failed to move reports the old
// holder, not itself.
const (
	labelNode       = "handoff-node"
	labelTerm       = "handoff-term"
	labelTarget     = "handoff-target"
	labelPrevNode   = "handoff-prev-node"
	labelPrevTerm   = "handoff-prev-term"
	labelPrevTarget = "handoff-prev-target"
)

type frFence struct {
	node, target         string
	term                 uint64
	prevNode, prevTarget string
	prevTerm             uint64
}

func readFence(labels map[string]string) frFence {
	f := frFence{node: labels[labelNode], target: labels[labelTarget], prevNode: labels[labelPrevNode], prevTarget: labels[labelPrevTarget]}
	f.term, _ = strconv.ParseUint(labels[labelTerm], 10, 64)
	f.prevTerm, _ = strconv.ParseUint(labels[labelPrevTerm], 10, 64)
	return f
}

// holder says who holds a rule whose target is the target instance named
// actual.
func (f frFence) holder(actual string) (string, uint64) {
	switch {
	case actual == "":
		return "", 0
	case f.node != "" && actual == f.target:
		return f.node, f.term
	case f.prevNode != "" && actual == f.prevTarget:
		return f.prevNode, f.prevTerm
	}
	return "", 0
}

// lastSegment is the name at the end of a resource URL.
func lastSegment(u string) string { return u[strings.LastIndexByte(u, '/')+1:] }

// ref strips a GCE URL to "projects/...", the form compared across calls.
func ref(u string) string {
	if i := strings.Index(u, "projects/"); i >= 0 {
		return u[i:]
	}
	return u
}

func (p *Provider) splitRegional(id string) (region, name string, err error) {
	region, name = p.region, id
	if i := strings.IndexByte(id, '/'); i >= 0 {
		region, name = id[:i], id[i+1:]
	}
	if !gceNameRE.MatchString(name) || !regionRE.MatchString(region) {
		return "", "", fmt.Errorf("forwarding rule ID %q: want \"name\" or \"region/name\"", id)
	}
	return region, name, nil
}

func (p *Provider) targetInstance() string {
	name := p.cfg.TargetInstance
	if name == "" {
		name = p.instance
	}
	return name
}

func (p *Provider) getForwardingRule(ctx context.Context, region, name string) (*computepb.ForwardingRule, error) {
	var fr *computepb.ForwardingRule
	err := p.read(ctx, "reading forwarding rule "+region+"/"+name, func(ctx context.Context) error {
		var err error
		fr, err = p.forwardingRules.Get(ctx, &computepb.GetForwardingRuleRequest{Project: p.project, Region: region, ForwardingRule: name}, noSDKRetry)
		return err
	})
	return fr, err
}

func (p *Provider) ownerForwardingRule(ctx context.Context, id string) (providers.Holder, error) {
	region, name, err := p.splitRegional(id)
	if err != nil {
		return providers.Holder{}, err
	}
	fr, err := p.getForwardingRule(ctx, region, name)
	if err != nil {
		return providers.Holder{}, err
	}
	node, term := readFence(fr.GetLabels()).holder(lastSegment(fr.GetTarget()))
	return providers.Holder{Node: node, Term: term, Target: ref(fr.GetTarget())}, nil
}

func (p *Provider) claimForwardingRule(ctx context.Context, term uint64, id string) error {
	region, name, err := p.splitRegional(id)
	if err != nil {
		return err
	}
	ti := p.targetInstance()
	want := "projects/" + p.project + "/zones/" + p.zone + "/targetInstances/" + ti
	for range conflictRounds {
		fr, err := p.getForwardingRule(ctx, region, name)
		if err != nil {
			return err
		}
		fence := readFence(fr.GetLabels())
		if fence.term > term || (fence.term == term && fence.node != p.node) {
			return staleTerm(fence.node, fence.term)
		}
		if fence.term != term || fence.target != ti {
			err := p.writeIntent(ctx, region, name, fr, fence, term, ti)
			if errors.Is(err, providers.ErrConflict) {
				continue // someone relabelled it: read again
			}
			if err != nil {
				return err
			}
		}
		if ref(fr.GetTarget()) != want {
			err := p.mutate(ctx, "pointing forwarding rule "+region+"/"+name+" at "+ti, scope{region: region},
				func(ctx context.Context, reqID string) (*computepb.Operation, error) {
					return opProto(p.forwardingRules.SetTarget(ctx, &computepb.SetTargetForwardingRuleRequest{
						Project: p.project, Region: region, ForwardingRule: name, RequestId: &reqID,
						TargetReferenceResource: &computepb.TargetReference{Target: &want},
					}, noSDKRetry))
				})
			if err != nil {
				return err
			}
		}
		// Verify: the rule points here and carries our term.
		fr, err = p.getForwardingRule(ctx, region, name)
		if err != nil {
			return err
		}
		fence = readFence(fr.GetLabels())
		if fence.term > term || (fence.term == term && fence.node != p.node) {
			return staleTerm(fence.node, fence.term)
		}
		if ref(fr.GetTarget()) == want && fence.node == p.node && fence.term == term {
			return nil
		}
	}
	return fmt.Errorf("%w: forwarding rule %s/%s changed under every one of %d attempts", providers.ErrConflict, region, name, conflictRounds)
}

// writeIntent records this node's claim in the rule's labels, keeping the
// current holder as prev, under the label fingerprint.
func (p *Provider) writeIntent(ctx context.Context, region, name string, fr *computepb.ForwardingRule, fence frFence, term uint64, ti string) error {
	labels := make(map[string]string, len(fr.GetLabels())+6)
	for k, v := range fr.GetLabels() {
		labels[k] = v
	}
	actual := lastSegment(fr.GetTarget())
	if hn, ht := fence.holder(actual); hn != "" && hn != p.node {
		labels[labelPrevNode], labels[labelPrevTerm], labels[labelPrevTarget] = hn, strconv.FormatUint(ht, 10), actual
	} else if hn != p.node {
		delete(labels, labelPrevNode)
		delete(labels, labelPrevTerm)
		delete(labels, labelPrevTarget)
	}
	labels[labelNode], labels[labelTerm], labels[labelTarget] = p.node, strconv.FormatUint(term, 10), ti
	fp := fr.GetLabelFingerprint()
	return p.mutate(ctx, "writing the fencing labels of forwarding rule "+region+"/"+name, scope{region: region},
		func(ctx context.Context, reqID string) (*computepb.Operation, error) {
			return opProto(p.forwardingRules.SetLabels(ctx, &computepb.SetLabelsForwardingRuleRequest{
				Project: p.project, Region: region, Resource: name, RequestId: &reqID,
				RegionSetLabelsRequestResource: &computepb.RegionSetLabelsRequest{Labels: labels, LabelFingerprint: &fp},
			}, noSDKRetry))
		})
}
