package emulator

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// ec2Fleet starts an emulator with two instances in one VPC, an Elastic IP
// on a secondary IP of the first, and a route table pointing at it.
func ec2Fleet(t *testing.T) *Emulator {
	t.Helper()
	em, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = em.Close() })
	f := em.AWS
	for i, name := range []string{"a", "b"} {
		must(t, f.AddInstance(AWSInstance{
			ID: "i-" + name, Region: "eu-west-1", NetworkInterfaceID: "eni-" + name, MAC: fmt.Sprintf("0e:00:00:00:00:0%d", i),
			VPCID: "vpc-1", SubnetID: "subnet-1", SubnetCIDR: "198.18.0.0/16", PrivateIP: fmt.Sprintf("198.18.1.%d", 11+i),
		}))
	}
	must(t, f.AddInstance(AWSInstance{
		ID: "i-other", NetworkInterfaceID: "eni-other", MAC: "0e:00:00:00:00:09",
		VPCID: "vpc-2", SubnetID: "subnet-2", SubnetCIDR: "192.0.2.0/24", PrivateIP: "192.0.2.10",
	}))
	must(t, f.AddAddress("eipalloc-1", "203.0.113.100"))
	must(t, f.AddAddress("eipalloc-2", "203.0.113.101"))
	must(t, f.AssignPrivateIP("eni-a", "198.18.2.100"))
	must(t, f.Associate("eipalloc-1", "eni-a", "198.18.2.100"))
	must(t, f.AddRouteTable("rtb-1", "vpc-1", "198.18.0.0/16"))
	must(t, f.AddRoute("rtb-1", "198.51.100.0/24", "eni-a"))
	return em
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

type ec2Reply struct {
	status int
	body   string
}

// ec2Errors is the EC2 error envelope.
type ec2Errors struct {
	XMLName   xml.Name `xml:"Response"`
	Code      string   `xml:"Errors>Error>Code"`
	Message   string   `xml:"Errors>Error>Message"`
	RequestID string   `xml:"RequestID"`
}

func (r ec2Reply) code(t *testing.T) string {
	t.Helper()
	var e ec2Errors
	if err := xml.Unmarshal([]byte(r.body), &e); err != nil {
		t.Fatalf("EC2 error body %q: %v", r.body, err)
	}
	if e.RequestID == "" || e.Message == "" {
		t.Fatalf("EC2 error body lacks RequestID or Message: %s", r.body)
	}
	return e.Code
}

