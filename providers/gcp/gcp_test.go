package gcp

import (
	"context"
	"errors"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/providers"
	"github.com/handoffvpn/handoff/providers/conformance"
	"github.com/handoffvpn/handoff/providers/emulator"
)

// newFixture starts an emulator and the two-node fleet "a" and "b" with
// fast retry settings, closed at the end of the test.
func newFixture(t *testing.T, tune func(node string, s *Settings)) (*emulator.Emulator, *Fixture) {
	t.Helper()
	em, err := emulator.New(emulator.Options{})
	if err != nil {
		t.Fatalf("starting the emulator: %v", err)
	}
	t.Cleanup(func() { _ = em.Close() })
	fx, err := EmulatorFixture(context.Background(), em, []string{"a", "b"})
	if err != nil {
		t.Fatalf("seeding the gcp fixture: %v", err)
	}
	t.Cleanup(func() { _ = fx.Close() })
	fx.Tune = func(node string, s *Settings) {
		s.BackoffBase, s.BackoffMax, s.CallTimeout = "2ms", "20ms", "1s"
		if tune != nil {
			tune(node, s)
		}
	}
	return em, fx
}

func provider(t *testing.T, fx *Fixture, node string) *Provider {
	t.Helper()
	p, err := fx.NewProvider(node)
	if err != nil {
		t.Fatalf("gcp provider for %s: %v", node, err)
	}
	return p.(*Provider)
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestGCPConformance(t *testing.T) {
	em, fx := newFixture(t, nil)
	// Operations stay PENDING for a moment, so every mutation is waited on.
	em.GCP.SetOperationDelay(3 * time.Millisecond)
	conformance.Run(t, conformance.Harness{
		Name:     "gcp",
		Emulator: em,
		NewProvider: func(t *testing.T, node string) providers.Provider {
			return provider(t, fx, node)
		},
		Resources:     fx.Resources,
		MutatingOp:    "compute.forwardingRules.setTarget",
		FaultResource: FixtureForwardingRule,
		Reset:         func(*testing.T) { fx.Seed() },
	})
}

// gcpOpPermissions maps each GCE method the emulator serves to the IAM
// permissions GCE checks for it.
var gcpOpPermissions = map[string][]string{
	"compute.forwardingRules.get":              {"compute.forwardingRules.get"},
	"compute.forwardingRules.setLabels":        {"compute.forwardingRules.setLabels"},
	"compute.forwardingRules.setTarget":        {"compute.forwardingRules.setTarget", "compute.targetInstances.use"},
	"compute.instances.get":                    {"compute.instances.get"},
	"compute.instances.list":                   {"compute.instances.list"},
	"compute.instances.setLabels":              {"compute.instances.setLabels"},
	"compute.instances.updateNetworkInterface": {"compute.instances.updateNetworkInterface"},
	"compute.routes.get":                       {"compute.routes.get"},
	"compute.routes.list":                      {"compute.routes.list"},
	"compute.routes.insert":                    {"compute.routes.create", "compute.networks.updatePolicy"},
	"compute.routes.delete":                    {"compute.routes.delete"},
	"compute.zoneOperations.get":               {"compute.zoneOperations.get"},
	"compute.zoneOperations.wait":              {"compute.zoneOperations.get"},
	"compute.regionOperations.get":             {"compute.regionOperations.get"},
	"compute.regionOperations.wait":            {"compute.regionOperations.get"},
	"compute.globalOperations.get":             {"compute.globalOperations.get"},
	"compute.globalOperations.wait":            {"compute.globalOperations.get"},
}

// TestGCPPermissionsMatchCalls runs every flow (claims of each kind by
// both nodes, a takeover, Owner) against a fresh emulator and checks that
// the permissions of the methods it saw are exactly Permissions().
func TestGCPPermissionsMatchCalls(t *testing.T) {
	em, fx := newFixture(t, nil)
	em.GCP.SetOperationDelay(2 * time.Millisecond)
	a, b := provider(t, fx, "a"), provider(t, fx, "b")
	ctx := testCtx(t)
	for i, p := range []*Provider{a, b, a} {
		if err := p.Claim(ctx, uint64(i+1), fx.Resources); err != nil {
			t.Fatalf("gcp claim #%d by %s: %v", i+1, p.Node(), err)
		}
	}
	for _, r := range fx.Resources {
		if _, err := b.Owner(ctx, r); err != nil {
			t.Fatalf("gcp owner of %s: %v", r, err)
		}
	}
	seen := map[string]bool{}
	for _, op := range em.GCP.Ops() {
		if em.Gate().Calls("gcp", op) == 0 {
			continue
		}
		perms, ok := gcpOpPermissions[op]
		if !ok {
			t.Fatalf("gcp method %s was called but has no permission mapping", op)
		}
		for _, p := range perms {
			seen[p] = true
		}
	}
	want := Permissions()
	for _, p := range want {
		if !seen[p] {
			t.Errorf("Permissions() lists %s, but no call needed it", p)
		}
	}
	for p := range seen {
		if !slices.Contains(want, p) {
			t.Errorf("the calls needed %s, missing from Permissions()", p)
		}
	}
	if !slices.IsSorted(want) {
		t.Errorf("Permissions() is not sorted: %v", want)
	}
}

func TestGCPDocListsPermissions(t *testing.T) {
	doc, err := os.ReadFile("../../docs/providers/gcp.md")
	if err != nil {
		t.Fatalf("reading the gcp provider doc: %v", err)
	}
	// The doc carries the permissions as a custom role in a ```yaml block
	// that has an includedPermissions list.
	m := regexp.MustCompile("(?s)```yaml\n(.*?includedPermissions:.*?)```").FindSubmatch(doc)
	if m == nil {
		t.Fatal("docs/providers/gcp.md has no ```yaml block with includedPermissions")
	}
	var got []string
	in := false
	for _, line := range strings.Split(string(m[1]), "\n") {
		switch {
		case strings.HasPrefix(line, "includedPermissions:"):
			in = true
		case in && strings.HasPrefix(strings.TrimSpace(line), "- "):
			got = append(got, strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "- ")))
		case in && strings.TrimSpace(line) != "":
			in = false
		}
	}
	if !slices.Equal(got, Permissions()) {
		t.Fatalf("docs/providers/gcp.md lists\n  %v\nPermissions() is\n  %v", got, Permissions())
	}
}

