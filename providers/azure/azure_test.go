package azure

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v7"

	"github.com/handoffvpn/handoff/providers"
	"github.com/handoffvpn/handoff/providers/conformance"
	"github.com/handoffvpn/handoff/providers/emulator"
)

// Gate ops of the Azure front end, as the conformance harness names them.
const (
	opRouteWrite = "Microsoft.Network/routeTables/routes/write"
	opNICWrite   = "Microsoft.Network/networkInterfaces/write"
)

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// newFixture starts an emulator and seeds the fleet for nodes.
func newFixture(t testing.TB, nodes ...string) *Fixture {
	t.Helper()
	em, err := emulator.New(emulator.Options{})
	if err != nil {
		t.Fatalf("starting the emulator: %v", err)
	}
	t.Cleanup(func() { _ = em.Close() })
	fx, err := EmulatorFixture(testCtx(t), em, nodes)
	if err != nil {
		t.Fatalf("seeding the azure fixture: %v", err)
	}
	t.Cleanup(func() { _ = fx.Close() })
	return fx
}

func mustProvider(t testing.TB, fx *Fixture, node string) *Provider {
	t.Helper()
	p, err := fx.NewProvider(node)
	if err != nil {
		t.Fatalf("building the azure provider of %s: %v", node, err)
	}
	return p.(*Provider)
}

// checkPermissionsMatchCalls compares Permissions() with the RBAC actions
// of every call the emulator saw, both ways.
func checkPermissionsMatchCalls(t *testing.T, em *emulator.Emulator) {
	t.Helper()
	var seen []string
	for _, op := range em.Gate().Ops("azure") {
		if op == emulator.AzureOpMetadata {
			continue // IMDS needs no RBAC action
		}
		seen = append(seen, op) // the front end names each call by its RBAC action
	}
	want := Permissions()
	for _, op := range seen {
		if !slices.Contains(want, op) {
			t.Errorf("the provider called %s, which Permissions() does not list", op)
		}
	}
	for _, perm := range want {
		if !slices.Contains(seen, perm) {
			t.Errorf("Permissions() lists %s, which no call of the suite needed", perm)
		}
	}
}

// runConformance runs the shared suite with rs in the given order, then
// checks that the calls it made need exactly Permissions().
func runConformance(t *testing.T, rs []providers.Resource, mutatingOp, faultResource string) {
	fx := newFixture(t, "a", "b")
	conformance.Run(t, conformance.Harness{
		Name:     "azure",
		Emulator: fx.Emulator,
		NewProvider: func(t *testing.T, node string) providers.Provider {
			return mustProvider(t, fx, node)
		},
		Resources:     rs,
		MutatingOp:    mutatingOp,
		FaultResource: faultResource,
	})
	t.Run("azure/PermissionsMatchCalls", func(t *testing.T) {
		p := mustProvider(t, fx, "a")
		if err := p.CheckPermissions(testCtx(t), fx.Resources); err != nil {
			t.Fatalf("CheckPermissions with every right granted: %v", err)
		}
		checkPermissionsMatchCalls(t, fx.Emulator)
	})
}

// TestAzureConformanceRouteFirst runs the suite through the real SDK with a
// route as the resource the faults target.
func TestAzureConformanceRouteFirst(t *testing.T) {
	fx := newFixture(t, "x") // only for the resource names
	runConformance(t, []providers.Resource{fx.Routes[0], fx.PublicIP, fx.Routes[1]}, opRouteWrite, "rt-inside")
}

// TestAzureConformancePublicIPFirst runs the suite with the public IP as
// the resource the faults target: throttling and permission faults hit the
// NIC writes of the detach/attach.
func TestAzureConformancePublicIPFirst(t *testing.T) {
	fx := newFixture(t, "x")
	runConformance(t, []providers.Resource{fx.PublicIP, fx.Routes[0], fx.Routes[1]}, opNICWrite, "handoff-vip")
}

// TestAzureIdentityFromMetadata checks that each node learns its own NIC,
// ipConfiguration and private IP from its own IMDS listener.
func TestAzureIdentityFromMetadata(t *testing.T) {
	fx := newFixture(t, "a", "b")
	for _, node := range []string{"a", "b"} {
		p := mustProvider(t, fx, node)
		want := fx.Nodes[node]
		if p.self.subscription != FixtureSubscription || p.self.resourceGroup != FixtureResourceGroup {
			t.Errorf("node %s: subscription/resource group = %s/%s, want %s/%s", node,
				p.self.subscription, p.self.resourceGroup, FixtureSubscription, FixtureResourceGroup)
		}
		if !strings.EqualFold(p.self.nicID, want.NICID) || !strings.EqualFold(p.self.ipConfigID, want.IPConfigurationID) {
			t.Errorf("node %s: NIC %s ipConfiguration %s, want %s and %s", node, p.self.nicID, p.self.ipConfigID, want.NICID, want.IPConfigurationID)
		}
		if p.self.privateIP != want.PrivateIP {
			t.Errorf("node %s: private IP %s, want %s", node, p.self.privateIP, want.PrivateIP)
		}
	}
	if got := fx.Emulator.Gate().Calls("azure", emulator.AzureOpMetadata); got != 2 {
		t.Errorf("metadata service called %d times for two providers, want 2", got)
	}
}

