package emulator

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

const (
	azTestSub = "sub-1"
	azTestRG  = "rg"
)

// newAzureEmulator seeds two VMs, a public IP on vm-a and a route table.
func newAzureEmulator(t *testing.T) *Emulator {
	t.Helper()
	e, err := New(Options{})
	if err != nil {
		t.Fatalf("starting the emulator: %v", err)
	}
	t.Cleanup(func() { _ = e.Close() })
	az := e.Azure
	subnet := "/subscriptions/" + azTestSub + "/resourceGroups/" + azTestRG + "/providers/Microsoft.Network/virtualNetworks/vnet/subnets/sn"
	for i, n := range []string{"a", "b"} {
		if err := az.AddVM(AzureVM{Node: n, Subscription: azTestSub, ResourceGroup: azTestRG, Name: "vm-" + n,
			PrivateIP: "198.18.0." + string(rune('4'+i)), Subnet: subnet}); err != nil {
			t.Fatal(err)
		}
	}
	pip, err := az.AddPublicIP(AzurePublicIP{Subscription: azTestSub, ResourceGroup: azTestRG, Name: "vip", Address: "203.0.113.9"})
	if err != nil {
		t.Fatal(err)
	}
	if err := az.AttachPublicIP(pip, AzureNICID(azTestSub, azTestRG, "vm-a-nic"), "ipconfig1"); err != nil {
		t.Fatal(err)
	}
	if _, err := az.AddRouteTable(AzureRouteTable{Subscription: azTestSub, ResourceGroup: azTestRG, Name: "rt",
		Routes: []AzureRoute{{Name: "r", AddressPrefix: "198.51.100.0/24", NextHopIP: "198.18.0.4"}}}); err != nil {
		t.Fatal(err)
	}
	return e
}

type azResp struct {
	status int
	header http.Header
	body   map[string]any
}

