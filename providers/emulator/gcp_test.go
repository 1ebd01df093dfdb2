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

const gcpTestProject = "p1"

func newGCPEmulator(t *testing.T) *Emulator {
	t.Helper()
	e, err := New(Options{})
	if err != nil {
		t.Fatalf("starting the emulator: %v", err)
	}
	t.Cleanup(func() { _ = e.Close() })
	g := e.GCP
	for i, n := range []string{"vm-a", "vm-b"} {
		g.AddInstance(GCPInstance{Project: gcpTestProject, Zone: "us-central1-a", Name: n, Network: "vpc", Subnetwork: "s", IP: "10.0.0." + string(rune('1'+i))})
		g.AddTargetInstance(gcpTestProject, "us-central1-a", n, n)
	}
	g.AddForwardingRule(gcpTestProject, "us-central1", "fr", "203.0.113.7", "zones/us-central1-a/targetInstances/vm-a")
	return e
}

// gceCall sends one JSON request to the emulator's GCE API and decodes the
// answer.
func gceCall(t *testing.T, e *Emulator, method, path string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, e.URL()+"/compute/v1/projects/"+gcpTestProject+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := e.HTTPClient().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("%s %s: decoding the answer: %v", method, path, err)
	}
	return resp.StatusCode, out
}

func errorReason(m map[string]any) string {
	e, _ := m["error"].(map[string]any)
	errs, _ := e["errors"].([]any)
	if len(errs) == 0 {
		return ""
	}
	return errs[0].(map[string]any)["reason"].(string)
}

func TestGCPEmulatorFaultsUseGoogleErrorEnvelope(t *testing.T) {
	e := newGCPEmulator(t)
	cases := []struct {
		kind   FaultKind
		status int
		reason string
	}{
		{Throttle, 429, "rateLimitExceeded"},
		{ServerError, 503, "backendError"},
		{PermissionDenied, 403, "forbidden"},
		{StaleFingerprint, 412, "conditionNotMet"},
	}
	for _, c := range cases {
		e.Gate().ClearFaults()
		e.Gate().Inject(Fault{Kind: c.kind, Cloud: "gcp", Op: "compute.forwardingRules.get", Resource: "fr", Times: 1})
		status, body := gceCall(t, e, "GET", "/regions/us-central1/forwardingRules/fr", nil)
		if status != c.status || errorReason(body) != c.reason {
			t.Errorf("gcp fault %s: HTTP %d %q, want %d %q (%v)", c.kind, status, errorReason(body), c.status, c.reason, body)
		}
		if code, _ := body["error"].(map[string]any)["code"].(float64); int(code) != c.status {
			t.Errorf("gcp fault %s: error.code %v, want %d", c.kind, code, c.status)
		}
	}
	if status, body := gceCall(t, e, "GET", "/regions/us-central1/forwardingRules/nope", nil); status != 404 || errorReason(body) != "notFound" {
		t.Errorf("gcp missing rule: HTTP %d %v", status, body)
	}
	if n := e.Gate().Calls("gcp", "compute.forwardingRules.get"); n != 5 {
		t.Errorf("gate counted %d forwardingRules.get calls, want 5", n)
	}
}

func TestGCPEmulatorRequestIDIsIdempotent(t *testing.T) {
	e := newGCPEmulator(t)
	path := "/regions/us-central1/forwardingRules/fr/setTarget?requestId=5f0c6a0e-8f54-4a5e-9d1e-3c3b1b7f2a11"
	_, op1 := gceCall(t, e, "POST", path, map[string]string{"target": "zones/us-central1-a/targetInstances/vm-b"})
	// The same requestId with another body: GCE returns the first
	// operation and changes nothing.
	_, op2 := gceCall(t, e, "POST", path, map[string]string{"target": "zones/us-central1-a/targetInstances/vm-a"})
	if op1["name"] == nil || op1["name"] != op2["name"] {
		t.Fatalf("gcp same requestId: operations %v and %v, want the same one", op1["name"], op2["name"])
	}
	if got := e.GCP.ForwardingRuleTarget(gcpTestProject, "us-central1", "fr"); !strings.HasSuffix(got, "/vm-b") {
		t.Fatalf("gcp target after a replayed request = %q, want vm-b", got)
	}
	status, body := gceCall(t, e, "POST", "/regions/us-central1/forwardingRules/fr/setTarget?requestId=not-a-uuid",
		map[string]string{"target": "zones/us-central1-a/targetInstances/vm-a"})
	if status != 400 || errorReason(body) != "invalid" {
		t.Fatalf("gcp requestId that is no UUID: HTTP %d %v", status, body)
	}
}

