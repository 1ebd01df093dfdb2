package emulator

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"
)

// Azure is the emulator's Azure Resource Manager front end: a resource model
// of network interfaces (with their ipConfigurations), public IP addresses,
// route tables with their routes, and the virtual machines that own the NICs;
// the ARM REST calls the azure provider makes over it (Microsoft.Network
// reads and writes with ETags and long-running operations, tags, the
// Microsoft.Authorization permissions API) and a per-node instance metadata
// service (IMDS).
//
// The model follows the Network resource provider where the provider's
// safety depends on it:
//   - A top-level resource and its children share one ETag (a route carries
//     its route table's ETag, an ipConfiguration its NIC's), so If-Match on a
//     route write fails after any change to the table, tags included.
//   - A public IP is referenced by at most one ipConfiguration: a NIC write
//     that attaches it while another ipConfiguration holds it, or while the
//     write that released it is still running, is refused with 400
//     PublicIPAddressInUse.
//   - Writes of NICs and routes are long-running: the PUT answers
//     provisioningState "Updating" and an Azure-AsyncOperation URL whose
//     status turns "Succeeded" after the configured operation duration; a
//     second write to a resource while its operation runs gets 409
//     AnotherOperationInProgress.
//   - A NIC write checks the linked actions Azure checks (join on each
//     referenced subnet and public IP).
//
// Every handler enters the Gate with cloud "azure", the RBAC action of the
// call as Op (e.g. "Microsoft.Network/routeTables/routes/write") and the name
// of the top-level resource it touches as Resource (route table, NIC or
// public IP name; a status poll names the resource its operation changes).
// Operations lists them.
type Azure struct {
	e *Emulator

	mu         sync.Mutex               // guards the following fields
	vms        map[string]*azVM         // key: node
	nics       map[string]*azNIC        // key: lower-case ARM ID
	pips       map[string]*azPublicIP   // key: lower-case ARM ID
	tables     map[string]*azRouteTable // key: lower-case ARM ID
	ops        map[string]*azOperation  // key: operation ID
	events     []AzureEvent
	seq        uint64
	opDuration time.Duration
	retryAfter time.Duration
}

// RBAC actions the Azure front end names to the Gate (and checks in its
// permissions API).
const (
	azOpPermissionsRead = "Microsoft.Authorization/permissions/read"
	azOpOperationRead   = "Microsoft.Network/locations/operations/read"
	azOpNICRead         = "Microsoft.Network/networkInterfaces/read"
	azOpNICWrite        = "Microsoft.Network/networkInterfaces/write"
	azOpPIPRead         = "Microsoft.Network/publicIPAddresses/read"
	azOpPIPWrite        = "Microsoft.Network/publicIPAddresses/write"
	azOpPIPJoin         = "Microsoft.Network/publicIPAddresses/join/action"
	azOpTableRead       = "Microsoft.Network/routeTables/read"
	azOpTableWrite      = "Microsoft.Network/routeTables/write"
	azOpRouteRead       = "Microsoft.Network/routeTables/routes/read"
	azOpRouteWrite      = "Microsoft.Network/routeTables/routes/write"
	azOpSubnetJoin      = "Microsoft.Network/virtualNetworks/subnets/join/action"
	// AzureOpMetadata is the Gate op of the instance metadata service; its
	// Resource is the node. It needs no RBAC permission.
	AzureOpMetadata = "imds/metadata/instance"
)

// Operations lists every Gate op the Azure front end can name, sorted.
func (f *Azure) Operations() []string {
	ops := []string{
		azOpPermissionsRead, azOpOperationRead, azOpNICRead, azOpNICWrite,
		azOpPIPRead, azOpPIPWrite, azOpPIPJoin, azOpTableRead, azOpTableWrite,
		azOpRouteRead, azOpRouteWrite, azOpSubnetJoin, AzureOpMetadata,
	}
	sort.Strings(ops)
	return ops
}

type azVM struct {
	node, sub, rg, location, name string
	vmID                          string
	nicID                         string // lower-case ARM ID
}

type azNIC struct {
	sub, rg, location, name string
	tags                    map[string]string
	vmID                    string // ARM ID of the VM, as written
	mac                     string
	ipconfigs               []*azIPConfig
	etag                    string
	busyUntil               time.Time
}

type azIPConfig struct {
	name      string
	privateIP string
	subnetID  string
	primary   bool
	publicIP  string // lower-case ARM ID of the attached public IP, or ""
}