// armCall sends one ARM request with a bearer token and decodes the answer.
func armCall(t *testing.T, e *Emulator, method, path string, body any, header ...string) azResp {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	url := path
	if !strings.HasPrefix(path, "https://") {
		url = e.URL() + path
		if !strings.Contains(path, "api-version") {
			url += "?api-version=2025-01-01"
		}
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer test")
	for i := 0; i+1 < len(header); i += 2 {
		if header[i+1] == "" {
			req.Header.Del(header[i])
		} else {
			req.Header.Set(header[i], header[i+1])
		}
	}
	resp, err := e.HTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := azResp{status: resp.StatusCode, header: resp.Header, body: map[string]any{}}
	b, _ := io.ReadAll(resp.Body)
	if len(b) > 0 {
		if err := json.Unmarshal(b, &out.body); err != nil {
			t.Fatalf("%s %s: answer is not JSON: %s", method, path, b)
		}
	}
	return out
}

func azErrCode(r azResp) string {
	if e, ok := r.body["error"].(map[string]any); ok {
		code, _ := e["code"].(string)
		return code
	}
	return ""
}

const azNet = "/subscriptions/" + azTestSub + "/resourceGroups/" + azTestRG + "/providers/Microsoft.Network"

// TestAzureFrontEndChecksTokenAndVersion: ARM's checks before any lookup.
func TestAzureFrontEndChecksTokenAndVersion(t *testing.T) {
	e := newAzureEmulator(t)
	if r := armCall(t, e, "GET", azNet+"/routeTables/rt", nil, "Authorization", ""); r.status != 401 || azErrCode(r) != "AuthenticationFailed" {
		t.Fatalf("no token: %d %s", r.status, azErrCode(r))
	}
	if r := armCall(t, e, "GET", azNet+"/routeTables/rt?x=1", nil); r.status != 400 || azErrCode(r) != "MissingApiVersionParameter" {
		t.Fatalf("no api-version: %d %s", r.status, azErrCode(r))
	}
	if r := armCall(t, e, "GET", azNet+"/routeTables/nope", nil); r.status != 404 || azErrCode(r) != "ResourceNotFound" {
		t.Fatalf("unknown table: %d %s", r.status, azErrCode(r))
	}
}

// TestAzureFrontEndSharedETagAndIfMatch: a route carries its table's ETag,
// a tag write changes it, and a write with the old one is refused.
func TestAzureFrontEndSharedETagAndIfMatch(t *testing.T) {
	e := newAzureEmulator(t)
	rt := armCall(t, e, "GET", azNet+"/routeTables/rt", nil)
	etag := rt.body["etag"].(string)
	route := rt.body["properties"].(map[string]any)["routes"].([]any)[0].(map[string]any)
	if route["etag"] != etag {
		t.Fatalf("route etag %v, table etag %v: want them shared", route["etag"], etag)
	}
	if r := armCall(t, e, "PATCH", azNet+"/routeTables/rt", map[string]any{"tags": map[string]string{"k": "v"}}, "If-Match", etag); r.status != 200 {
		t.Fatalf("tag write: %d %v", r.status, r.body)
	}
	put := map[string]any{"properties": map[string]any{"addressPrefix": "198.51.100.0/24", "nextHopType": "VirtualAppliance", "nextHopIpAddress": "198.18.0.5"}}
	if r := armCall(t, e, "PUT", azNet+"/routeTables/rt/routes/r", put, "If-Match", etag); r.status != 412 || azErrCode(r) != "PreconditionFailed" {
		t.Fatalf("route write with the pre-tag ETag: %d %s, want 412 PreconditionFailed", r.status, azErrCode(r))
	}
	if r := armCall(t, e, "PUT", azNet+"/routeTables/rt/routes/r", map[string]any{"properties": map[string]any{
		"addressPrefix": "198.51.100.0/24", "nextHopType": "VirtualAppliance"}}); r.status != 400 {
		t.Fatalf("appliance route without an IP: %d, want 400", r.status)
	}
	if r := armCall(t, e, "PUT", azNet+"/routeTables/rt/routes/r", put); r.status != 200 || r.header.Get("Azure-AsyncOperation") == "" {
		t.Fatalf("route write: %d, Azure-AsyncOperation %q", r.status, r.header.Get("Azure-AsyncOperation"))
	}
	if hop, tags, _ := e.Azure.RouteNextHop(AzureRouteTableID(azTestSub, azTestRG, "rt"), "r"); hop != "198.18.0.5" || tags["k"] != "v" {
		t.Fatalf("next hop %s tags %v", hop, tags)
	}
}

// TestAzureFrontEndLongRunningOperation: a write's operation reports
// InProgress for the configured time, with the resource Updating, then
// Succeeded; a second write meanwhile is refused as busy.
func TestAzureFrontEndLongRunningOperation(t *testing.T) {
	e := newAzureEmulator(t)
	e.Azure.SetOperationDuration(150 * time.Millisecond)
	put := map[string]any{"properties": map[string]any{"addressPrefix": "198.51.100.0/24", "nextHopType": "VirtualAppliance", "nextHopIpAddress": "198.18.0.5"}}
	r := armCall(t, e, "PUT", azNet+"/routeTables/rt/routes/r", put)
	opURL := r.header.Get("Azure-AsyncOperation")
	if r.status != 200 || r.body["properties"].(map[string]any)["provisioningState"] != "Updating" {
		t.Fatalf("write: %d %v", r.status, r.body)
	}
	if s := armCall(t, e, "GET", opURL, nil); s.body["status"] != "InProgress" {
		t.Fatalf("status right after the write: %v", s.body)
	}
	if b := armCall(t, e, "PUT", azNet+"/routeTables/rt/routes/r", put); b.status != 409 || azErrCode(b) != "AnotherOperationInProgress" {
		t.Fatalf("second write during the operation: %d %s", b.status, azErrCode(b))
	}
	time.Sleep(160 * time.Millisecond)
	if s := armCall(t, e, "GET", opURL, nil); s.body["status"] != "Succeeded" {
		t.Fatalf("status after the operation: %v", s.body)
	}
	if g := armCall(t, e, "GET", azNet+"/routeTables/rt/routes/r", nil); g.body["properties"].(map[string]any)["provisioningState"] != "Succeeded" {
		t.Fatalf("route after the operation: %v", g.body)
	}
}

// nicWithPIP returns nic's body with ipconfig1 referencing pip ("" for none).
func nicWithPIP(t *testing.T, e *Emulator, nic, pip string) (map[string]any, string) {
	t.Helper()
	r := armCall(t, e, "GET", azNet+"/networkInterfaces/"+nic, nil)
	cfg := r.body["properties"].(map[string]any)["ipConfigurations"].([]any)[0].(map[string]any)["properties"].(map[string]any)
	if pip == "" {
		delete(cfg, "publicIPAddress")
	} else {
		cfg["publicIPAddress"] = map[string]any{"id": pip}
	}
	return r.body, r.body["etag"].(string)
}

// TestAzureFrontEndPublicIPOnOneNICOnly: attaching a public IP that another
// NIC holds, or that a running detach still holds, is refused.
func TestAzureFrontEndPublicIPOnOneNICOnly(t *testing.T) {
	e := newAzureEmulator(t)
	pip := AzurePublicIPID(azTestSub, azTestRG, "vip")
	body, _ := nicWithPIP(t, e, "vm-b-nic", pip)
	if r := armCall(t, e, "PUT", azNet+"/networkInterfaces/vm-b-nic", body); r.status != 400 || azErrCode(r) != "PublicIPAddressInUse" {
		t.Fatalf("attach while vm-a holds it: %d %s", r.status, azErrCode(r))
	}
	e.Azure.SetOperationDuration(200 * time.Millisecond)
	detach, etag := nicWithPIP(t, e, "vm-a-nic", "")
	if r := armCall(t, e, "PUT", azNet+"/networkInterfaces/vm-a-nic", detach, "If-Match", etag); r.status != 200 {
		t.Fatalf("detach: %d %v", r.status, r.body)
	}
	if r := armCall(t, e, "PUT", azNet+"/networkInterfaces/vm-b-nic", body); r.status != 400 || azErrCode(r) != "PublicIPAddressInUse" {
		t.Fatalf("attach while the detach runs: %d %s", r.status, azErrCode(r))
	}
	time.Sleep(210 * time.Millisecond)
	if r := armCall(t, e, "PUT", azNet+"/networkInterfaces/vm-b-nic", body); r.status != 200 {
		t.Fatalf("attach after the detach: %d %v", r.status, r.body)
	}
	ipc, _, _ := e.Azure.PublicIPAttachment(pip)
	if !strings.EqualFold(ipc, AzureNICID(azTestSub, azTestRG, "vm-b-nic")+"/ipConfigurations/ipconfig1") {
		t.Fatalf("public IP on %q", ipc)
	}
	g := armCall(t, e, "GET", azNet+"/publicIPAddresses/vip", nil)
	if got := g.body["properties"].(map[string]any)["ipConfiguration"].(map[string]any)["id"]; got != AzureNICID(azTestSub, azTestRG, "vm-b-nic")+"/ipConfigurations/ipconfig1" {
		t.Fatalf("public IP's ipConfiguration = %v", got)
	}
	ev := e.Azure.Events()
	if len(ev) != 2 || ev[0].Kind != "detach" || ev[1].Kind != "attach" {
		t.Fatalf("events = %+v", ev)
	}
}

// TestAzureFrontEndFaultsAndPermissions: injected faults in ARM's format,
// linked join checks on NIC writes, and a permissions API that agrees with
// the Gate without using up its rules.
func TestAzureFrontEndFaultsAndPermissions(t *testing.T) {
	e := newAzureEmulator(t)
	g := e.Gate()
	g.Inject(Fault{Kind: Throttle, Cloud: "azure", Op: azOpTableRead, Times: 1})
	r := armCall(t, e, "GET", azNet+"/routeTables/rt", nil)
	if r.status != 429 || azErrCode(r) != "TooManyRequests" || r.header.Get("Retry-After") != "1" || r.header.Get("retry-after-ms") != "50" {
		t.Fatalf("throttle: %d %s Retry-After=%q retry-after-ms=%q", r.status, azErrCode(r), r.header.Get("Retry-After"), r.header.Get("retry-after-ms"))
	}
	g.Inject(Fault{Kind: PermissionDenied, Cloud: "azure", Op: azOpPIPJoin, Resource: "vip", Times: 1})
	perms := armCall(t, e, "GET", azNet+"/publicIPAddresses/vip/providers/Microsoft.Authorization/permissions?api-version=2022-04-01", nil)
	p := perms.body["value"].([]any)[0].(map[string]any)
	if na := p["notActions"].([]any); len(na) != 1 || na[0] != azOpPIPJoin {
		t.Fatalf("permissions on the public IP: %v, want join/action missing", p)
	}
	if perms := armCall(t, e, "GET", azNet+"/networkInterfaces/vm-b-nic/providers/Microsoft.Authorization/permissions?api-version=2022-04-01", nil); len(perms.body["value"].([]any)[0].(map[string]any)["notActions"].([]any)) != 0 {
		t.Fatalf("permissions on the NIC: %v, want nothing missing", perms.body)
	}
	// The dry read left the rule for the real call: the linked check hits it.
	detach, _ := nicWithPIP(t, e, "vm-a-nic", "")
	if r := armCall(t, e, "PUT", azNet+"/networkInterfaces/vm-a-nic", detach); r.status != 200 {
		t.Fatalf("detach: %d %v", r.status, r.body)
	}
	attach, _ := nicWithPIP(t, e, "vm-b-nic", AzurePublicIPID(azTestSub, azTestRG, "vip"))
	if r := armCall(t, e, "PUT", azNet+"/networkInterfaces/vm-b-nic", attach); r.status != 403 || azErrCode(r) != "LinkedAuthorizationFailed" {
		t.Fatalf("attach without join: %d %s", r.status, azErrCode(r))
	}
	g.Inject(Fault{Kind: StaleFingerprint, Cloud: "azure", Op: azOpNICWrite, Times: 1})
	if r := armCall(t, e, "PUT", azNet+"/networkInterfaces/vm-b-nic", attach); r.status != 412 || azErrCode(r) != "PreconditionFailed" {
		t.Fatalf("stale fingerprint fault: %d %s", r.status, azErrCode(r))
	}
	g.Inject(Fault{Kind: ServerError, Cloud: "azure", Resource: "vm-b-nic", Times: 1})
	if r := armCall(t, e, "GET", azNet+"/networkInterfaces/vm-b-nic", nil); r.status != 500 || azErrCode(r) != "InternalServerError" {
		t.Fatalf("server error fault: %d %s", r.status, azErrCode(r))
	}
	if r := armCall(t, e, "PUT", azNet+"/networkInterfaces/vm-b-nic", attach); r.status != 200 {
		t.Fatalf("attach once the faults are spent: %d %v", r.status, r.body)
	}
}

// TestAzureMetadataPerNode: each node's listener describes its own VM and
// refuses requests without the Metadata header, as IMDS does.
func TestAzureMetadataPerNode(t *testing.T) {
	e := newAzureEmulator(t)
	for _, node := range []string{"a", "b"} {
		url, stop, err := e.Azure.MetadataServer(node)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = stop() })
		get := func(withHeader bool) (int, azIMDSInstance) {
			req, _ := http.NewRequest("GET", url+"/metadata/instance?api-version=2021-02-01", nil)
			if withHeader {
				req.Header.Set("Metadata", "true")
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var m azIMDSInstance
			_ = json.NewDecoder(resp.Body).Decode(&m)
			return resp.StatusCode, m
		}
		if code, _ := get(false); code != 400 {
			t.Fatalf("node %s without Metadata header: %d, want 400", node, code)
		}
		code, m := get(true)
		if code != 200 || m.Compute.Name != "vm-"+node || m.Compute.SubscriptionID != azTestSub ||
			m.Compute.ResourceID != AzureVMID(azTestSub, azTestRG, "vm-"+node) || len(m.Network.Interface) != 1 {
			t.Fatalf("node %s metadata: %d %+v", node, code, m)
		}
		wantPublic := map[string]string{"a": "203.0.113.9", "b": ""}[node]
		if a := m.Network.Interface[0].IPv4.IPAddress[0]; a.PublicIPAddress != wantPublic {
			t.Fatalf("node %s public IP %q, want %q", node, a.PublicIPAddress, wantPublic)
		}
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		if err := stop(); err != nil {
			t.Fatalf("second stop: %v", err)
		}
	}
	if _, _, err := e.Azure.MetadataServer("nobody"); err == nil {
		t.Fatal("metadata server for an unknown node: no error")
	}
}