func TestGCPErrorTranslation(t *testing.T) {
	em, fx := newFixture(t, nil)
	a := provider(t, fx, "a")
	cases := []struct {
		fault emulator.FaultKind
		want  error
	}{
		{emulator.Throttle, providers.ErrThrottled},
		{emulator.ServerError, providers.ErrUnavailable},
		{emulator.PermissionDenied, providers.ErrPermission},
		{emulator.StaleFingerprint, providers.ErrConflict},
	}
	for _, c := range cases {
		t.Run("gcp/"+c.fault.String(), func(t *testing.T) {
			em.Gate().ClearFaults()
			em.Gate().Inject(emulator.Fault{Kind: c.fault, Cloud: "gcp", Op: "compute.forwardingRules.get"})
			t.Cleanup(em.Gate().ClearFaults)
			_, err := a.Owner(testCtx(t), providers.Resource{Kind: KindForwardingRule, ID: FixtureForwardingRule})
			if !errors.Is(err, c.want) {
				t.Fatalf("owner under %s: err = %v, want %v", c.fault, err, c.want)
			}
			if !strings.Contains(err.Error(), FixtureForwardingRule) {
				t.Fatalf("error %q does not name the forwarding rule", err)
			}
		})
	}
	t.Run("gcp/not-found", func(t *testing.T) {
		_, err := a.Owner(testCtx(t), providers.Resource{Kind: KindForwardingRule, ID: "fr-missing"})
		if !errors.Is(err, providers.ErrNotFound) || !strings.Contains(err.Error(), "fr-missing") {
			t.Fatalf("owner of a missing rule: err = %v, want ErrNotFound naming fr-missing", err)
		}
	})
	t.Run("gcp/timeout", func(t *testing.T) {
		em.Gate().Inject(emulator.Fault{Kind: emulator.Timeout, Cloud: "gcp", Op: "compute.routes.list", Times: 1})
		t.Cleanup(em.Gate().ClearFaults)
		short := provider(t, withTune(t, fx, func(_ string, s *Settings) { s.CallTimeout = "100ms" }), "a")
		before := em.Gate().Calls("gcp", "compute.routes.list")
		if _, err := short.Owner(testCtx(t), providers.Resource{Kind: KindRoute, ID: FixtureRoute}); err != nil {
			t.Fatalf("owner after one timed-out call: %v", err)
		}
		if n := em.Gate().Calls("gcp", "compute.routes.list") - before; n != 2 {
			t.Fatalf("routes.list called %d times, want 2 (a timeout is retried)", n)
		}
	})
}

