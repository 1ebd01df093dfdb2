package azure

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v7"

	"github.com/handoffvpn/handoff/providers"
	"github.com/handoffvpn/handoff/providers/emulator"
)

// TestAzurePublicIPMoveOrder moves the public IP from a to b with NIC
// writes that take 40 ms and checks, from the emulator's record of who held
// it: detach from a, then attach to b, nothing in between, and the window
// without an owner is the two operations (not the reads, permission checks
// and fencing, which come before the detach).
func TestAzurePublicIPMoveOrder(t *testing.T) {
	fx := newFixture(t, "a", "b")
	b := mustProvider(t, fx, "b")
	const opTime = 40 * time.Millisecond
	fx.Emulator.Azure.SetOperationDuration(opTime)
	start := time.Now()
	if err := b.Claim(testCtx(t), 4, []providers.Resource{fx.PublicIP}); err != nil {
		t.Fatalf("claim: %v", err)
	}
	var moves []emulator.AzureEvent
	for _, e := range fx.Emulator.Azure.Events() {
		if strings.EqualFold(e.Resource, fx.PublicIPID) && !e.At.Before(start) {
			moves = append(moves, e)
		}
	}
	if len(moves) != 2 || moves[0].Kind != "detach" || moves[1].Kind != "attach" ||
		!strings.EqualFold(moves[0].Target, fx.Nodes["a"].IPConfigurationID) ||
		!strings.EqualFold(moves[1].Target, fx.Nodes["b"].IPConfigurationID) {
		t.Fatalf("public IP moves = %+v, want detach from a then attach to b", moves)
	}
	window := moves[1].At.Sub(moves[0].At)
	if window < 2*opTime {
		t.Fatalf("no-owner window %v is shorter than the two %v operations: the attach did not wait for the detach", window, opTime)
	}
	t.Logf("no-owner window %v with %v NIC operations; claim took %v", window, opTime, time.Since(start))
	if ipc, tags, _ := fx.Emulator.Azure.PublicIPAttachment(fx.PublicIPID); !strings.EqualFold(ipc, fx.Nodes["b"].IPConfigurationID) ||
		tags[TagNode] != "b" || tags[TagTerm] != "4" {
		t.Fatalf("public IP on %s with tags %v, want b's ipConfiguration fenced b/4", ipc, tags)
	}
}

// TestAzurePublicIPPermissionPrecheck denies, one at a time, each write a
// move needs; the dry permission read must catch it before anything is
// detached or tagged.
func TestAzurePublicIPPermissionPrecheck(t *testing.T) {
	for _, deny := range []struct{ name, op, resource string }{
		{"write on the new NIC", opNICWrite, "gw-b-nic"},
		{"write on the old NIC", opNICWrite, "gw-a-nic"},
		{"join on the public IP", "Microsoft.Network/publicIPAddresses/join/action", "handoff-vip"},
		{"join on the subnet", "Microsoft.Network/virtualNetworks/subnets/join/action", "handoff-vnet/gateways"},
		{"tags on the public IP", "Microsoft.Network/publicIPAddresses/write", "handoff-vip"},
	} {
		t.Run(deny.name, func(t *testing.T) {
			fx := newFixture(t, "a", "b")
			b := mustProvider(t, fx, "b")
			g := fx.Emulator.Gate()
			g.Inject(emulator.Fault{Kind: emulator.PermissionDenied, Cloud: "azure", Op: deny.op, Resource: deny.resource})
			err := b.Claim(testCtx(t), 4, []providers.Resource{fx.PublicIP})
			if !errors.Is(err, providers.ErrPermission) || !strings.Contains(err.Error(), deny.op) {
				t.Fatalf("claim: %v, want ErrPermission naming %s", err, deny.op)
			}
			for _, op := range []string{opNICWrite, "Microsoft.Network/publicIPAddresses/write"} {
				if n := g.Calls("azure", op); n != 0 {
					t.Errorf("%s called %d times: the move started despite the missing permission", op, n)
				}
			}
			if ipc, tags, _ := fx.Emulator.Azure.PublicIPAttachment(fx.PublicIPID); !strings.EqualFold(ipc, fx.Nodes["a"].IPConfigurationID) || len(tags) != 0 {
				t.Fatalf("public IP on %q with tags %v, want it untouched on a", ipc, tags)
			}
		})
	}
}

