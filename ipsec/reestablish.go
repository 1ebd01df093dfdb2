package ipsec

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/handoffvpn/handoff/ipsec/sa"
	"github.com/handoffvpn/handoff/ipsec/vici"
	"github.com/handoffvpn/handoff/ipsec/xfrm"
)

// ReestablishConfig configures Reestablish.
type ReestablishConfig struct {
	// Template is the body of the gateway's connection as swanctl.conf
	// has it, as nested maps (the VICI load-conn form): version,
	// proposals, local and remote auth sections, children with their
	// esp_proposals, and so on. Reestablish derives one connection per
	// peer from it. Without a template Reestablish is a no-op.
	Template map[string]any
	// Timeout bounds one peer's IKE_SA_INIT/IKE_AUTH exchange (default 10s).
	Timeout time.Duration
	// Parallel is how many peers are contacted at once (default 16).
	Parallel int
	// ConnPrefix names the per-peer connections (default "handoff-peer-").
	ConnPrefix string
	// MakeBeforeBreak suppresses INITIAL_CONTACT (the per-peer connection
	// gets unique = never): the peer keeps its old IKE SA and CHILD_SAs
	// next to the new ones instead of deleting them before it installs the
	// new ones, so no packet falls into the switch. The old IKE SA then
	// dies at the peer's next DPD or rekey on it (its dpd_action decides
	// what follows, typically a restart that adds one more IKE SA), and
	// the installed copies of the old inbound states are kept RetireDelay
	// (default 30s) for packets the peer still sends on them.
	MakeBeforeBreak bool
	RetireDelay     time.Duration
}

func (c *ReestablishConfig) defaults() {
	if c.Timeout <= 0 {
		c.Timeout = 10 * time.Second
	}
	if c.Parallel <= 0 {
		c.Parallel = 16
	}
	if c.ConnPrefix == "" {
		c.ConnPrefix = "handoff-peer-"
	}
	if c.RetireDelay <= 0 {
		c.RetireDelay = 30 * time.Second
	}
}

// peer is one IKE SA to re-establish and the CHILD_SAs it carried.
type peer struct {
	ike      sa.IKE
	children []*sa.ChildSA
}

// Reestablish rebuilds, after a takeover, an IKE SA to every peer of sas:
// this node carries their CHILD_SAs but has no IKE SA with them (charon
// cannot export IKE keys), so a peer's next DPD or rekey would go
// unanswered and it would tear the tunnel down. For each peer it loads a
// connection derived from the template with the peer's address (and NAT
// port) as remote, its identities, and the CHILD_SAs' traffic selectors,
// and initiates every CHILD_SA of it. charon sends INITIAL_CONTACT (it has
// no IKE SA with that peer), so the peer replaces its old IKE SA and the
// old CHILD_SAs with the new ones at once. Once a peer's new CHILD_SAs are
// up, the installed copies of its old ones are deleted from the kernel
// (the peer has deleted its side) along with policies that no state backs.
//
// It returns an error naming every peer it could not reach; those keep
// their installed CHILD_SAs (and the old second-outage behaviour on their
// next DPD).
func (d *Dataplane) Reestablish(ctx context.Context, sas []*sa.ChildSA) error {
	rc := d.cfg.Reestablish
	if rc.Template == nil {
		d.log.Info("ipsec: no connection template; IKE SAs not re-established", "sas", len(sas))
		return nil
	}
	peers := groupPeers(sas)
	sem := make(chan struct{}, rc.Parallel)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		done []*peer
	)
	for _, p := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				mu.Lock()
				errs = append(errs, fmt.Errorf("peer %s: %w", p.ike.Remote, ctx.Err()))
				mu.Unlock()
				return
			}
			err := d.reestablishPeer(ctx, p)
			<-sem
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			done = append(done, p)
		}()
	}
	wg.Wait()
	if len(done) > 0 {
		if err := d.retireInstalled(ctx, done); err != nil {
			errs = append(errs, err)
		}
	}
	d.log.Info("ipsec: IKE SAs re-established", "peers", len(peers), "ok", len(done), "failed", len(peers)-len(done))
	return errors.Join(errs...)
}

// groupPeers groups CHILD_SAs by the IKE SA that carried them, identified
// by the peer's endpoint and identities (unique IDs differ between nodes).
func groupPeers(sas []*sa.ChildSA) []*peer {
	byKey := map[string]*peer{}
	var keys []string
	for _, c := range sas {
		k := fmt.Sprintf("%s|%s|%s|%s", c.IKE.Name, c.IKE.Remote, c.IKE.LocalID, c.IKE.RemoteID)
		p, ok := byKey[k]
		if !ok {
			p = &peer{ike: c.IKE}
			byKey[k] = p
			keys = append(keys, k)
		}
		p.children = append(p.children, c)
	}
	sort.Strings(keys)
	out := make([]*peer, len(keys))
	for i, k := range keys {
		out[i] = byKey[k]
	}
	return out
}