// withTune returns fx with its settings hook extended by tune until the
// end of the (sub)test.
func withTune(t *testing.T, fx *Fixture, tune func(string, *Settings)) *Fixture {
	prev := fx.Tune
	t.Cleanup(func() { fx.Tune = prev })
	fx.Tune = func(n string, s *Settings) {
		if prev != nil {
			prev(n, s)
		}
		tune(n, s)
	}
	return fx
}

func TestGCPRetryPolicy(t *testing.T) {
	em, fx := newFixture(t, func(_ string, s *Settings) { s.Attempts = 4 })
	a := provider(t, fx, "a")
	fr := providers.Resource{Kind: KindForwardingRule, ID: FixtureForwardingRule}
	g := em.Gate()
	count := func(op string, fn func()) int {
		before := g.Calls("gcp", op)
		fn()
		return g.Calls("gcp", op) - before
	}

	t.Run("gcp/5xx-retried-up-to-attempts", func(t *testing.T) {
		g.Inject(emulator.Fault{Kind: emulator.ServerError, Cloud: "gcp", Op: "compute.forwardingRules.get"})
		t.Cleanup(g.ClearFaults)
		var err error
		n := count("compute.forwardingRules.get", func() { _, err = a.Owner(testCtx(t), fr) })
		if !errors.Is(err, providers.ErrUnavailable) || n != 4 {
			t.Fatalf("persistent 503: err = %v after %d calls, want ErrUnavailable after 4", err, n)
		}
	})
	t.Run("gcp/permission-not-retried", func(t *testing.T) {
		g.Inject(emulator.Fault{Kind: emulator.PermissionDenied, Cloud: "gcp", Op: "compute.forwardingRules.setLabels"})
		t.Cleanup(g.ClearFaults)
		var err error
		n := count("compute.forwardingRules.setLabels", func() { err = a.Claim(testCtx(t), 2, []providers.Resource{fr}) })
		if !errors.Is(err, providers.ErrPermission) || n != 1 {
			t.Fatalf("403: err = %v after %d calls, want ErrPermission after 1", err, n)
		}
	})
	t.Run("gcp/client-error-not-retried", func(t *testing.T) {
		// A route next hop that does not exist: GCE answers 404 on insert.
		bad := provider(t, withTune(t, fx, func(_ string, s *Settings) { s.Instance = "gw-gone" }), "a")
		var err error
		n := count("compute.routes.insert", func() {
			err = bad.Claim(testCtx(t), 3, []providers.Resource{{Kind: KindRoute, ID: "vpc/192.0.2.0/24"}})
		})
		if !errors.Is(err, providers.ErrNotFound) || n != 1 {
			t.Fatalf("insert with a missing next hop: err = %v after %d calls, want ErrNotFound after 1", err, n)
		}
	})
	t.Run("gcp/throttle-then-success", func(t *testing.T) {
		g.Inject(emulator.Fault{Kind: emulator.Throttle, Cloud: "gcp", Op: "compute.forwardingRules.setTarget", Times: 3})
		t.Cleanup(g.ClearFaults)
		var err error
		n := count("compute.forwardingRules.setTarget", func() { err = a.Claim(testCtx(t), 4, []providers.Resource{fr}) })
		if err != nil || n != 4 {
			t.Fatalf("three throttles: err = %v after %d calls, want success on the 4th", err, n)
		}
	})
}

