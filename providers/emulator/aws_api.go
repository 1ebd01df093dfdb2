package emulator

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"reflect"
	"sort"
	"strconv"
	"strings"
)

// ec2AccountID is the account that owns every emulated resource.
const ec2AccountID = "123456789012"

// ec2Action is one EC2 API action the front end implements.
type ec2Action struct {
	// resources names what the call touches, for fault rules.
	resources func(q url.Values) []string
	// do runs the action with f.mu held.
	do func(f *AWS, q url.Values) (ec2Answer, *ec2Err)
	// mutates: the action changes the model (OnChange hooks run after it).
	mutates bool
}

// action looks up an EC2 action by name. It is a switch rather than a
// package-level map so the table cannot be changed at run time.
func (f *AWS) action(name string) (ec2Action, bool) {
	switch name {
	case "DescribeAddresses":
		return ec2Action{
			resources: func(q url.Values) []string {
				return append(ec2List(q, "AllocationId"), ec2List(q, "PublicIp")...)
			},
			do: (*AWS).describeAddressesLocked,
		}, true
	case "DescribeRouteTables":
		return ec2Action{
			resources: func(q url.Values) []string { return ec2List(q, "RouteTableId") },
			do:        (*AWS).describeRouteTablesLocked,
		}, true
	case "DescribeNetworkInterfaces":
		return ec2Action{
			resources: func(q url.Values) []string { return ec2List(q, "NetworkInterfaceId") },
			do:        (*AWS).describeNetworkInterfacesLocked,
		}, true
	case "AssignPrivateIpAddresses":
		return ec2Action{
			resources: func(q url.Values) []string {
				return append([]string{q.Get("NetworkInterfaceId")}, ec2List(q, "PrivateIpAddress")...)
			},
			do:      (*AWS).assignPrivateIPAddressesLocked,
			mutates: true,
		}, true
	case "AssociateAddress":
		return ec2Action{
			resources: func(q url.Values) []string {
				return ec2NonEmpty(q.Get("AllocationId"), q.Get("NetworkInterfaceId"), q.Get("InstanceId"))
			},
			do:      (*AWS).associateAddressLocked,
			mutates: true,
		}, true
	case "ReplaceRoute":
		return ec2Action{
			resources: func(q url.Values) []string {
				rtb := q.Get("RouteTableId")
				dest := q.Get("DestinationCidrBlock") + q.Get("DestinationIpv6CidrBlock")
				return []string{rtb + "|" + dest, rtb}
			},
			do:      (*AWS).replaceRouteLocked,
			mutates: true,
		}, true
	case "CreateTags":
		return ec2Action{
			resources: func(q url.Values) []string { return ec2List(q, "ResourceId") },
			do:        (*AWS).createTagsLocked,
			mutates:   true,
		}, true
	}
	return ec2Action{}, false
}

func (f *AWS) register(mux *http.ServeMux) {
	mux.HandleFunc("POST /{$}", f.serveEC2)
}

