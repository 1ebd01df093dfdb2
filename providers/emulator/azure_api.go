package emulator

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"sort"
	"strings"
	"time"
)

const (
	azNetPrefix = "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network"
	// azMaxTagValue is ARM's limit on a tag value's length.
	azMaxTagValue = 256
)

func (f *Azure) register(mux *http.ServeMux) {
	mux.HandleFunc("GET "+azNetPrefix+"/routeTables/{name}", f.getRouteTable)
	mux.HandleFunc("PATCH "+azNetPrefix+"/routeTables/{name}", f.patchRouteTableTags)
	mux.HandleFunc("GET "+azNetPrefix+"/routeTables/{name}/routes/{route}", f.getRoute)
	mux.HandleFunc("PUT "+azNetPrefix+"/routeTables/{name}/routes/{route}", f.putRoute)
	mux.HandleFunc("GET "+azNetPrefix+"/networkInterfaces", f.listNICs)
	mux.HandleFunc("GET "+azNetPrefix+"/networkInterfaces/{name}", f.getNIC)
	mux.HandleFunc("PUT "+azNetPrefix+"/networkInterfaces/{name}", f.putNIC)
	mux.HandleFunc("GET "+azNetPrefix+"/publicIPAddresses/{name}", f.getPublicIP)
	mux.HandleFunc("PATCH "+azNetPrefix+"/publicIPAddresses/{name}", f.patchPublicIPTags)
	mux.HandleFunc("GET "+azNetPrefix+"/{type}/{name}/providers/Microsoft.Authorization/permissions", f.listPermissions)
	mux.HandleFunc("GET /subscriptions/{sub}/providers/Microsoft.Network/locations/{loc}/operations/{id}", f.getOperation)
	mux.HandleFunc("/subscriptions/", func(w http.ResponseWriter, r *http.Request) {
		f.writeError(w, http.StatusNotFound, "InvalidResourceType",
			fmt.Sprintf("The emulator does not serve %s %s.", r.Method, r.URL.Path))
	})
}

// enter runs the Gate for a call and checks what ARM checks before it looks
// at the resource: a bearer token and an api-version. It answers and returns
// false when the call must stop.
func (f *Azure) enter(w http.ResponseWriter, r *http.Request, op, resource string) bool {
	// Read the body before the Gate may hold the call: net/http notices a
	// client that gave up (an SDK try timeout) only once the body is read,
	// and the held handler must then return at once.
	if r.Body != nil && r.Body != http.NoBody {
		b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
		if err != nil {
			f.writeError(w, http.StatusBadRequest, "InvalidRequestContent", "Reading the request: "+err.Error())
			return false
		}
		r.Body = io.NopCloser(bytes.NewReader(b))
	}
	if kind, hit := f.e.gate.Enter(r.Context(), "azure", op, resource); hit {
		f.writeFault(w, kind, op, r.URL.Path, false)
		return false
	}
	auth := r.Header.Get("Authorization")
	if tok, ok := strings.CutPrefix(auth, "Bearer "); !ok || strings.TrimSpace(tok) == "" {
		f.writeError(w, http.StatusUnauthorized, "AuthenticationFailed",
			"Authentication failed. The 'Authorization' header is missing or is not a bearer token.")
		return false
	}
	if r.URL.Query().Get("api-version") == "" {
		f.writeError(w, http.StatusBadRequest, "MissingApiVersionParameter",
			"The api-version query parameter (?api-version=) is required for all requests.")
		return false
	}
	f.e.log.Debug("azure call", "op", op, "resource", resource, "method", r.Method, "path", r.URL.Path)
	return true
}

// linked runs the Gate for a linked access check (join on a subnet or a
// public IP a NIC write references), as ARM authorizes them.
func (f *Azure) linked(w http.ResponseWriter, r *http.Request, op, resource string) bool {
	if kind, hit := f.e.gate.Enter(r.Context(), "azure", op, resource); hit {
		f.writeFault(w, kind, op, resource, true)
		return false
	}
	return true
}

