package azure

import (
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/handoffvpn/handoff/providers"
)

// TestAzureSettingsValidateNamesKey: each bad value is refused with the
// key an operator has to fix.
func TestAzureSettingsValidateNamesKey(t *testing.T) {
	for _, c := range []struct {
		s   Settings
		key string
	}{
		{Settings{CallTimeout: "ten"}, "call_timeout"},
		{Settings{BackoffBase: "-1s"}, "backoff_base"},
		{Settings{BackoffBase: "2s", BackoffMax: "1s"}, "backoff_max"},
		{Settings{PollInterval: "0s"}, "poll_interval"},
		{Settings{OperationTimeout: "x"}, "operation_timeout"},
		{Settings{MaxAttempts: 99}, "max_attempts"},
		{Settings{Credential: "password"}, "credential"},
		{Settings{ManagedIdentityClientID: "id"}, "managed_identity_client_id"},
		{Settings{Endpoint: "http://management.azure.com"}, "endpoint"},
		{Settings{MetadataEndpoint: "169.254.169.254"}, "metadata_endpoint"},
		{Settings{PrivateIP: "10.0.0.300"}, "private_ip"},
		{Settings{NetworkInterface: "a/b/c"}, "network_interface"},
	} {
		err := c.s.Validate()
		if err == nil || !strings.Contains(err.Error(), c.key) {
			t.Errorf("Validate(%+v) = %v, want an error naming %s", c.s, err, c.key)
		}
	}
	good := Settings{CallTimeout: "3s", BackoffBase: "50ms", BackoffMax: "1s", PollInterval: "250ms", MaxAttempts: 3,
		Credential: "managed_identity", ManagedIdentityClientID: "cid", Endpoint: "https://management.usgovcloudapi.net",
		PrivateIP: "10.1.2.3", NetworkInterface: "rg/nic"}
	if err := good.Validate(); err != nil {
		t.Fatalf("Validate(good) = %v", err)
	}
	tu, _ := good.tuning()
	if tu.callTimeout != 3*time.Second || tu.maxAttempts != 3 || tu.backoffBase != 50*time.Millisecond || tu.pollInterval != 250*time.Millisecond {
		t.Fatalf("tuning = %+v", tu)
	}
	def, _ := Settings{}.tuning()
	if def.callTimeout != 10*time.Second || def.maxAttempts != 5 || def.backoffMax != 5*time.Second || def.opTimeout != 2*time.Minute {
		t.Fatalf("default tuning = %+v", def)
	}
}