// serveEC2 answers one EC2 query API call. Signatures are not verified (the
// emulator has no secrets), but a request must carry a SigV4 Authorization
// header, so an unsigned client fails here as it would against EC2.
func (f *AWS) serveEC2(w http.ResponseWriter, r *http.Request) {
	reqID := ec2RequestID()
	r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
	if err := r.ParseForm(); err != nil {
		ec2WriteError(w, reqID, ec2BadRequest("MalformedQueryString", "reading the query: %v", err))
		return
	}
	q := r.PostForm
	if !strings.HasPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 Credential=") {
		ec2WriteError(w, reqID, &ec2Err{status: http.StatusUnauthorized, code: "AuthFailure",
			msg: "AWS was not able to validate the provided access credentials"})
		return
	}
	name := q.Get("Action")
	act, known := f.action(name)
	var resources []string
	if known {
		resources = act.resources(q)
	}
	f.e.log.Debug("aws call", "op", name, "resources", resources)
	if kind, hit := f.e.gate.EnterAny(r.Context(), "aws", name, resources...); hit {
		ec2WriteError(w, reqID, ec2Fault(kind, name, resources))
		return
	}
	if !known {
		ec2WriteError(w, reqID, ec2BadRequest("InvalidAction", "The action %s is not valid for this web service.", name))
		return
	}
	if v := q.Get("Version"); v != ec2APIVersion {
		ec2WriteError(w, reqID, ec2BadRequest("NoSuchVersion", "An invalid or unsupported API version %q was specified", v))
		return
	}
	if q.Get("DryRun") == "true" {
		ec2WriteError(w, reqID, &ec2Err{status: http.StatusPreconditionFailed, code: "DryRunOperation",
			msg: "Request would have succeeded, but DryRun flag is set."})
		return
	}
	// A request whose client gave up is still carried out, as EC2 would
	// once it received it: the provider's calls are idempotent for that.
	f.mu.Lock()
	ans, e := act.do(f, q)
	hooks := f.hooks
	f.mu.Unlock()
	if e != nil {
		ec2WriteError(w, reqID, e)
		return
	}
	if act.mutates {
		// Before the answer: what the caller is told has happened, has.
		for _, fn := range hooks {
			fn()
		}
	}
	ec2Stamp(ans, name, reqID)
	body, err := xml.Marshal(ans)
	if err != nil {
		ec2WriteError(w, reqID, &ec2Err{status: http.StatusInternalServerError, code: "InternalError", msg: err.Error()})
		return
	}
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, xml.Header)
	_, _ = w.Write(body)
}

// ec2Fault renders an injected failure as EC2 does, with the status the
// SDK's retryer classifies.
func ec2Fault(kind FaultKind, action string, resources []string) *ec2Err {
	switch kind {
	case Throttle:
		return &ec2Err{status: http.StatusServiceUnavailable, code: "RequestLimitExceeded", msg: "Request limit exceeded."}
	case ServerError:
		return &ec2Err{status: http.StatusInternalServerError, code: "InternalError",
			msg: "An internal error has occurred. Please try your request again."}
	case Timeout:
		return &ec2Err{status: http.StatusServiceUnavailable, code: "Unavailable",
			msg: "The service is unavailable. Please try again shortly."}
	case PermissionDenied:
		on := "*"
		if len(resources) > 0 && resources[0] != "" {
			on = resources[0]
		}
		return &ec2Err{status: http.StatusForbidden, code: "UnauthorizedOperation",
			msg: fmt.Sprintf("You are not authorized to perform this operation. User: arn:aws:sts::%s:assumed-role/handoff/emulated "+
				"is not authorized to perform: ec2:%s on resource: %s", ec2AccountID, action, on)}
	case StaleFingerprint:
		return ec2BadRequest("IncorrectState", "The resource is in an incorrect state for the request: it was modified concurrently.")
	}
	return &ec2Err{status: http.StatusInternalServerError, code: "InternalError", msg: "unknown injected fault " + kind.String()}
}

// ec2WriteError writes EC2's error envelope. Its RequestID element is
// capitalised, unlike the requestId of a successful answer.
func ec2WriteError(w http.ResponseWriter, reqID string, e *ec2Err) {
	var b strings.Builder
	b.WriteString(xml.Header)
	b.WriteString("<Response><Errors><Error><Code>")
	_ = xml.EscapeText(&b, []byte(e.code))
	b.WriteString("</Code><Message>")
	_ = xml.EscapeText(&b, []byte(e.msg))
	b.WriteString("</Message></Error></Errors><RequestID>")
	b.WriteString(reqID)
	b.WriteString("</RequestID></Response>")
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.WriteHeader(e.status)
	_, _ = io.WriteString(w, b.String())
}

