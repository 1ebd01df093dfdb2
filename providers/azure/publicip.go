package azure

import (
	"context"
	"fmt"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v7"
	"golang.org/x/sync/errgroup"

	"github.com/handoffvpn/handoff/providers"
)

func (p *Provider) publicIPRef(r providers.Resource) (armID, error) {
	id, err := parseTopLevel(r.ID, "publicIPAddresses")
	if err == nil {
		id, err = id.resolve(p.self.subscription, p.self.resourceGroup)
	}
	if err != nil {
		return armID{}, fmt.Errorf("public IP %q: %w", r.ID, err)
	}
	return id, nil
}

// attachedTo is the ipConfiguration a public IP is attached to, or "".
func attachedTo(pip armnetwork.PublicIPAddress) string {
	if pip.Properties == nil || pip.Properties.IPConfiguration == nil {
		return ""
	}
	return deref(pip.Properties.IPConfiguration.ID)
}

func (p *Provider) getPublicIP(ctx context.Context, id armID) (armnetwork.PublicIPAddress, error) {
	resp, err := p.pips.Get(ctx, id.rg, id.name, nil)
	if err != nil {
		return armnetwork.PublicIPAddress{}, fmt.Errorf("reading public IP %s: %w", publicIPID(id.sub, id.rg, id.name), translate(err))
	}
	return resp.PublicIPAddress, nil
}

func (p *Provider) getNIC(ctx context.Context, id armID) (armnetwork.Interface, error) {
	resp, err := p.nics.Get(ctx, id.rg, id.name, nil)
	if err != nil {
		return armnetwork.Interface{}, fmt.Errorf("reading network interface %s: %w", nicID(id.sub, id.rg, id.name), translate(err))
	}
	return resp.Interface, nil
}

func (p *Provider) publicIPOwner(ctx context.Context, r providers.Resource) (providers.Holder, error) {
	id, err := p.publicIPRef(r)
	if err != nil {
		return providers.Holder{}, err
	}
	pip, err := p.getPublicIP(ctx, id)
	if err != nil {
		return providers.Holder{}, err
	}
	f, err := readFence(pip.Tags)
	if err != nil {
		return providers.Holder{}, fmt.Errorf("public IP %s: %w", publicIPID(id.sub, id.rg, id.name), err)
	}
	return f.holder(attachedTo(pip)), nil
}

func ipConfig(nic armnetwork.Interface, name string) *armnetwork.InterfaceIPConfiguration {
	if nic.Properties == nil {
		return nil
	}
	for _, c := range nic.Properties.IPConfigurations {
		if c != nil && strings.EqualFold(deref(c.Name), name) {
			return c
		}
	}
	return nil
}

// claimPublicIP moves a public IP to this node's ipConfiguration.
func (p *Provider) claimPublicIP(ctx context.Context, term uint64, id armID) error {
	pid := publicIPID(id.sub, id.rg, id.name)
	err := p.retry(ctx, "claiming public IP "+pid, func(ctx context.Context) error {
		return p.claimPublicIPOnce(ctx, term, id, pid)
	})
	if err != nil {
		return fmt.Errorf("moving public IP %s to %s: %w", pid, p.self.ipConfigID, err)
	}
	return nil
}

