package emulator

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
)

// gceBase is the prefix GCE puts on every selfLink and reference URL. The
// emulator answers references in the same form the real API does, so the
// provider's URL handling is tested against what production returns.
const gceBase = "https://www.googleapis.com/compute/v1/"

// GCP is the emulator's Google Compute Engine front end: a resource model of
// instances (NICs, alias IP ranges, labels with fingerprints), target
// instances, regional forwarding rules (protocol forwarding) and routes, the
// GCE REST API over it with zonal, regional and global Operation objects and
// requestId idempotency, and a per-instance metadata server.
type GCP struct {
	e *Emulator

	mu              sync.Mutex                    // guards the following fields
	instances       map[string]*gceInstance       // key: project/zone/name
	targetInstances map[string]*gceTargetInstance // key: project/zone/name
	forwardingRules map[string]*gceForwardingRule // key: project/region/name
	routes          map[string]*gceRoute          // key: project/name
	ops             map[string]*gceOp             // key: project/name
	requestIDs      map[string]*gceOp             // key: project/requestId
	opDelay         time.Duration
	seq             uint64
}

func newGCP(e *Emulator) *GCP {
	f := &GCP{e: e}
	f.resetLocked()
	return f
}

func (f *GCP) resetLocked() {
	f.instances = make(map[string]*gceInstance)
	f.targetInstances = make(map[string]*gceTargetInstance)
	f.forwardingRules = make(map[string]*gceForwardingRule)
	f.routes = make(map[string]*gceRoute)
	f.ops = make(map[string]*gceOp)
	f.requestIDs = make(map[string]*gceOp)
}

type gceInstance struct {
	project, zone, name string
	id                  uint64
	labels              map[string]string
	labelFP             string
	nics                []*gceNIC
}

type gceNIC struct {
	name, network, subnetwork, ip string
	fingerprint                   string
	aliases                       []GCPAliasRange
}

type gceTargetInstance struct {
	project, zone, name string
	id                  uint64
	instance            string // full URL of the VM
}

type gceForwardingRule struct {
	project, region, name string
	id                    uint64
	ip, protocol          string
	target                string // full URL of the target, "" when none
	labels                map[string]string
	labelFP               string
}

type gceRoute struct {
	GCPRoute
	id      uint64
	created time.Time
}

// GCPInstance seeds one VM with a single NIC.
type GCPInstance struct {
	Project, Zone, Name string
	// Network and Subnetwork are short names ("vpc", "gateways").
	Network, Subnetwork string
	// IP is the NIC's primary internal address.
	IP string
	// Aliases are alias IP ranges already on the NIC.
	Aliases []GCPAliasRange
	// Labels are the instance's labels.
	Labels map[string]string
}

// GCPAliasRange is one alias IP range of a NIC.
type GCPAliasRange struct {
	CIDR      string
	RangeName string // the subnet's secondary range name, "" for the primary range
}

// GCPRoute seeds or describes one VPC route.
type GCPRoute struct {
	Project, Name string
	// Network is the short network name ("vpc").
	Network   string
	DestRange string
	Priority  uint32
	// NextHopInstance is a reference ("projects/p/zones/z/instances/i" or
	// a full URL); NextHopIP an address. Exactly one is set.
	NextHopInstance string
	NextHopIP       string
	Description     string
	Tags            []string
}

// AddInstance seeds a VM. Its NIC is "nic0".
func (f *GCP) AddInstance(in GCPInstance) {
	f.mu.Lock()
	defer f.mu.Unlock()
	labels := make(map[string]string, len(in.Labels))
	for k, v := range in.Labels {
		labels[k] = v
	}
	f.instances[in.Project+"/"+in.Zone+"/"+in.Name] = &gceInstance{
		project: in.Project, zone: in.Zone, name: in.Name, id: f.nextIDLocked(),
		labels: labels, labelFP: newFingerprint(),
		nics: []*gceNIC{{
			name: "nic0", network: in.Network, subnetwork: in.Subnetwork, ip: in.IP,
			fingerprint: newFingerprint(), aliases: append([]GCPAliasRange(nil), in.Aliases...),
		}},
	}
}