func ec2RequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// ec2List reads a query list ("AllocationId.1", "AllocationId.2"...) in
// index order.
func ec2List(q url.Values, name string) []string {
	type item struct {
		i int
		v string
	}
	var items []item
	for k, vs := range q {
		rest, ok := strings.CutPrefix(k, name+".")
		if !ok || len(vs) == 0 {
			continue
		}
		if i, err := strconv.Atoi(rest); err == nil {
			items = append(items, item{i, vs[0]})
		}
	}
	sort.Slice(items, func(a, b int) bool { return items[a].i < items[b].i })
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = it.v
	}
	return out
}

func ec2NonEmpty(vs ...string) []string {
	var out []string
	for _, v := range vs {
		if v != "" {
			out = append(out, v)
		}
	}
	return out
}

// ec2Tags reads Tag.N.Key / Tag.N.Value pairs.
func ec2Tags(q url.Values) map[string]string {
	tags := make(map[string]string)
	for k, vs := range q {
		rest, ok := strings.CutPrefix(k, "Tag.")
		if !ok || !strings.HasSuffix(rest, ".Key") || len(vs) == 0 {
			continue
		}
		n := strings.TrimSuffix(rest, ".Key")
		tags[vs[0]] = q.Get("Tag." + n + ".Value")
	}
	return tags
}

// ec2Filter is one Filter.N: a name and the values any of which may match.
type ec2Filter struct {
	name   string
	values []string
}

func ec2Filters(q url.Values) []ec2Filter {
	var out []ec2Filter
	for _, n := range ec2Indexes(q, "Filter.", ".Name") {
		out = append(out, ec2Filter{
			name:   q.Get("Filter." + n + ".Name"),
			values: ec2List(q, "Filter."+n+".Value"),
		})
	}
	return out
}

// ec2Indexes returns the N of every "<prefix>N<suffix>" key, sorted.
func ec2Indexes(q url.Values, prefix, suffix string) []string {
	var ns []int
	for k := range q {
		rest, ok := strings.CutPrefix(k, prefix)
		if !ok || !strings.HasSuffix(rest, suffix) {
			continue
		}
		if n, err := strconv.Atoi(strings.TrimSuffix(rest, suffix)); err == nil {
			ns = append(ns, n)
		}
	}
	sort.Ints(ns)
	out := make([]string, len(ns))
	for i, n := range ns {
		out[i] = strconv.Itoa(n)
	}
	return out
}

// ec2Attrs gives the values of a filterable attribute of one resource; ok
// is false when the resource type has no such filter.
type ec2Attrs func(name string) (values []string, ok bool)

// ec2Match applies EC2 filter semantics: every filter must match, a filter
// matches when any of its values matches any of the attribute's values, and
// values may use the * and ? wildcards.
func ec2Match(filters []ec2Filter, tags map[string]string, attrs ec2Attrs) (bool, *ec2Err) {
	for _, fl := range filters {
		var have []string
		switch {
		case strings.HasPrefix(fl.name, "tag:"):
			if v, ok := tags[strings.TrimPrefix(fl.name, "tag:")]; ok {
				have = []string{v}
			}
		case fl.name == "tag-key":
			have = ec2SortedKeys(tags)
		default:
			vs, ok := attrs(fl.name)
			if !ok {
				return false, ec2BadRequest("InvalidParameterValue", "The filter '%s' is invalid", fl.name)
			}
			have = vs
		}
		hit := false
		for _, want := range fl.values {
			for _, h := range have {
				if ec2Glob(want, h) {
					hit = true
				}
			}
		}
		if !hit {
			return false, nil
		}
	}
	return true, nil
}

// ec2Glob matches s against a pattern where * is any run of characters and
// ? any one character ('/' included, unlike path.Match: CIDRs have one).
func ec2Glob(pattern, s string) bool {
	if pattern == "" {
		return s == ""
	}
	switch pattern[0] {
	case '*':
		for i := 0; i <= len(s); i++ {
			if ec2Glob(pattern[1:], s[i:]) {
				return true
			}
		}
		return false
	case '?':
		return s != "" && ec2Glob(pattern[1:], s[1:])
	}
	return s != "" && s[0] == pattern[0] && ec2Glob(pattern[1:], s[1:])
}

