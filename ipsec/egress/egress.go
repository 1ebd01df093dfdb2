// Package egress keeps a standby gateway from sending ESP. With IKE
// continuity a standby's charon holds every carried CHILD_SA installed,
// outbound states included, their sequence numbers starting at 0 under
// keys the active is using: one packet the standby encrypted (its own
// traffic into a protected network, a forwarded one) would reuse a
// (key, sequence number) pair, which for AES-GCM is nonce reuse. The
// fence is an nftables table that drops what would carry such a packet:
// ESP, and ESP in UDP from port 4500 (a datagram whose first four bytes
// are not the zero non-ESP marker of IKE). It hooks the output path, not
// postrouting: the kernel passes a packet it has just transformed
// (locally sent or forwarded alike) through the output hook again, while
// postrouting skips it (net/xfrm/xfrm_output.c, xfrm_output_resume). It is up while the node is a standby and lifted at a takeover
// only after the outbound sequence numbers were jumped.
package egress

import (
	"errors"
	"fmt"
	"os"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Table is the nftables table of the fence (family inet).
const Table = "handoff_egress"

// natTPort is the NAT-T port ESP in UDP leaves from.
const natTPort = 4500

// Fence raises and lifts the egress fence in one network namespace.
type Fence struct {
	nsFD int // -1: the caller's namespace
}

// New returns a fence for the network namespace open at nsFD, or for the
// caller's with nsFD < 0.
func New(nsFD int) *Fence { return &Fence{nsFD: nsFD} }

func (f *Fence) conn() (*nftables.Conn, error) {
	var opts []nftables.ConnOption
	if f.nsFD >= 0 {
		opts = append(opts, nftables.WithNetNSFd(f.nsFD))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("opening nftables: %w", err)
	}
	return c, nil
}

var table = &nftables.Table{Name: Table, Family: nftables.TableFamilyINet}

// ErrUnsupported: the kernel's nf_tables has no inet family (Debian's
// user-mode-linux kernel, the lab guest, is built so). The standby then
// relies on its agent deleting the outbound states charon installs.
var ErrUnsupported = errors.New("nftables inet tables are not supported by this kernel")

// Block raises the fence (again: it replaces a table left from before, in
// one transaction, so there is no moment without it).
func (f *Fence) Block() error {
	c, err := f.conn()
	if err != nil {
		return err
	}
	defer c.CloseLasting()
	if up, err := f.blocked(c); err != nil {
		return err
	} else if up {
		c.DelTable(table)
	}
	c.AddTable(table)
	accept := nftables.ChainPolicyAccept
	chain := c.AddChain(&nftables.Chain{
		Name: "output", Table: table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	})
	// ESP.
	c.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ESP}},
		&expr.Counter{},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}})
	// ESP in UDP: source port 4500 and a non-zero first word (an SPI; IKE
	// has four zero bytes there, a NAT keepalive is one byte and fails
	// the four-byte load, so neither matches).
	c.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(natTPort)},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 8, Len: 4},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
		&expr.Counter{},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}})
	if err := c.Flush(); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) {
			err = fmt.Errorf("%w: %w", ErrUnsupported, err)
		}
		return fmt.Errorf("raising the ESP egress fence (nftables table inet %s): %w", Table, err)
	}
	return nil
}

// Lift removes the fence; lifting a fence that is not up is no error.
func (f *Fence) Lift() error {
	c, err := f.conn()
	if err != nil {
		return err
	}
	defer c.CloseLasting()
	up, err := f.blocked(c)
	if err != nil || !up {
		return err
	}
	c.DelTable(table)
	if err := c.Flush(); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("lifting the ESP egress fence (nftables table inet %s): %w", Table, err)
	}
	return nil
}

// Blocked reports whether the fence is up.
func (f *Fence) Blocked() (bool, error) {
	c, err := f.conn()
	if err != nil {
		return false, err
	}
	defer c.CloseLasting()
	return f.blocked(c)
}

func (f *Fence) blocked(c *nftables.Conn) (bool, error) {
	_, err := c.ListTableOfFamily(Table, nftables.TableFamilyINet)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.ENOENT), errors.Is(err, os.ErrNotExist):
		return false, nil
	}
	return false, fmt.Errorf("reading nftables table inet %s: %w", Table, err)
}