type azPublicIP struct {
	sub, rg, location, name string
	address                 string
	tags                    map[string]string
	etag                    string
	attachedTo              string // lower-case ARM ID of the ipConfiguration, or ""
	attachedAt              time.Time
	heldUntil               time.Time // a detach still running keeps the address in use
	heldBy                  string
}

type azRouteTable struct {
	sub, rg, location, name string
	tags                    map[string]string
	routes                  []*azRoute
	etag                    string
	busyUntil               time.Time
}

type azRoute struct {
	name, prefix, nextHopType, nextHopIP string
}

type azOperation struct {
	id, sub, location string
	resource          string // Gate resource name
	created, done     time.Time
}

// AzureEvent is one change of who holds a floating resource, for tests that
// audit the order of moves and the window without an owner.
type AzureEvent struct {
	// At is when the change took effect: when the write was accepted for a
	// detach or a route change, when its operation completed for an attach.
	At time.Time
	// Kind is "attach", "detach" (public IP) or "next-hop" (route).
	Kind string
	// Resource is the ARM ID of the public IP or the route.
	Resource string
	// Target is the ipConfiguration ID (public IP) or next-hop IP (route).
	Target string
}

func newAzure(e *Emulator) *Azure {
	return &Azure{
		e:          e,
		vms:        make(map[string]*azVM),
		nics:       make(map[string]*azNIC),
		pips:       make(map[string]*azPublicIP),
		tables:     make(map[string]*azRouteTable),
		ops:        make(map[string]*azOperation),
		retryAfter: 50 * time.Millisecond,
	}
}

// AzureVM seeds one virtual machine with one NIC and one ipConfiguration.
type AzureVM struct {
	// Node is the Handoff node whose metadata service describes this VM.
	Node                                  string
	Subscription, ResourceGroup, Location string
	// Name of the VM; NIC is the name of its NIC (default Name+"-nic").
	Name, NIC string
	// IPConfiguration is the name of the NIC's primary ipConfiguration
	// (default "ipconfig1").
	IPConfiguration string
	PrivateIP       string
	// Subnet is the subnet's ARM ID.
	Subnet string
	// MAC defaults to a derived address.
	MAC string
}

// AzurePublicIP seeds a standard static public IP address.
type AzurePublicIP struct {
	Subscription, ResourceGroup, Location, Name string
	Address                                     string
}

// AzureRoute is one route of a seeded route table.
type AzureRoute struct {
	Name, AddressPrefix string
	// NextHopIP, when set, makes the route a VirtualAppliance route;
	// otherwise its next hop type is "None".
	NextHopIP string
}

// AzureRouteTable seeds a route table.
type AzureRouteTable struct {
	Subscription, ResourceGroup, Location, Name string
	Routes                                      []AzureRoute
}

// AzureNICID is the ARM ID of a network interface.
func AzureNICID(sub, rg, name string) string {
	return azID(sub, rg, "networkInterfaces", name)
}

// AzurePublicIPID is the ARM ID of a public IP address.
func AzurePublicIPID(sub, rg, name string) string {
	return azID(sub, rg, "publicIPAddresses", name)
}

// AzureRouteTableID is the ARM ID of a route table.
func AzureRouteTableID(sub, rg, name string) string {
	return azID(sub, rg, "routeTables", name)
}

// AzureVMID is the ARM ID of a virtual machine.
func AzureVMID(sub, rg, name string) string {
	return "/subscriptions/" + sub + "/resourceGroups/" + rg + "/providers/Microsoft.Compute/virtualMachines/" + name
}

func azID(sub, rg, typ, name string) string {
	return "/subscriptions/" + sub + "/resourceGroups/" + rg + "/providers/Microsoft.Network/" + typ + "/" + name
}

func azKey(id string) string { return strings.ToLower(id) }