// ec2Answer is a successful answer: a pointer to a struct that starts
// with the fields every EC2 answer shares (XMLName, Xmlns, RequestID).
type ec2Answer any

// ec2Stamp fills the shared fields: the root element is the action's name
// plus "Response", in the EC2 namespace, with the request ID.
func ec2Stamp(ans ec2Answer, action, reqID string) {
	v := reflect.ValueOf(ans).Elem()
	v.FieldByName("XMLName").Set(reflect.ValueOf(xml.Name{Local: action + "Response"}))
	v.FieldByName("Xmlns").SetString(ec2Namespace)
	v.FieldByName("RequestID").SetString(reqID)
}

type ec2TagXML struct {
	Key   string `xml:"key"`
	Value string `xml:"value"`
}

func ec2TagSet(tags map[string]string) []ec2TagXML {
	out := make([]ec2TagXML, 0, len(tags))
	for _, k := range ec2SortedKeys(tags) {
		out = append(out, ec2TagXML{Key: k, Value: tags[k]})
	}
	return out
}

type ec2ReturnXML struct {
	XMLName   xml.Name
	Xmlns     string `xml:"xmlns,attr"`
	RequestID string `xml:"requestId"`
	Return    bool   `xml:"return"`
}

type ec2AddressXML struct {
	PublicIP                string      `xml:"publicIp"`
	AllocationID            string      `xml:"allocationId"`
	Domain                  string      `xml:"domain"`
	AssociationID           string      `xml:"associationId,omitempty"`
	InstanceID              string      `xml:"instanceId,omitempty"`
	NetworkInterfaceID      string      `xml:"networkInterfaceId,omitempty"`
	NetworkInterfaceOwnerID string      `xml:"networkInterfaceOwnerId,omitempty"`
	PrivateIPAddress        string      `xml:"privateIpAddress,omitempty"`
	Tags                    []ec2TagXML `xml:"tagSet>item"`
}

type ec2DescribeAddressesXML struct {
	XMLName   xml.Name
	Xmlns     string          `xml:"xmlns,attr"`
	RequestID string          `xml:"requestId"`
	Addresses []ec2AddressXML `xml:"addressesSet>item"`
}

func (f *AWS) describeAddressesLocked(q url.Values) (ec2Answer, *ec2Err) {
	filters := ec2Filters(q)
	var picked []*ec2Address
	ids, publicIPs := ec2List(q, "AllocationId"), ec2List(q, "PublicIp")
	for _, id := range ids {
		a, ok := f.addresses[id]
		if !ok {
			return nil, ec2NotFound(id)
		}
		picked = append(picked, a)
	}
	for _, ip := range publicIPs {
		var found *ec2Address
		for _, a := range f.addresses {
			if a.publicIP == ip {
				found = a
			}
		}
		if found == nil {
			return nil, ec2BadRequest("InvalidAddress.NotFound", "Address '%s' not found.", ip)
		}
		picked = append(picked, found)
	}
	if len(ids)+len(publicIPs) == 0 {
		for _, k := range ec2SortedKeys(f.addresses) {
			picked = append(picked, f.addresses[k])
		}
	}
	ans := &ec2DescribeAddressesXML{Addresses: []ec2AddressXML{}}
	seen := make(map[string]bool)
	for _, a := range picked {
		if seen[a.allocation] {
			continue
		}
		seen[a.allocation] = true
		x := ec2AddressXML{PublicIP: a.publicIP, AllocationID: a.allocation, Domain: "vpc", Tags: ec2TagSet(f.tags[a.allocation])}
		if a.association != "" {
			x.AssociationID, x.NetworkInterfaceID, x.NetworkInterfaceOwnerID = a.association, a.eni, ec2AccountID
			x.PrivateIPAddress = a.privateIP.String()
			if n := f.enis[a.eni]; n != nil {
				x.InstanceID = n.instance
			}
		}
		ok, e := ec2Match(filters, f.tags[a.allocation], func(name string) ([]string, bool) {
			switch name {
			case "allocation-id":
				return []string{x.AllocationID}, true
			case "public-ip":
				return []string{x.PublicIP}, true
			case "association-id":
				return ec2NonEmpty(x.AssociationID), true
			case "network-interface-id":
				return ec2NonEmpty(x.NetworkInterfaceID), true
			case "private-ip-address":
				return ec2NonEmpty(x.PrivateIPAddress), true
			case "instance-id":
				return ec2NonEmpty(x.InstanceID), true
			case "domain":
				return []string{x.Domain}, true
			}
			return nil, false
		})
		if e != nil {
			return nil, e
		}
		if ok {
			ans.Addresses = append(ans.Addresses, x)
		}
	}
	return ans, nil
}

