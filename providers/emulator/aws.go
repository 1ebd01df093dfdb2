package emulator

import (
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
)

// ec2Namespace is the XML namespace of every EC2 query API answer.
const ec2Namespace = "http://ec2.amazonaws.com/doc/2016-11-15/"

// ec2APIVersion is the only API version the EC2 front end speaks; the SDK
// sends it with every call.
const ec2APIVersion = "2016-11-15"

// ec2MaxTags is EC2's limit of user tags per resource.
const ec2MaxTags = 50

// AWS is the emulator's EC2 front end: a resource model of instances and
// their network interfaces (primary and secondary private IPs), Elastic IP
// addresses and their associations, route tables and tags, the EC2 query
// API over it (POST "/" with an Action form field, XML answers in the EC2
// namespace, EC2 error envelopes) and a per-instance IMDSv2 server.
//
// The model follows EC2 where the provider depends on it: an Elastic IP
// associated with a secondary private IP moves with that IP when
// AssignPrivateIpAddresses reassigns it, a private IP lives on one interface
// at a time, and a route has exactly one target.
type AWS struct {
	e *Emulator

	mu          sync.Mutex                   // guards the following fields
	instances   map[string]*ec2Instance      // key: instance ID
	enis        map[string]*ec2ENI           // key: network interface ID
	addresses   map[string]*ec2Address       // key: allocation ID
	routeTables map[string]*ec2RouteTable    // key: route table ID
	tags        map[string]map[string]string // key: resource ID
	seq         uint64
	hooks       []func() // OnChange's, never removed
}

// OnChange registers fn to run after every API call that changed the
// model (a private IP reassigned, an address associated, a route replaced,
// tags written), before the call is answered. It stands in for the
// cloud's data plane: the lab's fabric reads where the VIP and the routes
// point now and steers packets there. fn may read the model; it runs on
// the API call's goroutine, so it must not block for long.
func (f *AWS) OnChange(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hooks = append(slices.Clip(f.hooks), fn)
}

func newAWS(e *Emulator) *AWS {
	f := &AWS{e: e}
	f.resetLocked()
	return f
}

func (f *AWS) resetLocked() {
	f.instances = make(map[string]*ec2Instance)
	f.enis = make(map[string]*ec2ENI)
	f.addresses = make(map[string]*ec2Address)
	f.routeTables = make(map[string]*ec2RouteTable)
	f.tags = make(map[string]map[string]string)
}

type ec2Instance struct {
	id, region, az, eni string
}

type ec2ENI struct {
	id, mac, instance, subnetID, vpcID string
	subnet                             netip.Prefix
	primary                            netip.Addr
	secondary                          []netip.Addr // in assignment order
	sourceDestCheck                    bool
}

func (n *ec2ENI) has(ip netip.Addr) bool {
	if n.primary == ip {
		return true
	}
	for _, s := range n.secondary {
		if s == ip {
			return true
		}
	}
	return false
}

type ec2Address struct {
	allocation, publicIP string
	association          string // "" when not associated
	eni                  string
	privateIP            netip.Addr
}

type ec2RouteTable struct {
	id, vpcID string
	routes    []*ec2Route // in creation order
}

func (t *ec2RouteTable) route(dest netip.Prefix) *ec2Route {
	for _, r := range t.routes {
		if r.dest == dest {
			return r
		}
	}
	return nil
}

type ec2Route struct {
	dest    netip.Prefix
	eni     string // target network interface, or ""
	gateway string // target gateway ("local", "igw-..."), or ""
}

// AWSInstance seeds one EC2 instance with its primary network interface.
type AWSInstance struct {
	// ID is the instance ID, e.g. "i-0a1b2c3d4e5f60001".
	ID string
	// Region and AvailabilityZone go into the instance identity document.
	Region, AvailabilityZone string
	// NetworkInterfaceID and MAC name the primary network interface.
	NetworkInterfaceID, MAC string
	// VPCID, SubnetID and SubnetCIDR place the interface; private IPs
	// assigned to it must fall inside SubnetCIDR.
	VPCID, SubnetID, SubnetCIDR string
	// PrivateIP is the interface's primary private IPv4 address.
	PrivateIP string
}