// AddVM seeds a VM, its NIC and the NIC's primary ipConfiguration.
func (f *Azure) AddVM(vm AzureVM) error {
	if vm.Node == "" || vm.Subscription == "" || vm.ResourceGroup == "" || vm.Name == "" {
		return fmt.Errorf("adding azure VM %q: node, subscription, resource group and name are required", vm.Name)
	}
	if _, err := netip.ParseAddr(vm.PrivateIP); err != nil {
		return fmt.Errorf("adding azure VM %q: private IP: %w", vm.Name, err)
	}
	if vm.NIC == "" {
		vm.NIC = vm.Name + "-nic"
	}
	if vm.IPConfiguration == "" {
		vm.IPConfiguration = "ipconfig1"
	}
	if vm.Location == "" {
		vm.Location = "westeurope"
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if vm.MAC == "" {
		vm.MAC = fmt.Sprintf("00-0D-3A-%02X-%02X-%02X", byte(f.seq>>16), byte(f.seq>>8), byte(len(f.nics)))
	}
	if _, dup := f.vms[vm.Node]; dup {
		return fmt.Errorf("adding azure VM %q: node %q already has a VM", vm.Name, vm.Node)
	}
	nicID := AzureNICID(vm.Subscription, vm.ResourceGroup, vm.NIC)
	if _, dup := f.nics[azKey(nicID)]; dup {
		return fmt.Errorf("adding azure VM %q: NIC %s already exists", vm.Name, nicID)
	}
	vmID := AzureVMID(vm.Subscription, vm.ResourceGroup, vm.Name)
	f.nics[azKey(nicID)] = &azNIC{
		sub: vm.Subscription, rg: vm.ResourceGroup, location: vm.Location, name: vm.NIC,
		tags: map[string]string{}, vmID: vmID, mac: vm.MAC, etag: f.newETagLocked(),
		ipconfigs: []*azIPConfig{{name: vm.IPConfiguration, privateIP: vm.PrivateIP, subnetID: vm.Subnet, primary: true}},
	}
	f.vms[vm.Node] = &azVM{
		node: vm.Node, sub: vm.Subscription, rg: vm.ResourceGroup, location: vm.Location, name: vm.Name,
		vmID: f.newUUIDLocked(), nicID: azKey(nicID),
	}
	return nil
}

// AddIPConfiguration adds a secondary ipConfiguration to a seeded NIC.
func (f *Azure) AddIPConfiguration(nicID, name, privateIP string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	nic, ok := f.nics[azKey(nicID)]
	if !ok {
		return fmt.Errorf("adding ipConfiguration %s: NIC %s not found", name, nicID)
	}
	for _, c := range nic.ipconfigs {
		if strings.EqualFold(c.name, name) {
			return fmt.Errorf("adding ipConfiguration %s to %s: already exists", name, nicID)
		}
	}
	nic.ipconfigs = append(nic.ipconfigs, &azIPConfig{name: name, privateIP: privateIP, subnetID: nic.ipconfigs[0].subnetID})
	nic.etag = f.newETagLocked()
	return nil
}

// AddPublicIP seeds an unattached public IP and returns its ARM ID.
func (f *Azure) AddPublicIP(p AzurePublicIP) (string, error) {
	if _, err := netip.ParseAddr(p.Address); err != nil {
		return "", fmt.Errorf("adding azure public IP %q: %w", p.Name, err)
	}
	if p.Location == "" {
		p.Location = "westeurope"
	}
	id := AzurePublicIPID(p.Subscription, p.ResourceGroup, p.Name)
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, dup := f.pips[azKey(id)]; dup {
		return "", fmt.Errorf("adding azure public IP: %s already exists", id)
	}
	f.pips[azKey(id)] = &azPublicIP{
		sub: p.Subscription, rg: p.ResourceGroup, location: p.Location, name: p.Name,
		address: p.Address, tags: map[string]string{}, etag: f.newETagLocked(),
	}
	return id, nil
}

// AddRouteTable seeds a route table and returns its ARM ID.
func (f *Azure) AddRouteTable(t AzureRouteTable) (string, error) {
	if t.Location == "" {
		t.Location = "westeurope"
	}
	id := AzureRouteTableID(t.Subscription, t.ResourceGroup, t.Name)
	rt := &azRouteTable{sub: t.Subscription, rg: t.ResourceGroup, location: t.Location, name: t.Name, tags: map[string]string{}}
	for _, r := range t.Routes {
		if _, err := netip.ParsePrefix(r.AddressPrefix); err != nil {
			return "", fmt.Errorf("adding route %s to route table %s: %w", r.Name, t.Name, err)
		}
		hopType := "None"
		if r.NextHopIP != "" {
			hopType = "VirtualAppliance"
		}
		rt.routes = append(rt.routes, &azRoute{name: r.Name, prefix: r.AddressPrefix, nextHopType: hopType, nextHopIP: r.NextHopIP})
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, dup := f.tables[azKey(id)]; dup {
		return "", fmt.Errorf("adding azure route table: %s already exists", id)
	}
	rt.etag = f.newETagLocked()
	f.tables[azKey(id)] = rt
	return id, nil
}

// AttachPublicIP attaches a public IP to a NIC's ipConfiguration at once,
// as an operator would have set it up before Handoff ran.
func (f *Azure) AttachPublicIP(pipID, nicID, ipConfiguration string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	pip, ok := f.pips[azKey(pipID)]
	if !ok {
		return fmt.Errorf("attaching public IP %s: not found", pipID)
	}
	nic, ok := f.nics[azKey(nicID)]
	if !ok {
		return fmt.Errorf("attaching public IP %s: NIC %s not found", pipID, nicID)
	}
	cfg := nic.ipconfig(ipConfiguration)
	if cfg == nil {
		return fmt.Errorf("attaching public IP %s: NIC %s has no ipConfiguration %q", pipID, nicID, ipConfiguration)
	}
	if pip.attachedTo != "" {
		return fmt.Errorf("attaching public IP %s: already attached to %s", pipID, pip.attachedTo)
	}
	cfg.publicIP = azKey(pipID)
	pip.attachedTo = azKey(nicID + "/ipConfigurations/" + cfg.name)
	pip.etag = f.newETagLocked()
	nic.etag = f.newETagLocked()
	return nil
}

// PublicIPAttachment reports the ipConfiguration (lower-case ARM ID, "" when
// unattached) a public IP is attached to, and its tags.
func (f *Azure) PublicIPAttachment(pipID string) (ipConfigID string, tags map[string]string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	pip, ok := f.pips[azKey(pipID)]
	if !ok {
		return "", nil, fmt.Errorf("public IP %s not found", pipID)
	}
	return pip.attachedTo, azCopyTags(pip.tags), nil
}

// RouteNextHop reports a route's next-hop IP and its route table's tags.
func (f *Azure) RouteNextHop(tableID, route string) (nextHop string, tags map[string]string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rt, ok := f.tables[azKey(tableID)]
	if !ok {
		return "", nil, fmt.Errorf("route table %s not found", tableID)
	}
	r := rt.route(route)
	if r == nil {
		return "", nil, fmt.Errorf("route %s not found in %s", route, tableID)
	}
	return r.nextHopIP, azCopyTags(rt.tags), nil
}

// SetRouteNextHop changes a route's next hop behind Handoff's back, as an
// operator or another tool would.
func (f *Azure) SetRouteNextHop(tableID, route, nextHop string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	rt, ok := f.tables[azKey(tableID)]
	if !ok {
		return fmt.Errorf("route table %s not found", tableID)
	}
	r := rt.route(route)
	if r == nil {
		return fmt.Errorf("route %s not found in %s", route, tableID)
	}
	r.nextHopIP, r.nextHopType = nextHop, "VirtualAppliance"
	rt.etag = f.newETagLocked()
	return nil
}

// Events returns the ownership changes so far, oldest first.
func (f *Azure) Events() []AzureEvent {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := append([]AzureEvent(nil), f.events...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].At.Before(out[j].At) })
	return out
}