// ConnName returns the name of the connection loaded for one peer.
func ConnName(prefix string, ike sa.IKE) string {
	r := strings.NewReplacer(":", "_", "[", "", "]", "")
	return prefix + r.Replace(ike.Remote.String())
}

func (d *Dataplane) reestablishPeer(ctx context.Context, p *peer) error {
	rc := d.cfg.Reestablish
	name := ConnName(rc.ConnPrefix, p.ike)
	children := make([]sa.Child, 0, len(p.children))
	for _, c := range p.children {
		children = append(children, c.Child)
	}
	body, err := PeerConnection(rc.Template, p.ike, children)
	if err != nil {
		return fmt.Errorf("peer %s: %w", p.ike.Remote, err)
	}
	if rc.MakeBeforeBreak {
		body["unique"] = "never" // charon then sends no INITIAL_CONTACT
	}
	if err := d.vici.LoadConn(ctx, name, body); err != nil {
		return fmt.Errorf("peer %s: %w", p.ike.Remote, err)
	}
	seen := map[string]bool{}
	for _, c := range children {
		if seen[c.Name] {
			continue
		}
		seen[c.Name] = true
		ictx, cancel := context.WithTimeout(ctx, rc.Timeout)
		start := time.Now()
		err := d.vici.Initiate(ictx, vici.InitiateRequest{Child: c.Name, IKE: name})
		cancel()
		if err != nil {
			return fmt.Errorf("peer %s: initiating CHILD_SA %s: %w", p.ike.Remote, c.Name, err)
		}
		d.log.Info("ipsec: re-established", "peer", p.ike.Remote.String(), "conn", name, "child", c.Name, "took", time.Since(start))
	}
	return nil
}