// claimPublicIPOnce is one pass of a public IP move. Azure refuses a public
// IP referenced by two ipConfigurations, so the move is: detach from the old
// NIC, wait for that operation, attach to ours. To keep the window without
// an owner to those two writes, everything else comes first:
//
//  1. read the public IP and our NIC (in parallel); check the fence;
//  2. dry-read permissions on the public IP, our NIC and the old NIC, and
//     read the old NIC (in parallel): a permission error here can never
//     leave the address detached;
//  3. write the fence tags on the public IP (If-Match): a lower-term claimer
//     that has not yet written its own stops at its next tag write;
//  4. detach (old NIC, If-Match), poll to completion;
//  5. attach (our NIC, If-Match, body built in step 1), poll;
//  6. verify: read the public IP back.
//
// A lost ETag race anywhere returns ErrConflict and the caller starts a new
// pass from step 1, which skips what is already done.
func (p *Provider) claimPublicIPOnce(ctx context.Context, term uint64, id armID, pid string) error {
	target := p.self.ipConfigID
	var (
		pip  armnetwork.PublicIPAddress
		mine armnetwork.Interface
	)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() (err error) { pip, err = p.getPublicIP(gctx, id); return err })
	g.Go(func() (err error) { mine, err = p.getNIC(gctx, p.self.nic); return err })
	if err := g.Wait(); err != nil {
		return err
	}
	f, err := readFence(pip.Tags)
	if err != nil {
		return fmt.Errorf("public IP %s: %w", pid, err)
	}
	if err := f.check(p.node, term, "public IP "+pid); err != nil {
		return err
	}
	holder := attachedTo(pip)
	if strings.EqualFold(holder, target) && f.is(p.node, term, target) {
		return nil // the read is the verification
	}
	pipID := deref(pip.ID)
	if pipID == "" {
		pipID = pid
	}
	myCfg := ipConfig(mine, p.self.ipConfig)
	if myCfg == nil || myCfg.Properties == nil {
		return fmt.Errorf("network interface %s has no ipConfiguration %q", p.self.nicID, p.self.ipConfig)
	}
	if other := myCfg.Properties.PublicIPAddress; other != nil && other.ID != nil && !strings.EqualFold(*other.ID, pipID) {
		return fmt.Errorf("ipConfiguration %s already holds public IP %s: use another ip_configuration", target, *other.ID)
	}

	// Where it sits now: another NIC to detach from, or an ipConfiguration
	// of ours that one write can move it from.
	var (
		oldRef armID
		oldCfg string
		old    armnetwork.Interface
		remote bool
	)
	if holder != "" && !strings.EqualFold(holder, target) {
		if oldRef, oldCfg, err = nicOfIPConfig(holder); err != nil {
			return err
		}
		remote = !strings.EqualFold(nicID(oldRef.sub, oldRef.rg, oldRef.name), p.self.nicID)
		if remote && !strings.EqualFold(oldRef.sub, p.self.subscription) {
			return fmt.Errorf("public IP is attached to %s in another subscription", holder)
		}
	}
	g, gctx = errgroup.WithContext(ctx)
	g.Go(func() error { return p.requireActions(gctx, pipID, actPIPWrite, actPIPJoin) })
	g.Go(func() error { return p.requireActions(gctx, p.self.nicID, actNICWrite, actSubnetJoin) })
	if remote {
		oldID := nicID(oldRef.sub, oldRef.rg, oldRef.name)
		g.Go(func() error { return p.requireActions(gctx, oldID, actNICWrite, actSubnetJoin) })
		g.Go(func() (err error) { old, err = p.getNIC(gctx, oldRef); return err })
	}
	if err := g.Wait(); err != nil {
		return err
	}

	if !f.is(p.node, term, target) {
		// If-Match: the address is still where step 1 saw it, and a
		// concurrent claimer's fence has not landed in between.
		_, err := p.pips.UpdateTags(withIfMatch(ctx, deref(pip.Etag)), id.rg, id.name,
			armnetwork.TagsObject{Tags: withFence(pip.Tags, p.node, term, target)}, nil)
		if err != nil {
			return fmt.Errorf("writing fencing tags on public IP %s: %w", pid, translate(err))
		}
	}

	detached := false
	if remote {
		oldCfgRef := ipConfig(old, oldCfg)
		if oldCfgRef != nil && oldCfgRef.Properties != nil && oldCfgRef.Properties.PublicIPAddress != nil &&
			strings.EqualFold(deref(oldCfgRef.Properties.PublicIPAddress.ID), pipID) {
			oldCfgRef.Properties.PublicIPAddress = nil
			if err := p.putNIC(ctx, oldRef, old, deref(old.Etag)); err != nil {
				return fmt.Errorf("detaching from %s: %w", holder, err)
			}
			detached = true
			p.log.Info("public IP detached", "public_ip", pid, "from", holder, "term", term)
		}
	}

	if !strings.EqualFold(holder, target) {
		if holder != "" && !remote {
			if c := ipConfig(mine, oldCfg); c != nil && c.Properties != nil {
				c.Properties.PublicIPAddress = nil
			}
		}
		myCfg.Properties.PublicIPAddress = &armnetwork.PublicIPAddress{ID: &pipID}
		if err := p.putNIC(ctx, p.self.nic, mine, deref(mine.Etag)); err != nil {
			if detached {
				return fmt.Errorf("detached from %s but attaching to %s failed, the address has no owner until a claim succeeds: %w", holder, target, err)
			}
			return fmt.Errorf("attaching to %s: %w", target, err)
		}
		p.log.Info("public IP attached", "public_ip", pid, "to", target, "term", term)
	}

	got, err := p.getPublicIP(ctx, id)
	if err != nil {
		return fmt.Errorf("verifying: %w", err)
	}
	vf, err := readFence(got.Tags)
	if err != nil {
		return fmt.Errorf("public IP %s: %w", pid, err)
	}
	if err := vf.check(p.node, term, "public IP "+pid); err != nil {
		return err
	}
	if at := attachedTo(got); !strings.EqualFold(at, target) || !vf.is(p.node, term, target) {
		return fmt.Errorf("public IP %s is attached to %q, fenced for node %q at term %d after the move: %w",
			pid, at, vf.node, vf.term, providers.ErrConflict)
	}
	return nil
}

// putNIC writes a NIC, conditional on ifMatch, and waits for the operation.
func (p *Provider) putNIC(ctx context.Context, id armID, nic armnetwork.Interface, ifMatch string) error {
	poller, err := p.nics.BeginCreateOrUpdate(withIfMatch(ctx, ifMatch), id.rg, id.name, nic, nil)
	if err != nil {
		return translate(err)
	}
	_, err = poll(ctx, p, poller)
	return err
}