type ec2RouteXML struct {
	DestinationCidrBlock     string `xml:"destinationCidrBlock,omitempty"`
	DestinationIpv6CidrBlock string `xml:"destinationIpv6CidrBlock,omitempty"`
	GatewayID                string `xml:"gatewayId,omitempty"`
	InstanceID               string `xml:"instanceId,omitempty"`
	InstanceOwnerID          string `xml:"instanceOwnerId,omitempty"`
	NetworkInterfaceID       string `xml:"networkInterfaceId,omitempty"`
	State                    string `xml:"state"`
	Origin                   string `xml:"origin"`
}

type ec2RouteTableXML struct {
	RouteTableID string        `xml:"routeTableId"`
	VpcID        string        `xml:"vpcId"`
	OwnerID      string        `xml:"ownerId"`
	Routes       []ec2RouteXML `xml:"routeSet>item"`
	Tags         []ec2TagXML   `xml:"tagSet>item"`
}

type ec2DescribeRouteTablesXML struct {
	XMLName     xml.Name
	Xmlns       string             `xml:"xmlns,attr"`
	RequestID   string             `xml:"requestId"`
	RouteTables []ec2RouteTableXML `xml:"routeTableSet>item"`
}

func (f *AWS) describeRouteTablesLocked(q url.Values) (ec2Answer, *ec2Err) {
	filters := ec2Filters(q)
	ids := ec2List(q, "RouteTableId")
	for _, id := range ids {
		if _, ok := f.routeTables[id]; !ok {
			return nil, ec2NotFound(id)
		}
	}
	if len(ids) == 0 {
		ids = ec2SortedKeys(f.routeTables)
	}
	ans := &ec2DescribeRouteTablesXML{RouteTables: []ec2RouteTableXML{}}
	seen := make(map[string]bool)
	for _, id := range ids {
		if seen[id] {
			continue
		}
		seen[id] = true
		t := f.routeTables[id]
		x := ec2RouteTableXML{RouteTableID: t.id, VpcID: t.vpcID, OwnerID: ec2AccountID, Tags: ec2TagSet(f.tags[t.id])}
		for _, r := range t.routes {
			rx := ec2RouteXML{GatewayID: r.gateway, NetworkInterfaceID: r.eni, State: "active", Origin: "CreateRoute"}
			if r.dest.Addr().Is4() {
				rx.DestinationCidrBlock = r.dest.String()
			} else {
				rx.DestinationIpv6CidrBlock = r.dest.String()
			}
			if r.gateway == "local" {
				rx.Origin = "CreateRouteTable"
			}
			if n := f.enis[r.eni]; n != nil {
				rx.InstanceID, rx.InstanceOwnerID = n.instance, ec2AccountID
			} else if r.eni != "" {
				rx.State = "blackhole"
			}
			x.Routes = append(x.Routes, rx)
		}
		ok, e := ec2Match(filters, f.tags[t.id], func(name string) ([]string, bool) {
			var vs []string
			switch name {
			case "route-table-id":
				return []string{t.id}, true
			case "vpc-id":
				return []string{t.vpcID}, true
			case "owner-id":
				return []string{ec2AccountID}, true
			case "route.destination-cidr-block":
				for _, r := range x.Routes {
					vs = append(vs, ec2NonEmpty(r.DestinationCidrBlock)...)
				}
				return vs, true
			case "route.network-interface-id":
				for _, r := range x.Routes {
					vs = append(vs, ec2NonEmpty(r.NetworkInterfaceID)...)
				}
				return vs, true
			case "route.gateway-id":
				for _, r := range x.Routes {
					vs = append(vs, ec2NonEmpty(r.GatewayID)...)
				}
				return vs, true
			}
			return nil, false
		})
		if e != nil {
			return nil, e
		}
		if ok {
			ans.RouteTables = append(ans.RouteTables, x)
		}
	}
	return ans, nil
}