// TestAzureIdentityFromSettings builds a provider with no metadata service
// at all: settings name everything.
func TestAzureIdentityFromSettings(t *testing.T) {
	fx := newFixture(t, "a", "b")
	s := fx.Settings("b")
	s.MetadataEndpoint = "http://127.0.0.1:1" // nothing listens: must not be asked
	s.SubscriptionID, s.ResourceGroup = FixtureSubscription, FixtureResourceGroup
	s.NetworkInterface, s.PrivateIP = "gw-b-nic", "198.18.10.99"
	p, err := New(testCtx(t), "b", s)
	if err != nil {
		t.Fatalf("building from settings: %v", err)
	}
	if !strings.EqualFold(p.self.nicID, fx.Nodes["b"].NICID) || p.self.privateIP != "198.18.10.99" {
		t.Fatalf("identity = %s %s, want %s 198.18.10.99", p.self.nicID, p.self.privateIP, fx.Nodes["b"].NICID)
	}
	if err := p.Claim(testCtx(t), 1, fx.Routes[:1]); err != nil {
		t.Fatalf("claim: %v", err)
	}
	hop, _, err := fx.Emulator.Azure.RouteNextHop(fx.RouteTableIDs[0], fx.RouteName)
	if err != nil || hop != "198.18.10.99" {
		t.Fatalf("route next hop = %q (%v), want the configured private_ip 198.18.10.99", hop, err)
	}
}

// TestAzureOwnerIgnoresChangedTarget: when a route is re-pointed behind
// Handoff's back, its fencing tags no longer describe it and Owner must say
// nobody Handoff knows holds it, while still reporting the fence's term.
func TestAzureOwnerIgnoresChangedTarget(t *testing.T) {
	fx := newFixture(t, "a", "b")
	a := mustProvider(t, fx, "a")
	if err := a.Claim(testCtx(t), 5, fx.Resources); err != nil {
		t.Fatalf("claim: %v", err)
	}
	if err := fx.Emulator.Azure.SetRouteNextHop(fx.RouteTableIDs[0], fx.RouteName, "198.18.10.200"); err != nil {
		t.Fatal(err)
	}
	h, err := a.Owner(testCtx(t), fx.Routes[0])
	if err != nil {
		t.Fatalf("owner: %v", err)
	}
	if h.Node != "" || h.Term != 5 || h.Target != "198.18.10.200" {
		t.Fatalf("owner of a hand-edited route = %+v, want no node, term 5, target 198.18.10.200", h)
	}
	// The next claim repairs it.
	if err := a.Claim(testCtx(t), 5, fx.Resources); err != nil {
		t.Fatalf("re-claim at the same term: %v", err)
	}
	if h, _ := a.Owner(testCtx(t), fx.Routes[0]); h.Node != "a" || h.Target != fx.Nodes["a"].PrivateIP {
		t.Fatalf("owner after re-claim = %+v, want a at %s", h, fx.Nodes["a"].PrivateIP)
	}
}

// TestAzureSameTermOtherNodeRefused: two leaders in one term cannot exist,
// so a claim at the term another node fenced is refused, not applied.
func TestAzureSameTermOtherNodeRefused(t *testing.T) {
	fx := newFixture(t, "a", "b")
	a, b := mustProvider(t, fx, "a"), mustProvider(t, fx, "b")
	if err := a.Claim(testCtx(t), 7, fx.Resources); err != nil {
		t.Fatalf("claim by a: %v", err)
	}
	err := b.Claim(testCtx(t), 7, fx.Resources)
	var ce *providers.ClaimError
	if !errors.As(err, &ce) || len(ce.Failed) != len(fx.Resources) || !errors.Is(err, providers.ErrStaleTerm) {
		t.Fatalf("claim by b at a's term: %v, want every resource refused with ErrStaleTerm", err)
	}
	for _, r := range fx.Resources {
		if h, err := b.Owner(testCtx(t), r); err != nil || h.Node != "a" || h.Term != 7 {
			t.Fatalf("owner of %s = %+v (%v), want a at term 7", r, h, err)
		}
	}
}