func TestGCPEmulatorOperationPendingThenDone(t *testing.T) {
	e := newGCPEmulator(t)
	e.GCP.SetOperationDelay(60 * time.Millisecond)
	start := time.Now()
	_, op := gceCall(t, e, "POST", "/regions/us-central1/forwardingRules/fr/setTarget",
		map[string]string{"target": "zones/us-central1-a/targetInstances/vm-b"})
	name, _ := op["name"].(string)
	if op["status"] != "RUNNING" {
		t.Fatalf("gcp operation right after the call: %v, want RUNNING", op["status"])
	}
	if _, got := gceCall(t, e, "GET", "/regions/us-central1/operations/"+name, nil); got["status"] != "RUNNING" {
		t.Fatalf("gcp operation get before the delay: %v", got["status"])
	}
	_, done := gceCall(t, e, "POST", "/regions/us-central1/operations/"+name+"/wait", nil)
	if done["status"] != "DONE" || time.Since(start) < 60*time.Millisecond {
		t.Fatalf("gcp operation wait: %v after %v, want DONE after the delay", done["status"], time.Since(start))
	}
	if status, _ := gceCall(t, e, "GET", "/zones/us-central1-a/operations/"+name, nil); status != 404 {
		t.Fatalf("gcp regional operation looked up as zonal: HTTP %d, want 404", status)
	}
}

func TestGCPEmulatorNetworkInterfacePatch(t *testing.T) {
	e := newGCPEmulator(t)
	nic := func(vm string) map[string]any {
		_, in := gceCall(t, e, "GET", "/zones/us-central1-a/instances/"+vm, nil)
		return in["networkInterfaces"].([]any)[0].(map[string]any)
	}
	patch := func(vm string, body map[string]any) (int, map[string]any) {
		return gceCall(t, e, "PATCH", "/zones/us-central1-a/instances/"+vm+"/updateNetworkInterface?networkInterface=nic0", body)
	}
	alias := []map[string]string{{"ipCidrRange": "10.0.0.100/32"}}
	if status, op := patch("vm-a", map[string]any{"fingerprint": nic("vm-a")["fingerprint"], "aliasIpRanges": alias}); status != 200 || op["error"] != nil {
		t.Fatalf("gcp add alias: HTTP %d %v", status, op)
	}
	if status, body := patch("vm-a", map[string]any{"fingerprint": "c3RhbGU=", "aliasIpRanges": []any{}}); status != 412 || errorReason(body) != "conditionNotMet" {
		t.Fatalf("gcp stale NIC fingerprint: HTTP %d %v", status, body)
	}
	// The range is on vm-a: GCE fails the operation on vm-b.
	_, op := patch("vm-b", map[string]any{"fingerprint": nic("vm-b")["fingerprint"], "aliasIpRanges": alias})
	errs, _ := op["error"].(map[string]any)["errors"].([]any)
	if len(errs) != 1 || errs[0].(map[string]any)["code"] != "IP_IN_USE_BY_ANOTHER_RESOURCE" || op["httpErrorStatusCode"] != float64(400) {
		t.Fatalf("gcp alias in use elsewhere: operation %v", op)
	}
	// PATCH semantics: without aliasIpRanges nothing changes; [] clears.
	patch("vm-a", map[string]any{"fingerprint": nic("vm-a")["fingerprint"]})
	if got := e.GCP.InstanceAliases(gcpTestProject, "us-central1-a", "vm-a"); len(got) != 1 {
		t.Fatalf("gcp patch without aliasIpRanges changed them: %v", got)
	}
	patch("vm-a", map[string]any{"fingerprint": nic("vm-a")["fingerprint"], "aliasIpRanges": []any{}})
	if got := e.GCP.InstanceAliases(gcpTestProject, "us-central1-a", "vm-a"); len(got) != 0 {
		t.Fatalf("gcp patch with aliasIpRanges [] left %v", got)
	}
}