type ec2ENIAssociationXML struct {
	PublicIP      string `xml:"publicIp"`
	AllocationID  string `xml:"allocationId"`
	AssociationID string `xml:"associationId"`
	IPOwnerID     string `xml:"ipOwnerId"`
}

type ec2ENIPrivateIPXML struct {
	PrivateIPAddress string                `xml:"privateIpAddress"`
	Primary          bool                  `xml:"primary"`
	Association      *ec2ENIAssociationXML `xml:"association,omitempty"`
}

type ec2ENIAttachmentXML struct {
	AttachmentID string `xml:"attachmentId"`
	InstanceID   string `xml:"instanceId"`
	DeviceIndex  int    `xml:"deviceIndex"`
	Status       string `xml:"status"`
}

type ec2ENIXML struct {
	NetworkInterfaceID string                `xml:"networkInterfaceId"`
	SubnetID           string                `xml:"subnetId"`
	VpcID              string                `xml:"vpcId"`
	AvailabilityZone   string                `xml:"availabilityZone"`
	OwnerID            string                `xml:"ownerId"`
	Status             string                `xml:"status"`
	MacAddress         string                `xml:"macAddress"`
	PrivateIPAddress   string                `xml:"privateIpAddress"`
	SourceDestCheck    bool                  `xml:"sourceDestCheck"`
	InterfaceType      string                `xml:"interfaceType"`
	Attachment         *ec2ENIAttachmentXML  `xml:"attachment,omitempty"`
	Association        *ec2ENIAssociationXML `xml:"association,omitempty"`
	PrivateIPs         []ec2ENIPrivateIPXML  `xml:"privateIpAddressesSet>item"`
	Tags               []ec2TagXML           `xml:"tagSet>item"`
}

type ec2DescribeNetworkInterfacesXML struct {
	XMLName           xml.Name
	Xmlns             string      `xml:"xmlns,attr"`
	RequestID         string      `xml:"requestId"`
	NetworkInterfaces []ec2ENIXML `xml:"networkInterfaceSet>item"`
}

