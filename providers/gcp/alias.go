package gcp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"cloud.google.com/go/compute/apiv1/computepb"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/iterator"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/handoffvpn/handoff/providers"
)

// An alias IP range's fencing token is an instance label on the VM that
// claims it: key "handoff-alias-<cidr>", value "<term>_<node>". Instance
// metadata would also fit but is readable by every process on the VM and
// is not meant for control data; labels are API-only and have a
// fingerprint for compare-and-swap.
const aliasLabelPrefix = "handoff-alias-"

type aliasID struct {
	prefix    netip.Prefix
	rangeName string // subnet secondary range, "" for the primary range
}

func (a aliasID) String() string { return a.prefix.String() }

func (a aliasID) labelKey() string {
	return aliasLabelPrefix + strings.NewReplacer(".", "-", "/", "-").Replace(a.prefix.String())
}

func parseAliasID(id string) (aliasID, error) {
	var a aliasID
	cidr := id
	if strings.Count(id, "/") == 2 {
		i := strings.IndexByte(id, '/')
		a.rangeName, cidr = id[:i], id[i+1:]
		if !gceNameRE.MatchString(a.rangeName) {
			return a, fmt.Errorf("alias IP ID %q: %q is not a subnet range name", id, a.rangeName)
		}
	}
	pfx, err := netip.ParsePrefix(cidr)
	if err != nil || !pfx.Addr().Is4() || pfx.Masked() != pfx {
		return a, fmt.Errorf("alias IP ID %q: want an IPv4 CIDR such as 10.128.0.100/32, optionally after \"range-name/\"", id)
	}
	a.prefix = pfx
	return a, nil
}

func aliasLabelValue(term uint64, node string) string {
	return strconv.FormatUint(term, 10) + "_" + node
}

func parseAliasLabel(v string) (node string, term uint64) {
	t, n, ok := strings.Cut(v, "_")
	if !ok {
		return "", 0
	}
	term, err := strconv.ParseUint(t, 10, 64)
	if err != nil {
		return "", 0
	}
	return n, term
}

// hasAlias reports whether nic carries a.
func hasAlias(nic *computepb.NetworkInterface, a aliasID) bool {
	for _, r := range nic.GetAliasIpRanges() {
		if samePrefix(r.GetIpCidrRange(), a.prefix) {
			return true
		}
	}
	return false
}

func samePrefix(s string, want netip.Prefix) bool {
	if !strings.Contains(s, "/") {
		s += "/32"
	}
	p, err := netip.ParsePrefix(s)
	return err == nil && p.Masked() == want
}

// aliasView is what a claim or Owner needs to know about one alias range.
type aliasView struct {
	holder    *computepb.Instance
	holderNIC *computepb.NetworkInterface
	me        *computepb.Instance
	fenceNode string // the highest term any VM's label records
	fenceTerm uint64
}

func (p *Provider) aliasZones() []string {
	zones := slices.Clone(p.cfg.AliasZones)
	if !slices.Contains(zones, p.zone) {
		zones = append(zones, p.zone)
	}
	return zones
}

func (p *Provider) viewAlias(ctx context.Context, a aliasID) (aliasView, error) {
	var v aliasView
	key := a.labelKey()
	for _, zone := range p.aliasZones() {
		var list []*computepb.Instance
		err := p.read(ctx, "listing instances in "+zone, func(ctx context.Context) error {
			list = list[:0]
			it := p.instances.List(ctx, &computepb.ListInstancesRequest{Project: p.project, Zone: zone}, noSDKRetry)
			for {
				in, err := it.Next()
				if errors.Is(err, iterator.Done) {
					return nil
				}
				if err != nil {
					return err
				}
				list = append(list, in)
			}
		})
		if err != nil {
			return v, err
		}
		for _, in := range list {
			if zone == p.zone && in.GetName() == p.instance {
				v.me = in
			}
			if node, term := parseAliasLabel(in.GetLabels()[key]); term > v.fenceTerm {
				v.fenceNode, v.fenceTerm = node, term
			}
			for _, nic := range in.GetNetworkInterfaces() {
				if hasAlias(nic, a) {
					v.holder, v.holderNIC = in, nic
				}
			}
		}
	}
	return v, nil
}