func TestGCPEmulatorRoutes(t *testing.T) {
	e := newGCPEmulator(t)
	route := map[string]any{"name": "r1", "network": "global/networks/vpc", "destRange": "198.51.100.0/24",
		"nextHopInstance": "zones/us-central1-a/instances/vm-a", "description": "x"}
	if status, _ := gceCall(t, e, "POST", "/global/routes", route); status != 200 {
		t.Fatalf("gcp route insert: HTTP %d", status)
	}
	if status, body := gceCall(t, e, "POST", "/global/routes", route); status != 409 || errorReason(body) != "alreadyExists" {
		t.Fatalf("gcp duplicate route: HTTP %d %v", status, body)
	}
	_, list := gceCall(t, e, "GET", `/global/routes?filter=destRange+%3D+%22198.51.100.0%2F24%22`, nil)
	if items, _ := list["items"].([]any); len(items) != 1 {
		t.Fatalf("gcp filtered list: %v", list)
	}
	_, list = gceCall(t, e, "GET", `/global/routes?filter=destRange+%3D+%2210.0.0.0%2F8%22`, nil)
	if items, _ := list["items"].([]any); len(items) != 0 {
		t.Fatalf("gcp list filtered on another destination: %v", list)
	}
	if status, _ := gceCall(t, e, "GET", `/global/routes?filter=color+%3D+blue`, nil); status != 400 {
		t.Fatalf("gcp list with an unknown filter field: HTTP %d, want 400", status)
	}
	if status, _ := gceCall(t, e, "DELETE", "/global/routes/r1", nil); status != 200 || len(e.GCP.Routes(gcpTestProject)) != 0 {
		t.Fatalf("gcp route delete: HTTP %d, routes %v", status, e.GCP.Routes(gcpTestProject))
	}
}

func TestGCPEmulatorMetadataServer(t *testing.T) {
	e := newGCPEmulator(t)
	url, stop, err := e.GCP.MetadataServer(gcpTestProject, "us-central1-a", "vm-b")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stop(); _ = stop() })
	get := func(path string, flavor bool) (int, string) {
		req, _ := http.NewRequest("GET", url+"/computeMetadata/v1/"+path, nil)
		if flavor {
			req.Header.Set("Metadata-Flavor", "Google")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if status, _ := get("instance/name", false); status != 403 {
		t.Fatalf("gcp metadata without Metadata-Flavor: HTTP %d, want 403", status)
	}
	for path, want := range map[string]string{
		"instance/name": "vm-b", "instance/network-interfaces/0/ip": "10.0.0.2", "project/project-id": gcpTestProject,
	} {
		if status, got := get(path, true); status != 200 || got != want {
			t.Errorf("gcp metadata %s = %d %q, want %q", path, status, got, want)
		}
	}
	if _, zone := get("instance/zone", true); !strings.HasSuffix(zone, "/zones/us-central1-a") || !strings.HasPrefix(zone, "projects/") {
		t.Errorf("gcp metadata zone = %q", zone)
	}
	if status, _ := get("instance/nope", true); status != 404 {
		t.Errorf("gcp metadata unknown key: HTTP %d", status)
	}
	if _, _, err := e.GCP.MetadataServer(gcpTestProject, "us-central1-a", "vm-zzz"); err == nil {
		t.Error("gcp metadata server for an unknown instance started")
	}
}