// TestGCPRequestIDMakesRetriesIdempotent makes every routes.insert take
// longer than the call timeout: GCE still carries each one out, and the
// retries reuse the requestId, so exactly one route exists afterwards.
func TestGCPRequestIDMakesRetriesIdempotent(t *testing.T) {
	em, fx := newFixture(t, func(_ string, s *Settings) { s.CallTimeout = "60ms"; s.Attempts = 3 })
	a := provider(t, fx, "a")
	em.Gate().SetOpLatency("compute.routes.insert", 150*time.Millisecond)
	rt := providers.Resource{Kind: KindRoute, ID: FixtureRoute}
	err := a.Claim(testCtx(t), 7, []providers.Resource{rt})
	if !errors.Is(err, providers.ErrUnavailable) {
		t.Fatalf("claim whose inserts all time out: err = %v, want ErrUnavailable", err)
	}
	if n := em.Gate().Calls("gcp", "compute.routes.insert"); n != 3 {
		t.Fatalf("routes.insert called %d times, want 3", n)
	}
	time.Sleep(200 * time.Millisecond) // let the last slow insert land
	if rs := em.GCP.Routes(fx.Project); len(rs) != 1 {
		t.Fatalf("after 3 timed-out inserts with one requestId: %d routes %v, want 1", len(rs), rs)
	}
	em.Gate().SetOpLatency("compute.routes.insert", 0)
	if err := a.Claim(testCtx(t), 7, []providers.Resource{rt}); err != nil {
		t.Fatalf("claim again once GCE is fast: %v", err)
	}
	if rs := em.GCP.Routes(fx.Project); len(rs) != 1 || !strings.Contains(rs[0].Description, "node=a term=7") {
		t.Fatalf("routes after the second claim: %v, want the one route of a at term 7", rs)
	}
}

// TestGCPAliasMovesOffTheOldNIC checks the alias ends on exactly one NIC,
// including when it was the old VM's only range (the call the SDK cannot
// express), and that a stale NIC fingerprint is re-read and retried.
func TestGCPAliasMovesOffTheOldNIC(t *testing.T) {
	em, fx := newFixture(t, nil)
	a, b := provider(t, fx, "a"), provider(t, fx, "b")
	alias := []providers.Resource{{Kind: KindAliasIP, ID: FixtureAlias}}
	if err := a.Claim(testCtx(t), 1, alias); err != nil {
		t.Fatalf("claim by a: %v", err)
	}
	em.Gate().Inject(emulator.Fault{Kind: emulator.StaleFingerprint, Cloud: "gcp", Op: "compute.instances.updateNetworkInterface", Times: 1})
	before := em.Gate().Calls("gcp", "compute.instances.updateNetworkInterface")
	if err := b.Claim(testCtx(t), 2, alias); err != nil {
		t.Fatalf("claim by b after a stale fingerprint: %v", err)
	}
	if n := em.Gate().Calls("gcp", "compute.instances.updateNetworkInterface") - before; n != 3 {
		t.Fatalf("updateNetworkInterface called %d times, want 3 (stale, remove from a, add to b)", n)
	}
	if got := em.GCP.InstanceAliases(fx.Project, fx.Zones["a"], fx.Instances["a"]); len(got) != 0 {
		t.Fatalf("a's NIC still has %v after b's claim", got)
	}
	if got := em.GCP.InstanceAliases(fx.Project, fx.Zones["b"], fx.Instances["b"]); !slices.Equal(got, []string{FixtureAlias}) {
		t.Fatalf("b's NIC has %v, want [%s]", got, FixtureAlias)
	}
	h, err := a.Owner(testCtx(t), alias[0])
	if err != nil || h.Node != "b" || h.Term != 2 || !strings.HasSuffix(h.Target, "/instances/"+fx.Instances["b"]) {
		t.Fatalf("owner = %+v, %v; want b at term 2 on %s", h, err, fx.Instances["b"])
	}
}