// AddTargetInstance seeds a target instance (the target of protocol
// forwarding) that sends to the VM named instance in the same zone.
func (f *GCP) AddTargetInstance(project, zone, name, instance string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.targetInstances[project+"/"+zone+"/"+name] = &gceTargetInstance{
		project: project, zone: zone, name: name, id: f.nextIDLocked(),
		instance: gceBase + "projects/" + project + "/zones/" + zone + "/instances/" + instance,
	}
}

// AddForwardingRule seeds a regional forwarding rule for ip (protocol
// forwarding, L3_DEFAULT). target is a target instance reference or "".
func (f *GCP) AddForwardingRule(project, region, name, ip, target string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if target != "" {
		target = gceURL(project, target)
	}
	f.forwardingRules[project+"/"+region+"/"+name] = &gceForwardingRule{
		project: project, region: region, name: name, id: f.nextIDLocked(),
		ip: ip, protocol: "L3_DEFAULT", target: target,
		labels: map[string]string{}, labelFP: newFingerprint(),
	}
}

// AddRoute seeds a route.
func (f *GCP) AddRoute(r GCPRoute) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.NextHopInstance != "" {
		r.NextHopInstance = gceURL(r.Project, r.NextHopInstance)
	}
	f.routes[r.Project+"/"+r.Name] = &gceRoute{GCPRoute: r, id: f.nextIDLocked(), created: time.Now()}
}

// Reset forgets every resource and operation (metadata servers keep running
// and answer from the new model).
func (f *GCP) Reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.resetLocked()
}

// SetOperationDelay makes every mutation's Operation PENDING for d before it
// turns DONE, the way GCE reports work in progress. The change itself is
// applied when the request is accepted.
func (f *GCP) SetOperationDelay(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.opDelay = d
}

// ForwardingRuleTarget returns the target reference
// ("projects/p/zones/z/targetInstances/t") of a forwarding rule, or "".
func (f *GCP) ForwardingRuleTarget(project, region, name string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fr := f.forwardingRules[project+"/"+region+"/"+name]; fr != nil {
		return strings.TrimPrefix(fr.target, gceBase)
	}
	return ""
}

// ForwardingRuleLabels returns a copy of a forwarding rule's labels.
func (f *GCP) ForwardingRuleLabels(project, region, name string) map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fr := f.forwardingRules[project+"/"+region+"/"+name]; fr != nil {
		return copyLabels(fr.labels)
	}
	return nil
}

// InstanceAliases returns the alias CIDRs on an instance's nic0.
func (f *GCP) InstanceAliases(project, zone, name string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	in := f.instances[project+"/"+zone+"/"+name]
	if in == nil {
		return nil
	}
	var out []string
	for _, a := range in.nics[0].aliases {
		out = append(out, a.CIDR)
	}
	return out
}