func (f *AWS) describeNetworkInterfacesLocked(q url.Values) (ec2Answer, *ec2Err) {
	filters := ec2Filters(q)
	ids := ec2List(q, "NetworkInterfaceId")
	for _, id := range ids {
		if _, ok := f.enis[id]; !ok {
			return nil, ec2NotFound(id)
		}
	}
	if len(ids) == 0 {
		ids = ec2SortedKeys(f.enis)
	}
	assocOf := func(eni string, ip netip.Addr) *ec2ENIAssociationXML {
		for _, a := range f.addresses {
			if a.association != "" && a.eni == eni && a.privateIP == ip {
				return &ec2ENIAssociationXML{PublicIP: a.publicIP, AllocationID: a.allocation, AssociationID: a.association, IPOwnerID: ec2AccountID}
			}
		}
		return nil
	}
	ans := &ec2DescribeNetworkInterfacesXML{NetworkInterfaces: []ec2ENIXML{}}
	seen := make(map[string]bool)
	for _, id := range ids {
		if seen[id] {
			continue
		}
		seen[id] = true
		n := f.enis[id]
		x := ec2ENIXML{
			NetworkInterfaceID: n.id, SubnetID: n.subnetID, VpcID: n.vpcID, OwnerID: ec2AccountID,
			Status: "in-use", MacAddress: n.mac, PrivateIPAddress: n.primary.String(),
			SourceDestCheck: n.sourceDestCheck, InterfaceType: "interface",
			Association: assocOf(n.id, n.primary), Tags: ec2TagSet(f.tags[n.id]),
		}
		if in := f.instances[n.instance]; in != nil {
			x.AvailabilityZone = in.az
			x.Attachment = &ec2ENIAttachmentXML{AttachmentID: "eni-attach-" + strings.TrimPrefix(n.id, "eni-"),
				InstanceID: in.id, Status: "attached"}
		}
		all := append([]netip.Addr{n.primary}, n.secondary...)
		for i, ip := range all {
			x.PrivateIPs = append(x.PrivateIPs, ec2ENIPrivateIPXML{PrivateIPAddress: ip.String(), Primary: i == 0, Association: assocOf(n.id, ip)})
		}
		ok, e := ec2Match(filters, f.tags[n.id], func(name string) ([]string, bool) {
			switch name {
			case "network-interface-id":
				return []string{n.id}, true
			case "attachment.instance-id":
				return ec2NonEmpty(n.instance), true
			case "mac-address":
				return []string{n.mac}, true
			case "private-ip-address":
				return []string{n.primary.String()}, true
			case "addresses.private-ip-address":
				vs := make([]string, len(all))
				for i, ip := range all {
					vs[i] = ip.String()
				}
				return vs, true
			case "subnet-id":
				return []string{n.subnetID}, true
			case "vpc-id":
				return []string{n.vpcID}, true
			}
			return nil, false
		})
		if e != nil {
			return nil, e
		}
		if ok {
			ans.NetworkInterfaces = append(ans.NetworkInterfaces, x)
		}
	}
	return ans, nil
}

type ec2AssignedIPXML struct {
	PrivateIPAddress string `xml:"privateIpAddress"`
}

type ec2AssignPrivateIPsXML struct {
	XMLName            xml.Name
	Xmlns              string             `xml:"xmlns,attr"`
	RequestID          string             `xml:"requestId"`
	NetworkInterfaceID string             `xml:"networkInterfaceId"`
	Assigned           []ec2AssignedIPXML `xml:"assignedPrivateIpAddressesSet>item"`
}

func (f *AWS) assignPrivateIPAddressesLocked(q url.Values) (ec2Answer, *ec2Err) {
	eni := q.Get("NetworkInterfaceId")
	if eni == "" {
		return nil, ec2BadRequest("MissingParameter", "The request must contain the parameter NetworkInterfaceId")
	}
	if q.Get("SecondaryPrivateIpAddressCount") != "" || q.Get("Ipv4PrefixCount") != "" || len(ec2List(q, "Ipv4Prefix")) > 0 {
		return nil, ec2BadRequest("InvalidParameterCombination", "the emulator assigns explicit PrivateIpAddress values only")
	}
	var ips []netip.Addr
	for _, s := range ec2List(q, "PrivateIpAddress") {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return nil, ec2BadRequest("InvalidParameterValue", "Invalid IPv4 address %s", s)
		}
		ips = append(ips, ip)
	}
	if e := f.assignLocked(eni, ips, q.Get("AllowReassignment") == "true"); e != nil {
		return nil, e
	}
	ans := &ec2AssignPrivateIPsXML{NetworkInterfaceID: eni}
	for _, ip := range ips {
		ans.Assigned = append(ans.Assigned, ec2AssignedIPXML{PrivateIPAddress: ip.String()})
	}
	return ans, nil
}

type ec2AssociateAddressXML struct {
	XMLName       xml.Name
	Xmlns         string `xml:"xmlns,attr"`
	RequestID     string `xml:"requestId"`
	AssociationID string `xml:"associationId"`
}