// TestAzurePublicIPRefusedOnTwoNICs shows the emulator enforces what makes
// the detach-first order necessary: attaching an address another NIC holds
// is refused (PublicIPAddressInUse, which the provider reads as a conflict).
func TestAzurePublicIPRefusedOnTwoNICs(t *testing.T) {
	fx := newFixture(t, "a", "b")
	b := mustProvider(t, fx, "b")
	nic, err := b.getNIC(testCtx(t), b.self.nic)
	if err != nil {
		t.Fatal(err)
	}
	id := fx.PublicIPID
	ipConfig(nic, "ipconfig1").Properties.PublicIPAddress = &armnetwork.PublicIPAddress{ID: &id}
	err = b.putNIC(testCtx(t), b.self.nic, nic, "")
	if !errors.Is(err, providers.ErrConflict) || !strings.Contains(err.Error(), "PublicIPAddressInUse") {
		t.Fatalf("attaching a held public IP: %v, want PublicIPAddressInUse as ErrConflict", err)
	}
}

// TestAzurePublicIPWithinOneNIC moves the address between two
// ipConfigurations of the same NIC: one write, no detach of another NIC.
func TestAzurePublicIPWithinOneNIC(t *testing.T) {
	fx := newFixture(t, "a", "b")
	if err := fx.Emulator.Azure.AddIPConfiguration(fx.Nodes["a"].NICID, "vip", "198.18.10.50"); err != nil {
		t.Fatal(err)
	}
	a := tunedProvider(t, fx, "a", func(s *Settings) { s.IPConfiguration = "vip" })
	if err := a.Claim(testCtx(t), 2, []providers.Resource{fx.PublicIP}); err != nil {
		t.Fatalf("claim onto a's secondary ipConfiguration: %v", err)
	}
	want := fx.Nodes["a"].NICID + "/ipConfigurations/vip"
	if ipc, _, _ := fx.Emulator.Azure.PublicIPAttachment(fx.PublicIPID); !strings.EqualFold(ipc, want) {
		t.Fatalf("public IP on %s, want %s", ipc, want)
	}
	if n := fx.Emulator.Gate().Calls("azure", opNICWrite); n != 1 {
		t.Fatalf("%d NIC writes, want 1", n)
	}
	if h, _ := a.Owner(testCtx(t), fx.PublicIP); h.Node != "a" || h.Term != 2 {
		t.Fatalf("owner %+v, want a at 2", h)
	}
}

// BenchmarkAzureFailover moves the fixture's resources (two routes in two
// tables and the public IP) from one node to the other per iteration,
// through the real SDK and the emulator with 5 ms per call and 20 ms NIC
// and route operations, and reports the public IP's window without owner.
func BenchmarkAzureFailover(b *testing.B) {
	fx := newFixture(b, "a", "b")
	pa, pb := mustProvider(b, fx, "a"), mustProvider(b, fx, "b")
	fx.Emulator.Gate().SetLatency(5 * time.Millisecond)
	fx.Emulator.Azure.SetOperationDuration(20 * time.Millisecond)
	var window time.Duration
	b.ResetTimer()
	for i := range b.N {
		p := pb
		if i%2 == 1 {
			p = pa
		}
		start := time.Now()
		if err := p.Claim(testCtx(b), uint64(10+i), fx.Resources); err != nil {
			b.Fatalf("claim %d: %v", i, err)
		}
		var detach time.Time
		for _, e := range fx.Emulator.Azure.Events() {
			if e.At.Before(start) || !strings.EqualFold(e.Resource, fx.PublicIPID) {
				continue
			}
			switch e.Kind {
			case "detach":
				detach = e.At
			case "attach":
				window += e.At.Sub(detach)
			}
		}
	}
	b.ReportMetric(float64(window.Milliseconds())/float64(b.N), "ms-no-owner/op")
}