// SetOperationDuration sets how long NIC and route writes stay "InProgress"
// (default 0: done at the first status poll).
func (f *Azure) SetOperationDuration(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.opDuration = d
}

// SetRetryAfter sets the delay a throttled answer asks for (default 50 ms).
// It is sent as Retry-After (whole seconds, at least 1, as ARM does) and as
// retry-after-ms, which the Azure SDK prefers, so tests need not wait
// seconds.
func (f *Azure) SetRetryAfter(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.retryAfter = d
}

func (n *azNIC) ipconfig(name string) *azIPConfig {
	for _, c := range n.ipconfigs {
		if strings.EqualFold(c.name, name) {
			return c
		}
	}
	return nil
}

func (n *azNIC) id() string { return AzureNICID(n.sub, n.rg, n.name) }

func (t *azRouteTable) route(name string) *azRoute {
	for _, r := range t.routes {
		if strings.EqualFold(r.name, name) {
			return r
		}
	}
	return nil
}

func (t *azRouteTable) id() string { return AzureRouteTableID(t.sub, t.rg, t.name) }

func (p *azPublicIP) id() string { return AzurePublicIPID(p.sub, p.rg, p.name) }

// newETagLocked returns a fresh weak ETag in the form ARM uses.
func (f *Azure) newETagLocked() string {
	return `W/"` + f.newUUIDLocked() + `"`
}

func (f *Azure) newUUIDLocked() string {
	f.seq++
	var b [10]byte
	_, _ = rand.Read(b[:])
	h := hex.EncodeToString(b[:])
	return fmt.Sprintf("%08x-%s-%s-%s-%s", uint32(f.seq), h[0:4], h[4:8], h[8:12], h[12:20]+"0000")
}

func azCopyTags(in map[string]string) map[string]string {
	out := make(map[string]string, len(in))
	for k, v := range in {
		out[k] = v
	}
	return out
}