func (f *AWS) associateAddressLocked(q url.Values) (ec2Answer, *ec2Err) {
	alloc := q.Get("AllocationId")
	if alloc == "" {
		return nil, ec2BadRequest("MissingParameter", "The request must contain the parameter AllocationId")
	}
	eni := q.Get("NetworkInterfaceId")
	if inst := q.Get("InstanceId"); inst != "" {
		in, ok := f.instances[inst]
		if !ok {
			return nil, ec2NotFound(inst)
		}
		if eni != "" && eni != in.eni {
			return nil, ec2BadRequest("InvalidParameterCombination", "Network interface %s is not attached to %s", eni, inst)
		}
		eni = in.eni
	}
	if eni == "" {
		return nil, ec2BadRequest("MissingParameter", "Either InstanceId or NetworkInterfaceId must be specified")
	}
	var ip netip.Addr
	if s := q.Get("PrivateIpAddress"); s != "" {
		var err error
		if ip, err = netip.ParseAddr(s); err != nil {
			return nil, ec2BadRequest("InvalidParameterValue", "Invalid private IP address %s", s)
		}
	}
	id, e := f.associateLocked(alloc, eni, ip, q.Get("AllowReassociation") == "true")
	if e != nil {
		return nil, e
	}
	return &ec2AssociateAddressXML{AssociationID: id}, nil
}

func (f *AWS) replaceRouteLocked(q url.Values) (ec2Answer, *ec2Err) {
	id := q.Get("RouteTableId")
	t, ok := f.routeTables[id]
	if !ok {
		return nil, ec2NotFound(id)
	}
	destStr := q.Get("DestinationCidrBlock")
	if destStr == "" {
		destStr = q.Get("DestinationIpv6CidrBlock")
	}
	dest, err := netip.ParsePrefix(destStr)
	if err != nil {
		return nil, ec2BadRequest("InvalidParameterValue", "Value (%s) for parameter destinationCidrBlock is invalid", destStr)
	}
	r := t.route(dest.Masked())
	if r == nil {
		return nil, ec2BadRequest("InvalidRoute.NotFound", "no route with destination-cidr-block %s in route table %s", destStr, id)
	}
	if r.gateway == "local" {
		return nil, ec2BadRequest("InvalidParameterValue", "cannot replace local route %s in route table %s", destStr, id)
	}
	eni, inst, gw := q.Get("NetworkInterfaceId"), q.Get("InstanceId"), q.Get("GatewayId")
	if len(ec2NonEmpty(eni, inst, gw)) != 1 {
		return nil, ec2BadRequest("InvalidParameterCombination", "exactly one route target must be given")
	}
	switch {
	case gw != "":
		r.eni, r.gateway = "", gw
		return &ec2ReturnXML{Return: true}, nil
	case inst != "":
		in, ok := f.instances[inst]
		if !ok {
			return nil, ec2NotFound(inst)
		}
		eni = in.eni
	}
	n, ok := f.enis[eni]
	if !ok {
		return nil, ec2NotFound(eni)
	}
	if n.vpcID != t.vpcID {
		return nil, ec2BadRequest("InvalidParameterValue",
			"route table %s and network interface %s belong to different networks", id, eni)
	}
	r.eni, r.gateway = eni, ""
	return &ec2ReturnXML{Return: true}, nil
}

func (f *AWS) createTagsLocked(q url.Values) (ec2Answer, *ec2Err) {
	ids := ec2List(q, "ResourceId")
	if len(ids) == 0 {
		return nil, ec2BadRequest("MissingParameter", "The request must contain the parameter resourceIdSet")
	}
	tags := ec2Tags(q)
	if len(tags) == 0 {
		return nil, ec2BadRequest("MissingParameter", "The request must contain the parameter tagSet")
	}
	if e := f.tagLocked(ids, tags); e != nil {
		return nil, e
	}
	return &ec2ReturnXML{Return: true}, nil
}