// TestAzureMalformedFenceRefused: a term tag Handoff cannot read might hide
// a higher term, so the claim stops and names the tag.
func TestAzureMalformedFenceRefused(t *testing.T) {
	fx := newFixture(t, "a", "b")
	a := mustProvider(t, fx, "a")
	bad := "eleven"
	if _, err := a.tables.UpdateTags(testCtx(t), FixtureResourceGroup, "rt-inside",
		armTags(map[string]*string{TagTerm: &bad}), nil); err != nil {
		t.Fatalf("writing a bad tag: %v", err)
	}
	err := a.Claim(testCtx(t), 3, fx.Routes[:1])
	if err == nil || !strings.Contains(err.Error(), TagTerm) {
		t.Fatalf("claim over a malformed term tag: %v, want an error naming %s", err, TagTerm)
	}
	if _, err := a.Owner(testCtx(t), fx.Routes[0]); err == nil {
		t.Fatal("owner over a malformed term tag: no error")
	}
}

// TestAzureConcurrentClaimsHigherTermWins races two nodes claiming every
// resource at once; whatever the interleaving, the resources end on the
// higher term's node and the lower term never wins.
func TestAzureConcurrentClaimsHigherTermWins(t *testing.T) {
	fx := newFixture(t, "a", "b")
	a, b := mustProvider(t, fx, "a"), mustProvider(t, fx, "b")
	for round := range 4 {
		lo, hi := uint64(20+2*round), uint64(21+2*round)
		low, high, highNode := a, b, "b"
		if round%2 == 1 {
			low, high, highNode = b, a, "a"
		}
		errs := make(chan error, 2)
		go func() { errs <- low.Claim(testCtx(t), lo, fx.Resources) }()
		go func() { errs <- high.Claim(testCtx(t), hi, fx.Resources) }()
		e1, e2 := <-errs, <-errs
		for _, err := range []error{e1, e2} {
			if err != nil && !errors.Is(err, providers.ErrStaleTerm) && !errors.Is(err, providers.ErrConflict) {
				t.Fatalf("round %d: unexpected claim error: %v", round, err)
			}
		}
		for _, r := range fx.Resources {
			h, err := a.Owner(testCtx(t), r)
			if err != nil {
				t.Fatalf("round %d: owner of %s: %v", round, r, err)
			}
			if h.Term == lo {
				t.Fatalf("round %d: %s ended fenced at the lower term: %+v", round, r, h)
			}
			if h.Node != highNode || h.Term != hi {
				// The higher claim may have lost every race; it must then
				// have failed, and a retry must settle it.
				if err := high.Claim(testCtx(t), hi, fx.Resources); err != nil {
					t.Fatalf("round %d: re-claim at the higher term: %v", round, err)
				}
				if h, _ = a.Owner(testCtx(t), r); h.Node != highNode || h.Term != hi {
					t.Fatalf("round %d: owner of %s = %+v, want %s at %d", round, r, h, highNode, hi)
				}
			}
		}
	}
}

func armTags(tags map[string]*string) armnetwork.TagsObject { return armnetwork.TagsObject{Tags: tags} }

// TestAzureCheckPermissionsReportsMissing: the start-up dry check names
// each missing action and its scope, and changes nothing.
func TestAzureCheckPermissionsReportsMissing(t *testing.T) {
	fx := newFixture(t, "a", "b")
	a := mustProvider(t, fx, "a")
	g := fx.Emulator.Gate()
	g.Inject(emulator.Fault{Kind: emulator.PermissionDenied, Cloud: "azure", Op: opRouteWrite, Resource: "rt-spoke"})
	g.Inject(emulator.Fault{Kind: emulator.PermissionDenied, Cloud: "azure", Op: opNICWrite, Resource: "gw-a-nic"})
	err := a.CheckPermissions(testCtx(t), fx.Resources)
	if !errors.Is(err, providers.ErrPermission) {
		t.Fatalf("CheckPermissions: %v, want ErrPermission", err)
	}
	for _, want := range []string{opRouteWrite + " on " + fx.RouteTableIDs[1], opNICWrite + " on " + fx.Nodes["a"].NICID} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("CheckPermissions error %q lacks %q", err, want)
		}
	}
	if strings.Contains(err.Error(), fx.RouteTableIDs[0]) {
		t.Errorf("CheckPermissions blames %s, which allows everything: %v", fx.RouteTableIDs[0], err)
	}
	if n := g.Calls("azure", opRouteWrite) + g.Calls("azure", opNICWrite); n != 0 {
		t.Fatalf("CheckPermissions made %d writes", n)
	}
	if err := a.CheckPermissions(testCtx(t), []providers.Resource{{Kind: "eip", ID: "x"}}); err == nil || !strings.Contains(err.Error(), "unsupported resource kind") {
		t.Fatalf("CheckPermissions of an unknown kind: %v", err)
	}
}