// Routes returns the project's routes sorted by name.
func (f *GCP) Routes(project string) []GCPRoute {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []GCPRoute
	for _, r := range f.routes {
		if r.Project == project {
			out = append(out, r.GCPRoute)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Ops lists every API operation the GCP front end serves, as it names them
// to the Gate ("compute.forwardingRules.setTarget"...), so tests can ask the
// Gate which of them were called.
func (f *GCP) Ops() []string {
	eps := f.endpoints()
	ops := make([]string, 0, len(eps))
	for _, ep := range eps {
		ops = append(ops, ep.op)
	}
	sort.Strings(ops)
	return ops
}

func (f *GCP) nextIDLocked() uint64 {
	f.seq++
	return 1000000000000000000 + f.seq
}

func newFingerprint() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on Linux
	return base64.StdEncoding.EncodeToString(b)
}

func copyLabels(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// gceURL turns a partial reference ("zones/z/targetInstances/t",
// "projects/p/zones/...") or a full URL into the full URL GCE stores.
func gceURL(project, ref string) string {
	if i := strings.Index(ref, "projects/"); i >= 0 {
		return gceBase + ref[i:]
	}
	return gceBase + "projects/" + project + "/" + strings.TrimPrefix(ref, "/")
}

// gceRef strips the URL prefix of a reference: "projects/p/zones/z/...".
func gceRef(u string) string {
	if i := strings.Index(u, "projects/"); i >= 0 {
		return u[i:]
	}
	return u
}

func (in *gceInstance) json() map[string]any {
	nics := make([]map[string]any, 0, len(in.nics))
	for _, n := range in.nics {
		aliases := make([]map[string]any, 0, len(n.aliases))
		for _, a := range n.aliases {
			m := map[string]any{"ipCidrRange": a.CIDR}
			if a.RangeName != "" {
				m["subnetworkRangeName"] = a.RangeName
			}
			aliases = append(aliases, m)
		}
		nics = append(nics, map[string]any{
			"kind":          "compute#networkInterface",
			"name":          n.name,
			"network":       gceBase + "projects/" + in.project + "/global/networks/" + n.network,
			"subnetwork":    gceBase + "projects/" + in.project + "/regions/" + zoneRegion(in.zone) + "/subnetworks/" + n.subnetwork,
			"networkIP":     n.ip,
			"fingerprint":   n.fingerprint,
			"aliasIpRanges": aliases,
			"stackType":     "IPV4_ONLY",
		})
	}
	return map[string]any{
		"kind":              "compute#instance",
		"id":                fmt.Sprint(in.id),
		"name":              in.name,
		"zone":              gceBase + "projects/" + in.project + "/zones/" + in.zone,
		"status":            "RUNNING",
		"selfLink":          gceBase + "projects/" + in.project + "/zones/" + in.zone + "/instances/" + in.name,
		"labels":            in.labels,
		"labelFingerprint":  in.labelFP,
		"networkInterfaces": nics,
		"canIpForward":      true,
	}
}

func (fr *gceForwardingRule) json() map[string]any {
	m := map[string]any{
		"kind":                "compute#forwardingRule",
		"id":                  fmt.Sprint(fr.id),
		"name":                fr.name,
		"region":              gceBase + "projects/" + fr.project + "/regions/" + fr.region,
		"IPAddress":           fr.ip,
		"IPProtocol":          fr.protocol,
		"loadBalancingScheme": "EXTERNAL",
		"selfLink":            gceBase + "projects/" + fr.project + "/regions/" + fr.region + "/forwardingRules/" + fr.name,
		"labels":              fr.labels,
		"labelFingerprint":    fr.labelFP,
	}
	if fr.target != "" {
		m["target"] = fr.target
	}
	return m
}

func (r *gceRoute) json() map[string]any {
	m := map[string]any{
		"kind":              "compute#route",
		"id":                fmt.Sprint(r.id),
		"name":              r.Name,
		"network":           gceBase + "projects/" + r.Project + "/global/networks/" + r.Network,
		"destRange":         r.DestRange,
		"priority":          r.Priority,
		"description":       r.Description,
		"creationTimestamp": r.created.Format(time.RFC3339Nano),
		"selfLink":          gceBase + "projects/" + r.Project + "/global/routes/" + r.Name,
		"routeType":         "STATIC",
	}
	if len(r.Tags) > 0 {
		m["tags"] = r.Tags
	}
	if r.NextHopInstance != "" {
		m["nextHopInstance"] = r.NextHopInstance
	}
	if r.NextHopIP != "" {
		m["nextHopIp"] = r.NextHopIP
	}
	return m
}

// zoneRegion maps "us-central1-a" to "us-central1".
func zoneRegion(zone string) string {
	if i := strings.LastIndexByte(zone, '-'); i > 0 {
		return zone[:i]
	}
	return zone
}