// TestGCPForwardingRuleOwnerFollowsTarget checks the labels' two records:
// after a claim that wrote its intent but could not move the target, the
// old holder is still reported, and the next claim succeeds.
func TestGCPForwardingRuleOwnerFollowsTarget(t *testing.T) {
	em, fx := newFixture(t, nil)
	a, b := provider(t, fx, "a"), provider(t, fx, "b")
	fr := []providers.Resource{{Kind: KindForwardingRule, ID: FixtureForwardingRule}}
	if err := b.Claim(testCtx(t), 5, fr); err != nil {
		t.Fatalf("claim by b: %v", err)
	}
	em.Gate().Inject(emulator.Fault{Kind: emulator.PermissionDenied, Cloud: "gcp", Op: "compute.forwardingRules.setTarget", Times: 1})
	if err := a.Claim(testCtx(t), 6, fr); !errors.Is(err, providers.ErrPermission) {
		t.Fatalf("claim by a without setTarget: err = %v, want ErrPermission", err)
	}
	if l := em.GCP.ForwardingRuleLabels(fx.Project, fx.Region, FixtureForwardingRule); l[labelNode] != "a" || l[labelPrevNode] != "b" {
		t.Fatalf("labels after the failed move = %v, want intent a and prev b", l)
	}
	if h, err := a.Owner(testCtx(t), fr[0]); err != nil || h.Node != "b" || h.Term != 5 {
		t.Fatalf("owner after the failed move = %+v, %v; want b at term 5", h, err)
	}
	if err := b.Claim(testCtx(t), 5, fr); !errors.Is(err, providers.ErrStaleTerm) {
		t.Fatalf("b re-claiming at 5 after a's intent at 6: err = %v, want ErrStaleTerm", err)
	}
	if err := a.Claim(testCtx(t), 6, fr); err != nil {
		t.Fatalf("a retrying at 6: %v", err)
	}
	want := "zones/" + fx.Zones["a"] + "/targetInstances/" + fx.Instances["a"]
	if got := em.GCP.ForwardingRuleTarget(fx.Project, fx.Region, FixtureForwardingRule); !strings.HasSuffix(got, want) {
		t.Fatalf("target = %q, want ...%s", got, want)
	}
}

func TestGCPRouteNextHopIP(t *testing.T) {
	em, fx := newFixture(t, func(_ string, s *Settings) { s.RouteNextHop = "ip"; s.RoutePriority = 900 })
	a, b := provider(t, fx, "a"), provider(t, fx, "b")
	rt := []providers.Resource{{Kind: KindRoute, ID: FixtureRoute}}
	for i, p := range []*Provider{a, b} {
		if err := p.Claim(testCtx(t), uint64(10+i), rt); err != nil {
			t.Fatalf("claim by %s: %v", p.Node(), err)
		}
	}
	rs := em.GCP.Routes(fx.Project)
	if len(rs) != 1 || rs[0].NextHopIP != "10.128.0.11" || rs[0].Priority != 900 || rs[0].NextHopInstance != "" {
		t.Fatalf("routes = %+v, want one route via 10.128.0.11 (b) at priority 900", rs)
	}
	if h, err := a.Owner(testCtx(t), rt[0]); err != nil || h.Node != "b" || h.Term != 11 || h.Target != "10.128.0.11" {
		t.Fatalf("owner = %+v, %v", h, err)
	}
}

func TestGCPSettingsValidate(t *testing.T) {
	cases := []struct {
		s   Settings
		key string
	}{
		{Settings{CallTimeout: "soon"}, "call_timeout"},
		{Settings{BackoffBase: "-1s"}, "backoff_base"},
		{Settings{BackoffBase: "2s", BackoffMax: "1s"}, "backoff_max"},
		{Settings{Zone: "Central"}, "zone"},
		{Settings{RouteNextHop: "gateway"}, "route_next_hop"},
		{Settings{RoutePriority: 70000}, "route_priority"},
		{Settings{Attempts: 99}, "attempts"},
		{Settings{Endpoint: "compute.local"}, "endpoint"},
		{Settings{Endpoint: "http://compute.googleapis.com"}, `endpoint: "http://compute.googleapis.com" is not an https:// URL`},
		{Settings{AliasZones: []string{"x"}}, "alias_zones"},
		{Settings{CredentialsFile: "k.json", WithoutAuthentication: true}, "credentials_file"},
	}
	for _, c := range cases {
		err := c.s.Validate()
		if err == nil || !strings.Contains(err.Error(), c.key) {
			t.Errorf("gcp Validate(%+v) = %v, want an error naming %s", c.s, err, c.key)
		}
	}
	if err := (Settings{}).Validate(); err != nil {
		t.Errorf("gcp Validate of empty settings: %v", err)
	}
	if _, err := settingsFrom(map[string]any{"project": "p", "zonee": "us-central1-a"}); err == nil || !strings.Contains(err.Error(), "zonee") {
		t.Errorf("gcp settings with an unknown key: err = %v, want it named", err)
	}
	s, err := settingsFrom(map[string]any{"project": "p", "call_timeout": "3s"})
	if err != nil || s.Project != "p" || s.CallTimeout != "3s" {
		t.Errorf("gcp settings from a map = %+v, %v", s, err)
	}
	if _, err := Factory(context.Background(), "Node A", Settings{}); err == nil || !strings.Contains(err.Error(), "Node A") {
		t.Errorf("gcp factory with a node ID labels cannot carry: err = %v", err)
	}
}