func azReadBody(r *http.Request, v any) error {
	b, err := io.ReadAll(r.Body) // enter already bounded and buffered it
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// ifMatchFails reports whether the request's If-Match precondition fails
// against etag.
func azIfMatchFails(r *http.Request, etag string) bool {
	m := r.Header.Get("If-Match")
	return m != "" && m != "*" && m != etag
}

func (f *Azure) notFound(w http.ResponseWriter, r *http.Request, typ, name string) {
	f.writeError(w, http.StatusNotFound, "ResourceNotFound", fmt.Sprintf(
		"The Resource 'Microsoft.Network/%s/%s' under resource group '%s' was not found.", typ, name, r.PathValue("rg")))
}

func (f *Azure) preconditionFailed(w http.ResponseWriter, id string) {
	f.writeError(w, http.StatusPreconditionFailed, "PreconditionFailed", fmt.Sprintf(
		"The condition specified using HTTP conditional header(s) is not met for %s.", id))
}

func (f *Azure) busy(w http.ResponseWriter, id string) {
	f.writeError(w, http.StatusConflict, "AnotherOperationInProgress", fmt.Sprintf(
		"Another operation on this or dependent resource is in progress. Resource %s.", id))
}

// startOperationLocked registers a long-running operation and sets the
// Azure-AsyncOperation header the SDK's poller follows.
func (f *Azure) startOperationLocked(w http.ResponseWriter, r *http.Request, sub, location, resource string, now time.Time) time.Time {
	for id, op := range f.ops {
		if now.Sub(op.done) > 5*time.Minute {
			delete(f.ops, id)
		}
	}
	op := &azOperation{id: f.newUUIDLocked(), sub: sub, location: location, resource: resource, created: now, done: now.Add(f.opDuration)}
	f.ops[op.id] = op
	u := fmt.Sprintf("https://%s/subscriptions/%s/providers/Microsoft.Network/locations/%s/operations/%s?api-version=%s",
		r.Host, sub, location, op.id, r.URL.Query().Get("api-version"))
	w.Header().Set("Azure-AsyncOperation", u)
	return op.done
}

func (f *Azure) getOperation(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	f.mu.Lock()
	op, ok := f.ops[id]
	resource := ""
	if ok {
		resource = op.resource
	}
	f.mu.Unlock()
	if !f.enter(w, r, azOpOperationRead, resource) {
		return
	}
	if !ok {
		f.writeError(w, http.StatusNotFound, "OperationNotFound", "Operation "+id+" was not found.")
		return
	}
	now := time.Now()
	st := azWireOperationStatus{Status: "InProgress", StartTime: op.created.UTC().Format(time.RFC3339Nano)}
	if !now.Before(op.done) {
		st.Status = "Succeeded"
		st.EndTime = op.done.UTC().Format(time.RFC3339Nano)
	}
	f.writeJSON(w, http.StatusOK, st)
}

// --- route tables and routes ---

func (f *Azure) tableLocked(r *http.Request) (*azRouteTable, bool) {
	t, ok := f.tables[azKey(AzureRouteTableID(r.PathValue("sub"), r.PathValue("rg"), r.PathValue("name")))]
	return t, ok
}

func (f *Azure) getRouteTable(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if !f.enter(w, r, azOpTableRead, name) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.tableLocked(r)
	if !ok {
		f.notFound(w, r, "routeTables", name)
		return
	}
	f.writeJSON(w, http.StatusOK, f.renderRouteTableLocked(t, time.Now()))
}

func (f *Azure) patchRouteTableTags(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if !f.enter(w, r, azOpTableWrite, name) {
		return
	}
	var body azWireTags
	if err := azReadBody(r, &body); err != nil {
		f.writeError(w, http.StatusBadRequest, "InvalidRequestContent", "The request content was invalid: "+err.Error())
		return
	}
	tags, msg := azTags(body.Tags)
	if msg != "" {
		f.writeError(w, http.StatusBadRequest, "InvalidTagValueLength", msg)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.tableLocked(r)
	if !ok {
		f.notFound(w, r, "routeTables", name)
		return
	}
	if azIfMatchFails(r, t.etag) {
		f.preconditionFailed(w, t.id())
		return
	}
	t.tags = tags
	t.etag = f.newETagLocked()
	f.writeJSON(w, http.StatusOK, f.renderRouteTableLocked(t, time.Now()))
}

func (f *Azure) getRoute(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if !f.enter(w, r, azOpRouteRead, name) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.tableLocked(r)
	if !ok {
		f.notFound(w, r, "routeTables", name)
		return
	}
	rt := t.route(r.PathValue("route"))
	if rt == nil {
		f.notFound(w, r, "routeTables/routes", name+"/"+r.PathValue("route"))
		return
	}
	f.writeJSON(w, http.StatusOK, f.renderRouteLocked(t, rt, azProvisioning(t.busyUntil, time.Now())))
}

func (f *Azure) putRoute(w http.ResponseWriter, r *http.Request) {
	name, routeName := r.PathValue("name"), r.PathValue("route")
	if !f.enter(w, r, azOpRouteWrite, name) {
		return
	}
	var body azWireRoute
	if err := azReadBody(r, &body); err != nil || body.Properties == nil {
		f.writeError(w, http.StatusBadRequest, "InvalidRequestFormat", fmt.Sprintf("Cannot parse the request: %v", err))
		return
	}
	p := body.Properties
	if _, err := netip.ParsePrefix(p.AddressPrefix); err != nil {
		f.writeError(w, http.StatusBadRequest, "InvalidRequestFormat", fmt.Sprintf("Route %s: invalid addressPrefix %q.", routeName, p.AddressPrefix))
		return
	}
	switch p.NextHopType {
	case "VirtualAppliance":
		if _, err := netip.ParseAddr(p.NextHopIPAddress); err != nil {
			f.writeError(w, http.StatusBadRequest, "InvalidNextHopIpAddress", fmt.Sprintf(
				"Route %s has next hop type VirtualAppliance and an invalid next hop IP address %q.", routeName, p.NextHopIPAddress))
			return
		}
	case "None", "Internet", "VnetLocal", "VirtualNetworkGateway":
		if p.NextHopIPAddress != "" {
			f.writeError(w, http.StatusBadRequest, "NextHopIpAddressNotAllowed", fmt.Sprintf(
				"Route %s: a next hop IP address is only allowed for next hop type VirtualAppliance.", routeName))
			return
		}
	default:
		f.writeError(w, http.StatusBadRequest, "InvalidRequestFormat", fmt.Sprintf("Route %s: invalid nextHopType %q.", routeName, p.NextHopType))
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.tableLocked(r)
	if !ok {
		f.notFound(w, r, "routeTables", name)
		return
	}
	if azIfMatchFails(r, t.etag) {
		f.preconditionFailed(w, t.id()+"/routes/"+routeName)
		return
	}
	now := time.Now()
	if now.Before(t.busyUntil) {
		f.busy(w, t.id())
		return
	}
	status := http.StatusOK
	rt := t.route(routeName)
	if rt == nil {
		rt = &azRoute{name: routeName}
		t.routes = append(t.routes, rt)
		status = http.StatusCreated
	}
	rt.prefix, rt.nextHopType, rt.nextHopIP = p.AddressPrefix, p.NextHopType, p.NextHopIPAddress
	t.etag = f.newETagLocked()
	t.busyUntil = f.startOperationLocked(w, r, t.sub, t.location, t.name, now)
	f.events = append(f.events, AzureEvent{At: now, Kind: "next-hop", Resource: t.id() + "/routes/" + rt.name, Target: rt.nextHopIP})
	f.writeJSON(w, status, f.renderRouteLocked(t, rt, "Updating"))
}

// --- network interfaces ---

func (f *Azure) nicLocked(r *http.Request) (*azNIC, bool) {
	n, ok := f.nics[azKey(AzureNICID(r.PathValue("sub"), r.PathValue("rg"), r.PathValue("name")))]
	return n, ok
}

func (f *Azure) listNICs(w http.ResponseWriter, r *http.Request) {
	if !f.enter(w, r, azOpNICRead, r.PathValue("rg")) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	var out struct {
		Value []azWireNIC `json:"value"`
	}
	out.Value = []azWireNIC{}
	for _, n := range f.nics {
		if strings.EqualFold(n.sub, r.PathValue("sub")) && strings.EqualFold(n.rg, r.PathValue("rg")) {
			out.Value = append(out.Value, f.renderNICLocked(n, azProvisioning(n.busyUntil, now)))
		}
	}
	sort.Slice(out.Value, func(i, j int) bool { return out.Value[i].Name < out.Value[j].Name })
	f.writeJSON(w, http.StatusOK, out)
}

func (f *Azure) getNIC(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if !f.enter(w, r, azOpNICRead, name) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	n, ok := f.nicLocked(r)
	if !ok {
		f.notFound(w, r, "networkInterfaces", name)
		return
	}
	f.writeJSON(w, http.StatusOK, f.renderNICLocked(n, azProvisioning(n.busyUntil, time.Now())))
}

// putNIC updates a NIC. Only what the provider changes is modelled: which
// public IP each existing ipConfiguration references, and the tags.
func (f *Azure) putNIC(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if !f.enter(w, r, azOpNICWrite, name) {
		return
	}
	var body azWireNIC
	if err := azReadBody(r, &body); err != nil || body.Properties == nil {
		f.writeError(w, http.StatusBadRequest, "InvalidRequestFormat", fmt.Sprintf("Cannot parse the request: %v", err))
		return
	}
	// ARM authorizes the linked resources a NIC references before it looks
	// at the change itself.
	wantPIP := make(map[string]string) // ipConfiguration name (lower) -> public IP key
	seenPIP := make(map[string]string)
	for _, c := range body.Properties.IPConfigurations {
		if c.Properties == nil {
			continue
		}
		if c.Properties.Subnet != nil && c.Properties.Subnet.ID != "" {
			if !f.linked(w, r, azOpSubnetJoin, azSubnetResource(c.Properties.Subnet.ID)) {
				return
			}
		}
		if pip := c.Properties.PublicIPAddress; pip != nil && pip.ID != "" {
			if other, dup := seenPIP[azKey(pip.ID)]; dup {
				f.writeError(w, http.StatusBadRequest, "PublicIPAddressInUse", fmt.Sprintf(
					"Public IP address %s is referenced by both ipConfigurations %s and %s.", pip.ID, other, c.Name))
				return
			}
			seenPIP[azKey(pip.ID)] = c.Name
			if !f.linked(w, r, azOpPIPJoin, azLastSegment(pip.ID)) {
				return
			}
			wantPIP[strings.ToLower(c.Name)] = azKey(pip.ID)
		}
	}
	tags, msg := azTags(azTagPtrs(body.Tags))
	if msg != "" {
		f.writeError(w, http.StatusBadRequest, "InvalidTagValueLength", msg)
		return
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	n, ok := f.nicLocked(r)
	if !ok {
		f.writeError(w, http.StatusBadRequest, "InvalidRequestContent", "The emulator only updates existing network interfaces; "+name+" does not exist.")
		return
	}
	if azIfMatchFails(r, n.etag) {
		f.preconditionFailed(w, n.id())
		return
	}
	now := time.Now()
	if now.Before(n.busyUntil) {
		f.busy(w, n.id())
		return
	}
	if len(body.Properties.IPConfigurations) != len(n.ipconfigs) {
		f.writeError(w, http.StatusBadRequest, "InvalidRequestContent", "The emulator does not add or remove ipConfigurations.")
		return
	}
	for _, c := range body.Properties.IPConfigurations {
		if n.ipconfig(c.Name) == nil {
			f.writeError(w, http.StatusBadRequest, "InvalidRequestContent", fmt.Sprintf("The emulator does not add ipConfigurations (%s).", c.Name))
			return
		}
	}
	// Validate every attach before changing anything: the write is atomic.
	for cfgName, pipKey := range wantPIP {
		cfg := n.ipconfig(cfgName)
		if cfg.publicIP == pipKey {
			continue
		}
		pip, ok := f.pips[pipKey]
		if !ok {
			f.writeError(w, http.StatusBadRequest, "InvalidResourceReference", fmt.Sprintf(
				"Resource %s referenced by resource %s was not found.", pipKey, n.id()))
			return
		}
		cfgKey := azKey(n.id() + "/ipConfigurations/" + cfg.name)
		if holder := pip.attachedTo; holder != "" && holder != cfgKey {
			// Moving between ipConfigurations of this NIC in one write is
			// fine when the body releases it from the old one.
			nicKey, oldCfg, _ := strings.Cut(holder, "/ipconfigurations/")
			if nicKey != azKey(n.id()) || wantPIP[oldCfg] == pipKey {
				f.writeError(w, http.StatusBadRequest, "PublicIPAddressInUse", fmt.Sprintf(
					"Resource %s is referenced by resource %s; it cannot be referenced by %s as well. A public IP address can be attached to one IP configuration only.",
					pip.id(), f.canonicalIPConfigIDLocked(holder), n.id()+"/ipConfigurations/"+cfg.name))
				return
			}
		}
		if now.Before(pip.heldUntil) && pip.heldBy != cfgKey {
			f.writeError(w, http.StatusBadRequest, "PublicIPAddressInUse", fmt.Sprintf(
				"Resource %s is still being released by %s.", pip.id(), f.canonicalIPConfigIDLocked(pip.heldBy)))
			return
		}
	}
	done := now.Add(f.opDuration)
	// Detaches first, then attaches, so a move inside one NIC works.
	for _, cfg := range n.ipconfigs {
		want := wantPIP[strings.ToLower(cfg.name)]
		if cfg.publicIP == "" || cfg.publicIP == want {
			continue
		}
		cfgKey := azKey(n.id() + "/ipConfigurations/" + cfg.name)
		if pip, ok := f.pips[cfg.publicIP]; ok && pip.attachedTo == cfgKey {
			pip.attachedTo = ""
			pip.heldUntil, pip.heldBy = done, cfgKey
			pip.etag = f.newETagLocked()
			f.events = append(f.events, AzureEvent{At: now, Kind: "detach", Resource: pip.id(), Target: n.id() + "/ipConfigurations/" + cfg.name})
		}
		cfg.publicIP = ""
	}
	for _, cfg := range n.ipconfigs {
		want := wantPIP[strings.ToLower(cfg.name)]
		if want == "" || cfg.publicIP == want {
			continue
		}
		pip := f.pips[want]
		pip.attachedTo = azKey(n.id() + "/ipConfigurations/" + cfg.name)
		pip.attachedAt = done
		pip.heldUntil, pip.heldBy = time.Time{}, ""
		pip.etag = f.newETagLocked()
		cfg.publicIP = want
		f.events = append(f.events, AzureEvent{At: done, Kind: "attach", Resource: pip.id(), Target: n.id() + "/ipConfigurations/" + cfg.name})
	}
	n.tags = tags
	n.etag = f.newETagLocked()
	n.busyUntil = f.startOperationLocked(w, r, n.sub, n.location, n.name, now)
	f.writeJSON(w, http.StatusOK, f.renderNICLocked(n, "Updating"))
}

// --- public IP addresses ---

func (f *Azure) publicIPLocked(r *http.Request) (*azPublicIP, bool) {
	p, ok := f.pips[azKey(AzurePublicIPID(r.PathValue("sub"), r.PathValue("rg"), r.PathValue("name")))]
	return p, ok
}

func (f *Azure) getPublicIP(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if !f.enter(w, r, azOpPIPRead, name) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.publicIPLocked(r)
	if !ok {
		f.notFound(w, r, "publicIPAddresses", name)
		return
	}
	f.writeJSON(w, http.StatusOK, f.renderPublicIPLocked(p))
}

func (f *Azure) patchPublicIPTags(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if !f.enter(w, r, azOpPIPWrite, name) {
		return
	}
	var body azWireTags
	if err := azReadBody(r, &body); err != nil {
		f.writeError(w, http.StatusBadRequest, "InvalidRequestContent", "The request content was invalid: "+err.Error())
		return
	}
	tags, msg := azTags(body.Tags)
	if msg != "" {
		f.writeError(w, http.StatusBadRequest, "InvalidTagValueLength", msg)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.publicIPLocked(r)
	if !ok {
		f.notFound(w, r, "publicIPAddresses", name)
		return
	}
	if azIfMatchFails(r, p.etag) {
		f.preconditionFailed(w, p.id())
		return
	}
	p.tags = tags
	p.etag = f.newETagLocked()
	f.writeJSON(w, http.StatusOK, f.renderPublicIPLocked(p))
}

// --- Microsoft.Authorization permissions ---

// listPermissions answers the permissions API for one resource: every
// action, minus the actions the Gate would refuse on that resource right
// now, so a dry permission check agrees with the faults a test injected.
func (f *Azure) listPermissions(w http.ResponseWriter, r *http.Request) {
	typ, name := r.PathValue("type"), r.PathValue("name")
	if !f.enter(w, r, azOpPermissionsRead, name) {
		return
	}
	type check struct{ op, resource string }
	var checks []check
	switch strings.ToLower(typ) {
	case "networkinterfaces":
		checks = []check{{azOpNICRead, name}, {azOpNICWrite, name}}
		f.mu.Lock()
		if n, ok := f.nicLocked(r); ok {
			for _, c := range n.ipconfigs {
				if c.subnetID != "" {
					checks = append(checks, check{azOpSubnetJoin, azSubnetResource(c.subnetID)})
				}
			}
		}
		f.mu.Unlock()
	case "publicipaddresses":
		checks = []check{{azOpPIPRead, name}, {azOpPIPWrite, name}, {azOpPIPJoin, name}}
	case "routetables":
		checks = []check{{azOpTableRead, name}, {azOpTableWrite, name}, {azOpRouteRead, name}, {azOpRouteWrite, name}}
	default:
		f.writeError(w, http.StatusNotFound, "InvalidResourceType", "The emulator has no permissions for resource type "+typ+".")
		return
	}
	perm := azWirePermission{Actions: []string{"*"}, NotActions: []string{}, DataActions: []string{}, NotDataActions: []string{}}
	denied := make(map[string]bool)
	for _, c := range checks {
		if kind, hit := f.e.gate.Peek("azure", c.op, c.resource); hit && kind == PermissionDenied && !denied[c.op] {
			denied[c.op] = true
			perm.NotActions = append(perm.NotActions, c.op)
		}
	}
	sort.Strings(perm.NotActions)
	f.writeJSON(w, http.StatusOK, struct {
		Value []azWirePermission `json:"value"`
	}{[]azWirePermission{perm}})
}

// azTags validates tags as ARM does (value length) and drops null values.
func azTags(in map[string]*string) (map[string]string, string) {
	out := make(map[string]string, len(in))
	for k, v := range in {
		if v == nil {
			continue
		}
		if len(*v) > azMaxTagValue {
			return nil, fmt.Sprintf("Tag value too long for tag %q: %d characters, the limit is %d.", k, len(*v), azMaxTagValue)
		}
		out[k] = *v
	}
	return out, ""
}

func azTagPtrs(in map[string]string) map[string]*string {
	out := make(map[string]*string, len(in))
	for k, v := range in {
		out[k] = &v
	}
	return out
}