func (p *Provider) instanceRef(in *computepb.Instance) string {
	if sl := ref(in.GetSelfLink()); strings.HasPrefix(sl, "projects/") {
		return sl
	}
	return "projects/" + p.project + "/zones/" + lastSegment(in.GetZone()) + "/instances/" + in.GetName()
}

func (p *Provider) ownerAlias(ctx context.Context, id string) (providers.Holder, error) {
	a, err := parseAliasID(id)
	if err != nil {
		return providers.Holder{}, err
	}
	v, err := p.viewAlias(ctx, a)
	if err != nil || v.holder == nil {
		return providers.Holder{}, err
	}
	node, term := parseAliasLabel(v.holder.GetLabels()[a.labelKey()])
	return providers.Holder{Node: node, Term: term, Target: p.instanceRef(v.holder)}, nil
}

func (p *Provider) claimAlias(ctx context.Context, term uint64, id string) error {
	a, err := parseAliasID(id)
	if err != nil {
		return err
	}
	key, val := a.labelKey(), aliasLabelValue(term, p.node)
	for range conflictRounds {
		v, err := p.viewAlias(ctx, a)
		if err != nil {
			return err
		}
		if v.fenceTerm > term || (v.fenceTerm == term && v.fenceNode != p.node) {
			return staleTerm(v.fenceNode, v.fenceTerm)
		}
		if v.me == nil {
			return fmt.Errorf("%w: this node's instance %s is not in zone %s", providers.ErrNotFound, p.instance, p.zone)
		}
		myNIC := nicNamed(v.me, p.cfg.NetworkInterface)
		if myNIC == nil {
			return fmt.Errorf("%w: instance %s has no network interface %s", providers.ErrNotFound, p.instance, p.cfg.NetworkInterface)
		}
		// 1. The fencing token on this VM, before anything moves.
		if v.me.GetLabels()[key] != val {
			labels := make(map[string]string, len(v.me.GetLabels())+1)
			for k, lv := range v.me.GetLabels() {
				labels[k] = lv
			}
			labels[key] = val
			err := p.setInstanceLabels(ctx, v.me, labels)
			if errors.Is(err, providers.ErrConflict) {
				continue
			}
			if err != nil {
				return err
			}
		}
		mine := v.holder != nil && v.holder.GetName() == v.me.GetName() && v.holder.GetZone() == v.me.GetZone()
		if v.holder != nil && !mine {
			// 2. Off the old VM. GCE refuses a range that another NIC
			// still carries (IP_IN_USE_BY_ANOTHER_RESOURCE), so for alias
			// ranges the removal has to come first: see docs/providers/gcp.md.
			keep := slices.DeleteFunc(slices.Clone(v.holderNIC.GetAliasIpRanges()), func(r *computepb.AliasIpRange) bool {
				return samePrefix(r.GetIpCidrRange(), a.prefix)
			})
			err := p.setAliases(ctx, v.holder, v.holderNIC, keep, "removing alias "+a.String()+" from "+v.holder.GetName())
			if errors.Is(err, providers.ErrConflict) || errors.Is(err, providers.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
		}
		if !mine {
			// 3. Onto this VM.
			r := &computepb.AliasIpRange{IpCidrRange: ptr(a.prefix.String())}
			if a.rangeName != "" {
				r.SubnetworkRangeName = ptr(a.rangeName)
			}
			ranges := append(slices.Clone(myNIC.GetAliasIpRanges()), r)
			err := p.setAliases(ctx, v.me, myNIC, ranges, "adding alias "+a.String()+" to "+v.me.GetName())
			if errors.Is(err, providers.ErrConflict) {
				continue
			}
			if err != nil {
				return err
			}
		}
		// 4. Verify on this VM.
		var me *computepb.Instance
		err = p.read(ctx, "reading instance "+p.instance, func(ctx context.Context) error {
			var err error
			me, err = p.instances.Get(ctx, &computepb.GetInstanceRequest{Project: p.project, Zone: p.zone, Instance: p.instance}, noSDKRetry)
			return err
		})
		if err != nil {
			return err
		}
		if nic := nicNamed(me, p.cfg.NetworkInterface); nic != nil && hasAlias(nic, a) && me.GetLabels()[key] == val {
			return nil
		}
	}
	return fmt.Errorf("%w: alias %s changed under every one of %d attempts", providers.ErrConflict, a, conflictRounds)
}

func nicNamed(in *computepb.Instance, name string) *computepb.NetworkInterface {
	for _, n := range in.GetNetworkInterfaces() {
		if n.GetName() == name {
			return n
		}
	}
	return nil
}

func ptr[T any](v T) *T { return &v }

func (p *Provider) setInstanceLabels(ctx context.Context, in *computepb.Instance, labels map[string]string) error {
	zone, fp := lastSegment(in.GetZone()), in.GetLabelFingerprint()
	return p.mutate(ctx, "writing the fencing label of instance "+in.GetName(), scope{zone: zone},
		func(ctx context.Context, reqID string) (*computepb.Operation, error) {
			return opProto(p.instances.SetLabels(ctx, &computepb.SetLabelsInstanceRequest{
				Project: p.project, Zone: zone, Instance: in.GetName(), RequestId: &reqID,
				InstancesSetLabelsRequestResource: &computepb.InstancesSetLabelsRequest{Labels: labels, LabelFingerprint: &fp},
			}, noSDKRetry))
		})
}

// setAliases replaces a NIC's alias ranges, compare-and-swap on the NIC
// fingerprint: a stale fingerprint comes back as ErrConflict and the claim
// reads again.
func (p *Provider) setAliases(ctx context.Context, in *computepb.Instance, nic *computepb.NetworkInterface, ranges []*computepb.AliasIpRange, what string) error {
	zone, fp := lastSegment(in.GetZone()), nic.GetFingerprint()
	return p.mutate(ctx, what, scope{zone: zone}, func(ctx context.Context, reqID string) (*computepb.Operation, error) {
		if len(ranges) == 0 {
			return p.clearAliases(ctx, zone, in.GetName(), nic.GetName(), fp, reqID)
		}
		return opProto(p.instances.UpdateNetworkInterface(ctx, &computepb.UpdateNetworkInterfaceInstanceRequest{
			Project: p.project, Zone: zone, Instance: in.GetName(), NetworkInterface: nic.GetName(), RequestId: &reqID,
			NetworkInterfaceResource: &computepb.NetworkInterface{Fingerprint: &fp, AliasIpRanges: ranges},
		}, noSDKRetry))
	})
}

// clearAliases removes a NIC's last alias range. updateNetworkInterface has
// PATCH semantics and the SDK's protojson drops an empty list, so through
// the SDK "no ranges" reads as "ranges unchanged" and the range stays
// (googleapis/google-cloud-python#11931 is the same trap). This one call
// is therefore sent by hand, with "aliasIpRanges": [] spelled out, over
// the same authenticated HTTP client.
func (p *Provider) clearAliases(ctx context.Context, zone, instance, nic, fp, reqID string) (*computepb.Operation, error) {
	body, err := json.Marshal(map[string]any{"fingerprint": fp, "aliasIpRanges": []any{}})
	if err != nil {
		return nil, err
	}
	u := p.rawEndpoint + "/compute/v1/projects/" + url.PathEscape(p.project) + "/zones/" + url.PathEscape(zone) +
		"/instances/" + url.PathEscape(instance) + "/updateNetworkInterface?" +
		url.Values{"networkInterface": {nic}, "requestId": {reqID}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPatch, u, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.raw.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	buf, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if err := googleapi.CheckResponseWithBody(resp, buf); err != nil {
		return nil, err
	}
	op := &computepb.Operation{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(buf, op); err != nil {
		return nil, fmt.Errorf("decoding the operation of updateNetworkInterface: %w", err)
	}
	return op, nil
}