// ec2Post sends one query API call the way the SDK does: a form POST with a
// SigV4 Authorization header (the emulator does not check the signature).
func ec2Post(t *testing.T, em *Emulator, signed bool, params ...string) ec2Reply {
	t.Helper()
	q := url.Values{"Version": {ec2APIVersion}}
	for i := 0; i+1 < len(params); i += 2 {
		q.Set(params[i], params[i+1])
	}
	req, err := http.NewRequest(http.MethodPost, em.URL()+"/", strings.NewReader(q.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
	if signed {
		req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=AKIDTEST/20260101/eu-west-1/ec2/aws4_request, SignedHeaders=host;x-amz-date, Signature=00")
	}
	resp, err := em.HTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return ec2Reply{status: resp.StatusCode, body: string(b)}
}

func TestAWSEmulatorErrorEnvelopes(t *testing.T) {
	em := ec2Fleet(t)
	g := em.Gate()
	cases := []struct {
		kind   FaultKind
		status int
		code   string
	}{
		{Throttle, 503, "RequestLimitExceeded"},
		{ServerError, 500, "InternalError"},
		{PermissionDenied, 403, "UnauthorizedOperation"},
		{StaleFingerprint, 400, "IncorrectState"},
	}
	for _, c := range cases {
		g.ClearFaults()
		g.Inject(Fault{Kind: c.kind, Cloud: "aws", Op: "AssociateAddress", Resource: "eipalloc-2", Times: 1})
		r := ec2Post(t, em, true, "Action", "AssociateAddress", "AllocationId", "eipalloc-2", "NetworkInterfaceId", "eni-b")
		if r.status != c.status || r.code(t) != c.code {
			t.Errorf("aws emulator %s fault: %d %s, want %d %s", c.kind, r.status, r.code(t), c.status, c.code)
		}
	}
	g.ClearFaults()
	for _, c := range []struct {
		signed bool
		params []string
		status int
		code   string
	}{
		{false, []string{"Action", "DescribeAddresses"}, 401, "AuthFailure"},
		{true, []string{"Action", "RunInstances"}, 400, "InvalidAction"},
		{true, []string{"Action", "DescribeAddresses", "Version", "2010-01-01"}, 400, "NoSuchVersion"},
		{true, []string{"Action", "DescribeAddresses", "AllocationId.1", "eipalloc-9"}, 400, "InvalidAllocationID.NotFound"},
		{true, []string{"Action", "DescribeRouteTables", "RouteTableId.1", "rtb-9"}, 400, "InvalidRouteTableID.NotFound"},
		{true, []string{"Action", "DescribeNetworkInterfaces", "NetworkInterfaceId.1", "eni-9"}, 400, "InvalidNetworkInterfaceID.NotFound"},
		{true, []string{"Action", "CreateTags", "ResourceId.1", "eipalloc-1", "Tag.1.Key", "k", "Tag.1.Value", "v", "DryRun", "true"}, 412, "DryRunOperation"},
	} {
		r := ec2Post(t, em, c.signed, c.params...)
		if r.status != c.status || r.code(t) != c.code {
			t.Errorf("aws emulator %v: %d %s, want %d %s", c.params, r.status, r.code(t), c.status, c.code)
		}
	}
	if ops := g.Ops("aws"); !slices.Equal(ops, []string{"AssociateAddress", "CreateTags", "DescribeAddresses",
		"DescribeNetworkInterfaces", "DescribeRouteTables", "RunInstances"}) {
		t.Errorf("gate ops for aws = %v", ops)
	}
}

func TestAWSEmulatorAnswerShape(t *testing.T) {
	em := ec2Fleet(t)
	r := ec2Post(t, em, true, "Action", "DescribeAddresses", "AllocationId.1", "eipalloc-1")
	var ans struct {
		XMLName   xml.Name
		RequestID string `xml:"requestId"`
	}
	if err := xml.Unmarshal([]byte(r.body), &ans); err != nil || r.status != 200 {
		t.Fatalf("DescribeAddresses: %d %s (%v)", r.status, r.body, err)
	}
	if ans.XMLName.Local != "DescribeAddressesResponse" || ans.XMLName.Space != ec2Namespace || ans.RequestID == "" {
		t.Fatalf("DescribeAddresses answer root %v, request ID %q", ans.XMLName, ans.RequestID)
	}
	for _, want := range []string{"<allocationId>eipalloc-1</allocationId>", "<publicIp>203.0.113.100</publicIp>",
		"<networkInterfaceId>eni-a</networkInterfaceId>", "<privateIpAddress>198.18.2.100</privateIpAddress>",
		"<instanceId>i-a</instanceId>", "<domain>vpc</domain>"} {
		if !strings.Contains(r.body, want) {
			t.Errorf("DescribeAddresses answer lacks %s: %s", want, r.body)
		}
	}
}

func TestAWSEmulatorEIPFollowsPrivateIP(t *testing.T) {
	em := ec2Fleet(t)
	f := em.AWS
	r := ec2Post(t, em, true, "Action", "AssignPrivateIpAddresses", "NetworkInterfaceId", "eni-b", "PrivateIpAddress.1", "198.18.2.100")
	if r.status != 400 || r.code(t) != "PrivateIpAddressInUse" {
		t.Fatalf("reassigning without AllowReassignment: %d %s", r.status, r.body)
	}
	r = ec2Post(t, em, true, "Action", "AssignPrivateIpAddresses", "NetworkInterfaceId", "eni-b",
		"PrivateIpAddress.1", "198.18.2.100", "AllowReassignment", "true")
	if r.status != 200 {
		t.Fatalf("reassigning with AllowReassignment: %d %s", r.status, r.body)
	}
	if st, _ := f.Address("eipalloc-1"); st.NetworkInterfaceID != "eni-b" || st.InstanceID != "i-b" || st.PrivateIP != "198.18.2.100" {
		t.Fatalf("eip after its private IP moved: %+v, want it on eni-b with the IP", st)
	}
	if slices.Contains(f.PrivateIPs("eni-a"), "198.18.2.100") {
		t.Fatalf("the moved IP is still on eni-a: %v", f.PrivateIPs("eni-a"))
	}
	for _, c := range []struct {
		params []string
		code   string
	}{
		{[]string{"NetworkInterfaceId", "eni-a", "PrivateIpAddress.1", "10.9.9.9", "AllowReassignment", "true"}, "InvalidParameterValue"},
		{[]string{"NetworkInterfaceId", "eni-b", "PrivateIpAddress.1", "198.18.1.11", "AllowReassignment", "true"}, "InvalidParameterValue"},
	} {
		r := ec2Post(t, em, true, append([]string{"Action", "AssignPrivateIpAddresses"}, c.params...)...)
		if r.status != 400 || r.code(t) != c.code {
			t.Errorf("AssignPrivateIpAddresses %v: %d %s, want %s", c.params, r.status, r.body, c.code)
		}
	}
	// Associating elsewhere needs AllowReassociation.
	r = ec2Post(t, em, true, "Action", "AssociateAddress", "AllocationId", "eipalloc-1", "NetworkInterfaceId", "eni-a")
	if r.status != 400 || r.code(t) != "Resource.AlreadyAssociated" {
		t.Fatalf("AssociateAddress of an associated EIP without AllowReassociation: %d %s", r.status, r.body)
	}
	r = ec2Post(t, em, true, "Action", "AssociateAddress", "AllocationId", "eipalloc-1", "InstanceId", "i-a", "AllowReassociation", "true")
	if r.status != 200 || !strings.Contains(r.body, "<associationId>eipassoc-") {
		t.Fatalf("AssociateAddress by instance: %d %s", r.status, r.body)
	}
	if st, _ := f.Address("eipalloc-1"); st.NetworkInterfaceID != "eni-a" || st.PrivateIP != "198.18.1.11" {
		t.Fatalf("eip associated by instance: %+v, want eni-a's primary IP", st)
	}
	r = ec2Post(t, em, true, "Action", "AssociateAddress", "AllocationId", "eipalloc-2", "NetworkInterfaceId", "eni-a",
		"PrivateIpAddress", "198.18.2.100")
	if r.status != 400 || r.code(t) != "InvalidParameterValue" {
		t.Fatalf("AssociateAddress onto an IP the interface lacks: %d %s", r.status, r.body)
	}
}

func TestAWSEmulatorRoutesAndTags(t *testing.T) {
	em := ec2Fleet(t)
	f := em.AWS
	for _, c := range []struct {
		params []string
		code   string
	}{
		{[]string{"RouteTableId", "rtb-1", "DestinationCidrBlock", "198.18.0.0/16", "NetworkInterfaceId", "eni-b"}, "InvalidParameterValue"},
		{[]string{"RouteTableId", "rtb-1", "DestinationCidrBlock", "10.0.0.0/8", "NetworkInterfaceId", "eni-b"}, "InvalidRoute.NotFound"},
		{[]string{"RouteTableId", "rtb-1", "DestinationCidrBlock", "198.51.100.0/24", "NetworkInterfaceId", "eni-other"}, "InvalidParameterValue"},
		{[]string{"RouteTableId", "rtb-1", "DestinationCidrBlock", "198.51.100.0/24", "NetworkInterfaceId", "eni-9"}, "InvalidNetworkInterfaceID.NotFound"},
	} {
		r := ec2Post(t, em, true, append([]string{"Action", "ReplaceRoute"}, c.params...)...)
		if r.status != 400 || r.code(t) != c.code {
			t.Errorf("ReplaceRoute %v: %d %s, want %s", c.params, r.status, r.body, c.code)
		}
	}
	r := ec2Post(t, em, true, "Action", "ReplaceRoute", "RouteTableId", "rtb-1", "DestinationCidrBlock", "198.51.100.0/24", "NetworkInterfaceId", "eni-b")
	if eni, _ := f.RouteTarget("rtb-1", "198.51.100.0/24"); r.status != 200 || eni != "eni-b" {
		t.Fatalf("ReplaceRoute: %d %s, target %s", r.status, r.body, eni)
	}

	// CreateTags is all or nothing.
	r = ec2Post(t, em, true, "Action", "CreateTags", "ResourceId.1", "eipalloc-1", "ResourceId.2", "rtb-9",
		"Tag.1.Key", "handoff:term", "Tag.1.Value", "3")
	if r.status != 400 || r.code(t) != "InvalidRouteTableID.NotFound" || len(f.Tags("eipalloc-1")) != 0 {
		t.Fatalf("CreateTags with one missing resource: %d %s, tags %v", r.status, r.body, f.Tags("eipalloc-1"))
	}
	r = ec2Post(t, em, true, "Action", "CreateTags", "ResourceId.1", "eipalloc-1", "Tag.1.Key", "aws:x", "Tag.1.Value", "1")
	if r.status != 400 || r.code(t) != "InvalidParameterValue" {
		t.Fatalf("CreateTags with an aws: key: %d %s", r.status, r.body)
	}
	tags := make(map[string]string)
	for i := range 50 {
		tags[fmt.Sprintf("k%d", i)] = "v"
	}
	must(t, f.SetTags("rtb-1", tags))
	r = ec2Post(t, em, true, "Action", "CreateTags", "ResourceId.1", "rtb-1", "Tag.1.Key", "k51", "Tag.1.Value", "v")
	if r.status != 400 || r.code(t) != "TagLimitExceeded" {
		t.Fatalf("CreateTags past 50 tags: %d %s", r.status, r.body)
	}
	// Overwriting an existing key is not a new tag.
	r = ec2Post(t, em, true, "Action", "CreateTags", "ResourceId.1", "rtb-1", "Tag.1.Key", "k7", "Tag.1.Value", "w")
	if r.status != 200 || f.Tags("rtb-1")["k7"] != "w" {
		t.Fatalf("CreateTags overwriting a key at the limit: %d %s", r.status, r.body)
	}
}

func TestAWSEmulatorFilters(t *testing.T) {
	em := ec2Fleet(t)
	must(t, em.AWS.SetTags("eipalloc-2", map[string]string{"handoff:node": "gw-2"}))
	for _, c := range []struct {
		params []string
		want   []string
		absent []string
	}{
		{[]string{"Action", "DescribeAddresses", "Filter.1.Name", "tag:handoff:node", "Filter.1.Value.1", "gw-*"},
			[]string{"eipalloc-2"}, []string{"eipalloc-1"}},
		{[]string{"Action", "DescribeAddresses", "Filter.1.Name", "network-interface-id", "Filter.1.Value.1", "eni-x", "Filter.1.Value.2", "eni-a"},
			[]string{"eipalloc-1"}, []string{"eipalloc-2"}},
		{[]string{"Action", "DescribeAddresses", "Filter.1.Name", "domain", "Filter.1.Value.1", "vpc", "Filter.2.Name", "public-ip", "Filter.2.Value.1", "203.0.113.10?"},
			[]string{"eipalloc-1", "eipalloc-2"}, nil},
		{[]string{"Action", "DescribeRouteTables", "Filter.1.Name", "route.destination-cidr-block", "Filter.1.Value.1", "198.51.*"},
			[]string{"rtb-1"}, nil},
		{[]string{"Action", "DescribeNetworkInterfaces", "Filter.1.Name", "addresses.private-ip-address", "Filter.1.Value.1", "198.18.2.100"},
			[]string{"eni-a"}, []string{"eni-b"}},
		{[]string{"Action", "DescribeNetworkInterfaces", "Filter.1.Name", "attachment.instance-id", "Filter.1.Value.1", "i-b"},
			[]string{"eni-b"}, []string{"eni-a"}},
	} {
		r := ec2Post(t, em, true, c.params...)
		if r.status != 200 {
			t.Errorf("%v: %d %s", c.params, r.status, r.body)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(r.body, ">"+w+"<") {
				t.Errorf("%v: answer lacks %s", c.params, w)
			}
		}
		for _, a := range c.absent {
			if strings.Contains(r.body, ">"+a+"<") {
				t.Errorf("%v: answer has %s", c.params, a)
			}
		}
	}
	r := ec2Post(t, em, true, "Action", "DescribeAddresses", "Filter.1.Name", "colour", "Filter.1.Value.1", "red")
	if r.status != 400 || r.code(t) != "InvalidParameterValue" {
		t.Fatalf("unknown filter: %d %s", r.status, r.body)
	}
}

// TestAWSEmulatorBatchFault: a fault naming one resource hits any call
// that touches it, batched or not, and only those.
func TestAWSEmulatorBatchFault(t *testing.T) {
	em := ec2Fleet(t)
	em.Gate().Inject(Fault{Kind: ServerError, Cloud: "aws", Resource: "eipalloc-1"})
	if r := ec2Post(t, em, true, "Action", "DescribeAddresses", "AllocationId.1", "eipalloc-2", "AllocationId.2", "eipalloc-1"); r.status != 500 {
		t.Fatalf("batch touching the faulted resource: %d %s", r.status, r.body)
	}
	if r := ec2Post(t, em, true, "Action", "DescribeAddresses", "AllocationId.1", "eipalloc-2"); r.status != 200 {
		t.Fatalf("call not touching the faulted resource: %d %s", r.status, r.body)
	}
	em.Gate().Inject(Fault{Kind: Throttle, Cloud: "aws", Op: "ReplaceRoute", Resource: "rtb-1|198.51.100.0/24", Times: 1})
	r := ec2Post(t, em, true, "Action", "ReplaceRoute", "RouteTableId", "rtb-1", "DestinationCidrBlock", "198.51.100.0/24", "NetworkInterfaceId", "eni-b")
	if r.status != 503 || r.code(t) != "RequestLimitExceeded" {
		t.Fatalf("route-targeted throttle: %d %s", r.status, r.body)
	}
}

func TestAWSEmulatorIMDSv2(t *testing.T) {
	em := ec2Fleet(t)
	md, err := em.AWS.MetadataServer("i-b")
	if err != nil {
		t.Fatal(err)
	}
	defer md.Close()
	if _, err := em.AWS.MetadataServer("i-9"); err == nil {
		t.Fatal("metadata server for an unknown instance started")
	}
	do := func(method, path string, hdr ...string) (int, string) {
		req, _ := http.NewRequest(method, md.URL()+path, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if st, _ := do("GET", "/latest/meta-data/instance-id"); st != 401 {
		t.Fatalf("IMDS GET without a token: %d, want 401 (IMDSv1 is off)", st)
	}
	if st, _ := do("PUT", "/latest/api/token"); st != 400 {
		t.Fatalf("IMDS token without a TTL: %d, want 400", st)
	}
	if st, _ := do("PUT", "/latest/api/token", "X-aws-ec2-metadata-token-ttl-seconds", "60", "X-Forwarded-For", "1.2.3.4"); st != 403 {
		t.Fatalf("IMDS token through a proxy: %d, want 403", st)
	}
	st, tok := do("PUT", "/latest/api/token", "X-aws-ec2-metadata-token-ttl-seconds", "60")
	if st != 200 || tok == "" {
		t.Fatalf("IMDS token: %d %q", st, tok)
	}
	if st, _ := do("GET", "/latest/meta-data/instance-id", "X-aws-ec2-metadata-token", "forged"); st != 401 {
		t.Fatalf("IMDS GET with a forged token: %d, want 401", st)
	}
	get := func(path string) string {
		st, body := do("GET", path, "X-aws-ec2-metadata-token", tok)
		if st != 200 {
			t.Fatalf("IMDS GET %s: %d %s", path, st, body)
		}
		return body
	}
	if v := get("/latest/meta-data/instance-id"); v != "i-b" {
		t.Fatalf("instance-id = %q", v)
	}
	mac := get("/latest/meta-data/mac")
	if v := get("/latest/meta-data/network/interfaces/macs/" + mac + "/interface-id"); v != "eni-b" {
		t.Fatalf("interface-id of %s = %q", mac, v)
	}
	must(t, em.AWS.AssignPrivateIP("eni-b", "198.18.2.200"))
	if v := get("/latest/meta-data/network/interfaces/macs/" + mac + "/local-ipv4s"); v != "198.18.1.12\n198.18.2.200" {
		t.Fatalf("local-ipv4s = %q, want the primary and the new secondary", v)
	}
	var doc struct{ Region, InstanceID, PrivateIP string }
	if err := json.Unmarshal([]byte(get("/latest/dynamic/instance-identity/document")), &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Region != "eu-west-1" || doc.InstanceID != "i-b" || doc.PrivateIP != "198.18.1.12" {
		t.Fatalf("identity document = %+v", doc)
	}
	if st, _ := do("GET", "/latest/meta-data/network/interfaces/macs/0e:ff:ff:ff:ff:ff/interface-id", "X-aws-ec2-metadata-token", tok); st != 404 {
		t.Fatalf("interface-id of a foreign MAC: %d, want 404", st)
	}
	if err := md.Close(); err != nil {
		t.Fatal(err)
	}
	if err := md.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// The lab serves the API on a listener per gateway and steers packets from
// OnChange: a call on any listener changes the one model, and the hooks run
// after changes only, seeing the change, before the caller has its answer.
func TestAWSEmulatorServeAndOnChange(t *testing.T) {
	em := ec2Fleet(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	em.Serve(ln)
	other := &Emulator{ln: ln, pool: em.pool}
	var mu sync.Mutex
	var seen []string // where the VIP was at each hook call
	em.AWS.OnChange(func() {
		st, _ := em.AWS.Address("eipalloc-1")
		mu.Lock()
		seen = append(seen, st.NetworkInterfaceID)
		mu.Unlock()
	})
	calls := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
	if r := ec2Post(t, other, true, "Action", "DescribeAddresses"); r.status != 200 {
		t.Fatalf("DescribeAddresses on the second listener: %d %s", r.status, r.body)
	}
	if r := ec2Post(t, em, true, "Action", "AssignPrivateIpAddresses", "NetworkInterfaceId", "eni-b", "PrivateIpAddress.1", "198.18.2.100"); r.status != 400 {
		t.Fatalf("refused reassignment: %d %s", r.status, r.body)
	}
	if got := calls(); len(got) != 0 {
		t.Fatalf("hooks ran after a read and a refused call: %v", got)
	}
	r := ec2Post(t, other, true, "Action", "AssignPrivateIpAddresses", "NetworkInterfaceId", "eni-b",
		"PrivateIpAddress.1", "198.18.2.100", "AllowReassignment", "true")
	if r.status != 200 {
		t.Fatalf("reassigning on the second listener: %d %s", r.status, r.body)
	}
	if got := calls(); !slices.Equal(got, []string{"eni-b"}) {
		t.Fatalf("hook calls by the time the caller had its answer = %v, want one seeing eni-b", got)
	}
	if err := em.Close(); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		c.Close()
		t.Fatal("the second listener still accepts after Close")
	}
}