func TestGCPRegistry(t *testing.T) {
	em, fx := newFixture(t, nil)
	var reg providers.Registry
	reg.Register("gcp", Factory)
	url, stop, err := em.GCP.MetadataServer(fx.Project, fx.Zones["b"], fx.Instances["b"])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stop() })
	p, err := reg.New(testCtx(t), "gcp", "b", &Settings{Endpoint: em.URL(), MetadataURL: url, HTTPClient: em.HTTPClient()})
	if err != nil {
		t.Fatalf("gcp provider from the registry: %v", err)
	}
	gp := p.(*Provider)
	t.Cleanup(func() { _ = gp.Close(); _ = gp.Close() })
	if gp.Instance() != fx.Instances["b"] || gp.zone != fx.Zones["b"] || gp.project != fx.Project || gp.region != fx.Region {
		t.Fatalf("identity from metadata = %s %s %s %s", gp.project, gp.zone, gp.region, gp.Instance())
	}
}

func TestGCPRouteNames(t *testing.T) {
	r, err := parseRouteID("vpc/198.51.100.0/24")
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("n", 40)
	for _, node := range []string{"a", "gw_1", long} {
		n := routeName(r, node, 18446744073709551615)
		if len(n) > 63 || !regexp.MustCompile(`^[a-z]([-a-z0-9]*[a-z0-9])?$`).MatchString(n) {
			t.Errorf("route name %q for node %q is not a valid GCE name", n, node)
		}
	}
	if routeName(r, "a", 5) == routeName(r, "b", 5) || routeName(r, "a", 5) == routeName(r, "a", 6) {
		t.Error("route names collide across nodes or terms")
	}
	for _, bad := range []string{"198.51.100.0/24", "vpc/198.51.100.1/24", "VPC/10.0.0.0/8"} {
		if _, err := parseRouteID(bad); err == nil {
			t.Errorf("parseRouteID(%q) accepted", bad)
		}
	}
	if node, term, ok := parseRouteDescription(routeDescription("gw_1", 42)); !ok || node != "gw_1" || term != 42 {
		t.Errorf("description round trip = %q %d %v", node, term, ok)
	}
}

// BenchmarkGCPTakeover measures one failover of all three kinds (the
// other node held them) through the SDK against the emulator: with no API
// latency (the provider's own cost) and with 10 ms per call (how many
// sequential round trips a takeover needs).
func BenchmarkGCPTakeover(b *testing.B) {
	for _, lat := range []time.Duration{0, 10 * time.Millisecond} {
		b.Run("latency="+lat.String(), func(b *testing.B) {
			em, err := emulator.New(emulator.Options{Latency: lat})
			if err != nil {
				b.Fatal(err)
			}
			defer em.Close()
			fx, err := EmulatorFixture(context.Background(), em, []string{"a", "b"})
			if err != nil {
				b.Fatal(err)
			}
			defer fx.Close()
			var ps [2]providers.Provider
			for i, n := range []string{"a", "b"} {
				if ps[i], err = fx.NewProvider(n); err != nil {
					b.Fatal(err)
				}
			}
			ctx := context.Background()
			b.ResetTimer()
			for i := range b.N {
				if err := ps[i%2].Claim(ctx, uint64(i+1), fx.Resources); err != nil {
					b.Fatalf("takeover %d: %v", i, err)
				}
			}
		})
	}
}