// retireInstalled retires the installed copies of the re-established
// peers' old CHILD_SAs. The outbound copy goes at once (charon's new
// CHILD_SA took the policy over). With INITIAL_CONTACT the peer deleted its
// side, so the inbound copy goes too; in make-before-break mode the peer
// may still send on it until its old IKE SA dies, so it goes RetireDelay
// later (see retireDue).
func (d *Dataplane) retireInstalled(ctx context.Context, peers []*peer) error {
	var errs []error
	var now []*installedSA
	at := time.Now().Add(d.cfg.Reestablish.RetireDelay)
	for _, p := range peers {
		for _, c := range p.children {
			d.mu.Lock()
			ins, ok := d.installed[c.ID]
			if ok && d.cfg.Reestablish.MakeBeforeBreak {
				ins.retireAt = at
			} else if ok {
				delete(d.installed, c.ID)
			}
			d.mu.Unlock()
			if !ok {
				continue
			}
			if err := d.x.Delete(ctx, ins.out); err != nil {
				errs = append(errs, err)
			}
			if !d.cfg.Reestablish.MakeBeforeBreak {
				now = append(now, ins)
			}
		}
	}
	if err := d.removeInbound(ctx, now); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// retireDue removes the inbound copies whose retirement delay is over.
// Export, Watch's resyncs and Replay call it, so it needs no goroutine.
func (d *Dataplane) retireDue(ctx context.Context) error {
	now := time.Now()
	var due []*installedSA
	d.mu.Lock()
	for id, ins := range d.installed {
		if !ins.retireAt.IsZero() && now.After(ins.retireAt) {
			due = append(due, ins)
			delete(d.installed, id)
		}
	}
	d.mu.Unlock()
	return d.removeInbound(ctx, due)
}

// removeInbound deletes the inbound states of retired copies, then every
// policy of theirs that no longer leads to a state.
func (d *Dataplane) removeInbound(ctx context.Context, retired []*installedSA) error {
	if len(retired) == 0 {
		return nil
	}
	var errs []error
	for _, ins := range retired {
		if err := d.x.Delete(ctx, ins.in); err != nil {
			errs = append(errs, err)
		}
	}
	states, err := d.x.States(ctx)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	pols, err := d.x.Policies(ctx)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	type stKey struct {
		dst   netip.Addr
		proto uint8
		reqid uint32
	}
	backed := map[stKey]bool{}
	for _, s := range states {
		backed[stKey{s.Dst, s.Proto, s.Reqid}] = true
	}
	current := map[string]*xfrm.Policy{}
	for _, p := range pols {
		current[policyID(&p.Policy)] = p
	}
	for _, ins := range retired {
		for i := range ins.sa.Policies {
			kp, ok := current[policyID(&ins.sa.Policies[i])]
			if !ok {
				continue
			}
			alive := false
			for _, t := range kp.Templates {
				if backed[stKey{t.Dst, t.Proto, t.Reqid}] {
					alive = true
				}
			}
			if !alive {
				if err := d.x.DeletePolicy(ctx, &kp.Policy); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	return errors.Join(errs...)
}

func policyID(p *sa.Policy) string {
	m := ""
	if p.Mark != nil {
		m = fmt.Sprintf("%x/%x", p.Mark.Value, p.Mark.Mask)
	}
	return fmt.Sprintf("%d|%s|%s|%d|%d|%d|%s|%d", p.Dir, p.Selector.Src, p.Selector.Dst, p.Selector.Proto, p.Selector.SrcPort, p.Selector.DstPort, m, p.IfID)
}

// PeerConnection derives the connection that reaches one peer from the
// gateway's connection template:
//
//   - local_addrs and remote_addrs are the IKE SA's endpoints; when the
//     peer sat behind a NAT (its IKE port is not 500) remote_port is that
//     port and local_port the local one (4500), so the exchange starts on
//     the NAT-T ports straight into the peer's existing NAT mapping;
//   - the id of every local* and remote* auth section is the IKE SA's
//     identity unless the template sets one;
//   - one child per CHILD_SA name, from the template's child of that name
//     (or its only child), with the CHILD_SA's negotiated traffic
//     selectors and start_action none;
//   - keyingtries 1 unless the template sets it: a peer that cannot be
//     reached is reported, not retried forever.
func PeerConnection(template map[string]any, ike sa.IKE, children []sa.Child) (map[string]any, error) {
	if !ike.Remote.IsValid() || !ike.Local.IsValid() {
		return nil, errors.New("IKE SA without local and remote endpoints")
	}
	body := deepCopy(template)
	body["local_addrs"] = []string{ike.Local.Addr().String()}
	body["remote_addrs"] = []string{ike.Remote.Addr().String()}
	if ike.Remote.Port() != 0 && ike.Remote.Port() != 500 {
		body["remote_port"] = int(ike.Remote.Port())
		if ike.Local.Port() != 0 {
			body["local_port"] = int(ike.Local.Port())
		}
	}
	if _, ok := body["keyingtries"]; !ok {
		body["keyingtries"] = 1
	}
	hasLocal, hasRemote := false, false
	for k, v := range body {
		sec, ok := v.(map[string]any)
		if !ok {
			continue
		}
		switch {
		case strings.HasPrefix(k, "local"):
			hasLocal = true
			if _, set := sec["id"]; !set && ike.LocalID != "" {
				sec["id"] = ike.LocalID
			}
		case strings.HasPrefix(k, "remote"):
			hasRemote = true
			if _, set := sec["id"]; !set && ike.RemoteID != "" {
				sec["id"] = ike.RemoteID
			}
		}
	}
	if !hasLocal || !hasRemote {
		return nil, errors.New("connection template lacks a local or remote auth section")
	}
	tmplChildren, _ := body["children"].(map[string]any)
	out := map[string]any{}
	for _, c := range children {
		var base map[string]any
		if tc, ok := tmplChildren[c.Name].(map[string]any); ok {
			base = tc
		} else if len(tmplChildren) == 1 {
			for _, v := range tmplChildren {
				base, _ = v.(map[string]any)
			}
		}
		if base == nil {
			return nil, fmt.Errorf("connection template has no child %q", c.Name)
		}
		child := deepCopy(base)
		if len(c.LocalTS) > 0 {
			child["local_ts"] = append([]string(nil), c.LocalTS...)
		}
		if len(c.RemoteTS) > 0 {
			child["remote_ts"] = append([]string(nil), c.RemoteTS...)
		}
		child["start_action"] = "none"
		out[c.Name] = child
	}
	if len(out) == 0 {
		return nil, errors.New("no CHILD_SA to re-establish")
	}
	body["children"] = out
	return body, nil
}

func deepCopy(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		switch x := v.(type) {
		case map[string]any:
			out[k] = deepCopy(x)
		case []string:
			out[k] = append([]string(nil), x...)
		case []any:
			out[k] = append([]any(nil), x...)
		default:
			out[k] = v
		}
	}
	return out
}