// TestAzureSettingsDecode decodes the block from YAML-shaped maps (unknown
// keys refused) and from HCL.
func TestAzureSettingsDecode(t *testing.T) {
	s, err := decodeSettings(map[string]any{"subscription_id": "sub", "call_timeout": "2s", "max_attempts": 3})
	if err != nil || s.SubscriptionID != "sub" || s.CallTimeout != "2s" || s.MaxAttempts != 3 {
		t.Fatalf("decoding a map: %+v, %v", s, err)
	}
	if _, err := decodeSettings(map[string]any{"subscription": "sub"}); err == nil || !strings.Contains(err.Error(), "subscription") {
		t.Fatalf("decoding an unknown key: %v, want an error naming it", err)
	}
	f, diags := hclsyntax.ParseConfig([]byte(`
resource_group   = "rg-vpn"
ip_configuration = "vip"
poll_interval    = "200ms"
`), "azure.hcl", hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	s, err = decodeSettings(f.Body)
	if err != nil || s.ResourceGroup != "rg-vpn" || s.IPConfiguration != "vip" || s.PollInterval != "200ms" {
		t.Fatalf("decoding HCL: %+v, %v", s, err)
	}
	bad, _ := hclsyntax.ParseConfig([]byte(`region = "westeurope"`), "bad.hcl", hcl.InitialPos)
	if _, err := decodeSettings(bad.Body); err == nil || !strings.Contains(err.Error(), "region") {
		t.Fatalf("decoding an unknown HCL key: %v, want an error naming it", err)
	}
	if _, err := decodeSettings(42); err == nil {
		t.Fatal("decoding an int: no error")
	}
}

// TestAzureFactoryInRegistry registers Factory and builds a provider
// through the registry, as the agent does.
func TestAzureFactoryInRegistry(t *testing.T) {
	fx := newFixture(t, "a")
	var reg providers.Registry
	reg.Register("azure", Factory)
	s := fx.Settings("a")
	p, err := reg.New(testCtx(t), "azure", "a", &s)
	if err != nil {
		t.Fatalf("building through the registry: %v", err)
	}
	if h, err := p.Owner(testCtx(t), fx.Routes[0]); err != nil || h.Target != fx.Nodes["a"].PrivateIP {
		t.Fatalf("owner = %+v, %v", h, err)
	}
	bad := fx.Settings("a")
	bad.CallTimeout = "soon"
	if _, err := reg.New(testCtx(t), "azure", "a", bad); err == nil || !strings.Contains(err.Error(), "call_timeout") {
		t.Fatalf("bad settings through the registry: %v", err)
	}
}

// TestAzureResourceIDs parses the short and full forms and refuses
// resources of another subscription.
func TestAzureResourceIDs(t *testing.T) {
	for _, c := range []struct {
		in   string
		want armID
	}{
		{"rt/r", armID{sub: "s", rg: "rg", name: "rt", child: "r"}},
		{"rg2/rt/r", armID{sub: "s", rg: "rg2", name: "rt", child: "r"}},
		{"/subscriptions/S/resourceGroups/rg3/providers/Microsoft.Network/routeTables/rt/routes/r", armID{sub: "S", rg: "rg3", name: "rt", child: "r"}},
	} {
		id, err := parseRoute(c.in)
		if err == nil {
			id, err = id.resolve("s", "rg")
		}
		if err != nil || id != c.want {
			t.Errorf("route %q = %+v, %v; want %+v", c.in, id, err, c.want)
		}
	}
	for _, bad := range []string{"r", "a/b/c/d", "rt//r", "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/publicIPAddresses/x"} {
		if _, err := parseRoute(bad); err == nil {
			t.Errorf("route %q parsed", bad)
		}
	}
	id, err := parseTopLevel("/subscriptions/other/resourceGroups/rg/providers/Microsoft.Network/publicIPAddresses/vip", "publicIPAddresses")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := id.resolve("s", "rg"); err == nil || !strings.Contains(err.Error(), "other") {
		t.Fatalf("resolving another subscription: %v", err)
	}
	nic, cfg, err := nicOfIPConfig("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/networkInterfaces/n1/ipConfigurations/c1")
	if err != nil || nic.name != "n1" || cfg != "c1" {
		t.Fatalf("nicOfIPConfig = %+v %q %v", nic, cfg, err)
	}
	if _, _, err := nicOfIPConfig("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/loadBalancers/lb/frontendIPConfigurations/f"); err == nil {
		t.Fatal("a load balancer frontend parsed as a NIC")
	}
}

// TestAzureActionMatching evaluates RBAC wildcards and notActions as the
// permissions API returns them.
func TestAzureActionMatching(t *testing.T) {
	for _, c := range []struct {
		pattern, action string
		want            bool
	}{
		{"*", actNICWrite, true},
		{"Microsoft.Network/*", actNICWrite, true},
		{"microsoft.network/networkinterfaces/*", actNICWrite, true},
		{"*/read", actNICRead, true},
		{"*/read", actNICWrite, false},
		{"Microsoft.Network/*/join/action", actPIPJoin, true},
		{"Microsoft.Network/*/join/action", actNICWrite, false},
		{"Microsoft.Compute/*", actNICWrite, false},
		{actNICWrite, actNICWrite, true},
		{"Microsoft.Network/networkInterfaces/write*", actNICWrite, true},
	} {
		if got := actionMatches(c.pattern, c.action); got != c.want {
			t.Errorf("actionMatches(%q, %q) = %v, want %v", c.pattern, c.action, got, c.want)
		}
	}
	perms := []permission{
		{Actions: []string{"*/read"}},
		{Actions: []string{"Microsoft.Network/*"}, NotActions: []string{"Microsoft.Network/publicIPAddresses/*"}},
	}
	for action, want := range map[string]bool{actNICWrite: true, actPIPRead: true, actPIPJoin: false, actTableWrite: true, "Microsoft.Compute/virtualMachines/write": false} {
		if got := allows(perms, action); got != want {
			t.Errorf("allows(%s) = %v, want %v", action, got, want)
		}
	}
}