// AddInstance adds an instance and its primary network interface.
func (f *AWS) AddInstance(in AWSInstance) error {
	subnet, err := netip.ParsePrefix(in.SubnetCIDR)
	if err != nil {
		return fmt.Errorf("instance %s: subnet CIDR: %w", in.ID, err)
	}
	ip, err := netip.ParseAddr(in.PrivateIP)
	if err != nil {
		return fmt.Errorf("instance %s: private IP: %w", in.ID, err)
	}
	if !subnet.Contains(ip) {
		return fmt.Errorf("instance %s: private IP %s is outside subnet %s", in.ID, ip, subnet)
	}
	if in.ID == "" || in.NetworkInterfaceID == "" || in.MAC == "" {
		return fmt.Errorf("instance %q: ID, NetworkInterfaceID and MAC are required", in.ID)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, dup := f.instances[in.ID]; dup {
		return fmt.Errorf("instance %s already exists", in.ID)
	}
	if _, dup := f.enis[in.NetworkInterfaceID]; dup {
		return fmt.Errorf("network interface %s already exists", in.NetworkInterfaceID)
	}
	if owner := f.ipOwnerLocked(ip); owner != nil {
		return fmt.Errorf("instance %s: private IP %s is already on %s", in.ID, ip, owner.id)
	}
	region := in.Region
	if region == "" {
		region = "us-east-1"
	}
	az := in.AvailabilityZone
	if az == "" {
		az = region + "a"
	}
	f.instances[in.ID] = &ec2Instance{id: in.ID, region: region, az: az, eni: in.NetworkInterfaceID}
	f.enis[in.NetworkInterfaceID] = &ec2ENI{
		id: in.NetworkInterfaceID, mac: strings.ToLower(in.MAC), instance: in.ID,
		subnetID: in.SubnetID, vpcID: in.VPCID, subnet: subnet.Masked(), primary: ip, sourceDestCheck: true,
	}
	return nil
}

// AssignPrivateIP seeds a secondary private IP on a network interface, as
// if it had been assigned before the emulator started.
func (f *AWS) AssignPrivateIP(eni, ip string) error {
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return fmt.Errorf("assigning %q to %s: %w", ip, eni, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	n, ok := f.enis[eni]
	if !ok {
		return fmt.Errorf("assigning %s: no network interface %s", ip, eni)
	}
	if owner := f.ipOwnerLocked(addr); owner != nil {
		return fmt.Errorf("assigning %s to %s: already on %s", ip, eni, owner.id)
	}
	if !n.subnet.Contains(addr) {
		return fmt.Errorf("assigning %s to %s: outside subnet %s", ip, eni, n.subnet)
	}
	n.secondary = append(n.secondary, addr)
	return nil
}

// AddAddress adds an unassociated Elastic IP address.
func (f *AWS) AddAddress(allocationID, publicIP string) error {
	if _, err := netip.ParseAddr(publicIP); err != nil {
		return fmt.Errorf("address %s: public IP: %w", allocationID, err)
	}
	if !strings.HasPrefix(allocationID, "eipalloc-") {
		return fmt.Errorf("address %q: allocation IDs start with eipalloc-", allocationID)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, dup := f.addresses[allocationID]; dup {
		return fmt.Errorf("address %s already exists", allocationID)
	}
	f.addresses[allocationID] = &ec2Address{allocation: allocationID, publicIP: publicIP}
	return nil
}

// Associate seeds an Elastic IP association with a private IP of a network
// interface (the private IP must already be on it).
func (f *AWS) Associate(allocationID, eni, privateIP string) error {
	ip, err := netip.ParseAddr(privateIP)
	if err != nil {
		return fmt.Errorf("associating %s: %w", allocationID, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, e := f.associateLocked(allocationID, eni, ip, true); e != nil {
		return fmt.Errorf("associating %s with %s/%s: %s", allocationID, eni, ip, e.msg)
	}
	return nil
}

// AddRouteTable adds an empty route table (plus the VPC's local route when
// vpcCIDR is not empty).
func (f *AWS) AddRouteTable(id, vpcID, vpcCIDR string) error {
	if !strings.HasPrefix(id, "rtb-") {
		return fmt.Errorf("route table %q: IDs start with rtb-", id)
	}
	t := &ec2RouteTable{id: id, vpcID: vpcID}
	if vpcCIDR != "" {
		p, err := netip.ParsePrefix(vpcCIDR)
		if err != nil {
			return fmt.Errorf("route table %s: VPC CIDR: %w", id, err)
		}
		t.routes = append(t.routes, &ec2Route{dest: p.Masked(), gateway: "local"})
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, dup := f.routeTables[id]; dup {
		return fmt.Errorf("route table %s already exists", id)
	}
	f.routeTables[id] = t
	return nil
}

// AddRoute adds a route to a table whose target is a network interface.
func (f *AWS) AddRoute(tableID, destination, eni string) error {
	dest, err := netip.ParsePrefix(destination)
	if err != nil {
		return fmt.Errorf("route %s in %s: %w", destination, tableID, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.routeTables[tableID]
	if !ok {
		return fmt.Errorf("route %s: no route table %s", destination, tableID)
	}
	if _, ok := f.enis[eni]; !ok {
		return fmt.Errorf("route %s in %s: no network interface %s", destination, tableID, eni)
	}
	if t.route(dest.Masked()) != nil {
		return fmt.Errorf("route %s already exists in %s", destination, tableID)
	}
	t.routes = append(t.routes, &ec2Route{dest: dest.Masked(), eni: eni})
	return nil
}

// Reset empties the EC2 model (instances, addresses, route tables, tags).
func (f *AWS) Reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.resetLocked()
}

// AWSAddressState is where an Elastic IP points, for tests to inspect the
// model without going through a provider.
type AWSAddressState struct {
	PublicIP, AssociationID, NetworkInterfaceID, InstanceID, PrivateIP string
}

// Address reports the association of an Elastic IP.
func (f *AWS) Address(allocationID string) (AWSAddressState, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, ok := f.addresses[allocationID]
	if !ok {
		return AWSAddressState{}, false
	}
	st := AWSAddressState{PublicIP: a.publicIP, AssociationID: a.association, NetworkInterfaceID: a.eni}
	if a.association != "" {
		st.PrivateIP = a.privateIP.String()
		if n := f.enis[a.eni]; n != nil {
			st.InstanceID = n.instance
		}
	}
	return st, true
}

// RouteTarget reports the network interface a route points at ("" when its
// target is a gateway).
func (f *AWS) RouteTarget(tableID, destination string) (string, bool) {
	dest, err := netip.ParsePrefix(destination)
	if err != nil {
		return "", false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.routeTables[tableID]
	if !ok {
		return "", false
	}
	r := t.route(dest.Masked())
	if r == nil {
		return "", false
	}
	return r.eni, true
}

// PrivateIPs lists a network interface's private IPs, primary first.
func (f *AWS) PrivateIPs(eni string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, ok := f.enis[eni]
	if !ok {
		return nil
	}
	ips := []string{n.primary.String()}
	for _, s := range n.secondary {
		ips = append(ips, s.String())
	}
	return ips
}

// Tags returns a copy of a resource's tags.
func (f *AWS) Tags(resourceID string) map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]string, len(f.tags[resourceID]))
	for k, v := range f.tags[resourceID] {
		out[k] = v
	}
	return out
}

// SetTags sets tags on a resource directly (seeding, or simulating an
// operator's edit).
func (f *AWS) SetTags(resourceID string, tags map[string]string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if e := f.tagLocked([]string{resourceID}, tags); e != nil {
		return fmt.Errorf("tagging %s: %s", resourceID, e.msg)
	}
	return nil
}

// nextIDLocked returns a fresh 17-hex-digit suffix for generated IDs.
func (f *AWS) nextIDLocked() string {
	f.seq++
	return fmt.Sprintf("%017x", f.seq)
}

// ipOwnerLocked returns the network interface that holds ip, or nil.
func (f *AWS) ipOwnerLocked(ip netip.Addr) *ec2ENI {
	for _, n := range f.enis {
		if n.has(ip) {
			return n
		}
	}
	return nil
}

// ec2Err is an EC2 API error: a code, a message and the HTTP status EC2
// answers it with.
type ec2Err struct {
	status    int
	code, msg string
}

func ec2BadRequest(code, format string, args ...any) *ec2Err {
	return &ec2Err{status: http.StatusBadRequest, code: code, msg: fmt.Sprintf(format, args...)}
}

// ec2NotFound is the NotFound error EC2 answers for an ID of the given
// kind, judged by its prefix.
func ec2NotFound(id string) *ec2Err {
	switch {
	case strings.HasPrefix(id, "eipalloc-"):
		return ec2BadRequest("InvalidAllocationID.NotFound", "The allocation ID '%s' does not exist", id)
	case strings.HasPrefix(id, "rtb-"):
		return ec2BadRequest("InvalidRouteTableID.NotFound", "The routeTable ID '%s' does not exist", id)
	case strings.HasPrefix(id, "eni-"):
		return ec2BadRequest("InvalidNetworkInterfaceID.NotFound", "The networkInterface ID '%s' does not exist", id)
	case strings.HasPrefix(id, "i-"):
		return ec2BadRequest("InvalidInstanceID.NotFound", "The instance ID '%s' does not exist", id)
	}
	return ec2BadRequest("InvalidID", "The ID '%s' is not valid", id)
}

// existsLocked says whether a taggable resource exists.
func (f *AWS) existsLocked(id string) bool {
	switch {
	case strings.HasPrefix(id, "eipalloc-"):
		_, ok := f.addresses[id]
		return ok
	case strings.HasPrefix(id, "rtb-"):
		_, ok := f.routeTables[id]
		return ok
	case strings.HasPrefix(id, "eni-"):
		_, ok := f.enis[id]
		return ok
	case strings.HasPrefix(id, "i-"):
		_, ok := f.instances[id]
		return ok
	}
	return false
}

// tagLocked applies tags to every resource or to none (EC2's CreateTags is
// all or nothing).
func (f *AWS) tagLocked(ids []string, tags map[string]string) *ec2Err {
	for k, v := range tags {
		if strings.HasPrefix(strings.ToLower(k), "aws:") {
			return ec2BadRequest("InvalidParameterValue", "Tag keys starting with 'aws:' are reserved for internal use")
		}
		if k == "" || len(k) > 128 || len(v) > 256 {
			return ec2BadRequest("InvalidParameterValue", "Tag key %q or its value has an invalid length", k)
		}
	}
	for _, id := range ids {
		if !f.existsLocked(id) {
			return ec2NotFound(id)
		}
		n := len(f.tags[id])
		for k := range tags {
			if _, ok := f.tags[id][k]; !ok {
				n++
			}
		}
		if n > ec2MaxTags {
			return ec2BadRequest("TagLimitExceeded", "The maximum number of tags per resource (%d) would be exceeded on %s", ec2MaxTags, id)
		}
	}
	for _, id := range ids {
		if f.tags[id] == nil {
			f.tags[id] = make(map[string]string)
		}
		for k, v := range tags {
			f.tags[id][k] = v
		}
	}
	return nil
}

// associateLocked associates an Elastic IP with a private IP of an
// interface and returns the association ID. EC2 allows one Elastic IP per
// private IP: one already there is disassociated when reassociation is
// allowed.
func (f *AWS) associateLocked(alloc, eni string, ip netip.Addr, allowReassociation bool) (string, *ec2Err) {
	a, ok := f.addresses[alloc]
	if !ok {
		return "", ec2NotFound(alloc)
	}
	n, ok := f.enis[eni]
	if !ok {
		return "", ec2NotFound(eni)
	}
	if !ip.IsValid() {
		ip = n.primary
	}
	if !n.has(ip) {
		return "", ec2BadRequest("InvalidParameterValue",
			"The private IP address %s is not assigned to the network interface %s", ip, eni)
	}
	if a.association != "" && a.eni == eni && a.privateIP == ip {
		return a.association, nil
	}
	if a.association != "" && !allowReassociation {
		return "", ec2BadRequest("Resource.AlreadyAssociated",
			"resource %s is already associated with associate-id %s", alloc, a.association)
	}
	var other *ec2Address
	for _, o := range f.addresses {
		if o != a && o.association != "" && o.eni == eni && o.privateIP == ip {
			other = o
		}
	}
	if other != nil {
		if !allowReassociation {
			return "", ec2BadRequest("Resource.AlreadyAssociated",
				"the private IP %s of %s is already associated with %s", ip, eni, other.allocation)
		}
		other.association, other.eni, other.privateIP = "", "", netip.Addr{}
	}
	a.association = "eipassoc-" + f.nextIDLocked()
	a.eni, a.privateIP = eni, ip
	return a.association, nil
}

// assignLocked moves or adds secondary private IPs onto an interface. It
// validates every address before changing anything, and moves an Elastic
// IP associated with a reassigned address along with it.
func (f *AWS) assignLocked(eni string, ips []netip.Addr, allowReassignment bool) *ec2Err {
	n, ok := f.enis[eni]
	if !ok {
		return ec2NotFound(eni)
	}
	if len(ips) == 0 {
		return ec2BadRequest("MissingParameter", "Either PrivateIpAddress or SecondaryPrivateIpAddressCount must be given")
	}
	for _, ip := range ips {
		if !ip.Is4() {
			return ec2BadRequest("InvalidParameterValue", "Invalid IPv4 address %s", ip)
		}
		if !n.subnet.Contains(ip) {
			return ec2BadRequest("InvalidParameterValue",
				"Address %s does not fall within the subnet's address range", ip)
		}
		owner := f.ipOwnerLocked(ip)
		switch {
		case owner == nil || owner == n:
		case owner.primary == ip:
			return ec2BadRequest("InvalidParameterValue",
				"Address %s is the primary private IP of %s and cannot be reassigned", ip, owner.id)
		case !allowReassignment:
			return ec2BadRequest("PrivateIpAddressInUse", "The specified address %s is already in use on %s", ip, owner.id)
		}
	}
	for _, ip := range ips {
		owner := f.ipOwnerLocked(ip)
		if owner == n {
			continue
		}
		if owner != nil {
			owner.secondary = removeAddr(owner.secondary, ip)
			for _, a := range f.addresses {
				if a.association != "" && a.eni == owner.id && a.privateIP == ip {
					a.eni = n.id
				}
			}
		}
		n.secondary = append(n.secondary, ip)
	}
	return nil
}

func removeAddr(list []netip.Addr, ip netip.Addr) []netip.Addr {
	out := list[:0]
	for _, a := range list {
		if a != ip {
			out = append(out, a)
		}
	}
	return out
}

// ec2SortedKeys returns a map's keys in order, for stable answers.
func ec2SortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
