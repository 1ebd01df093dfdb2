package emulator

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
)

// gceEndpoint is one GCE REST method the emulator serves.
type gceEndpoint struct {
	method, pattern string
	// op is the IAM-style method name the Gate sees: "compute.routes.insert".
	op string
	// resource names the resource for fault rules, from the path or body.
	resource func(r *http.Request, body []byte) string
	handle   func(f *GCP, w http.ResponseWriter, r *http.Request, body []byte)
}

const gceAPI = "/compute/v1/projects/{project}"

func pathValue(key string) func(*http.Request, []byte) string {
	return func(r *http.Request, _ []byte) string { return r.PathValue(key) }
}

func (f *GCP) endpoints() []gceEndpoint {
	return []gceEndpoint{
		{"GET", gceAPI + "/regions/{region}/forwardingRules/{name}", "compute.forwardingRules.get", pathValue("name"), (*GCP).getForwardingRule},
		{"POST", gceAPI + "/regions/{region}/forwardingRules/{name}/setTarget", "compute.forwardingRules.setTarget", pathValue("name"), (*GCP).setForwardingRuleTarget},
		{"POST", gceAPI + "/regions/{region}/forwardingRules/{name}/setLabels", "compute.forwardingRules.setLabels", pathValue("name"), (*GCP).setForwardingRuleLabels},
		{"GET", gceAPI + "/zones/{zone}/instances", "compute.instances.list", pathValue("zone"), (*GCP).listInstances},
		{"GET", gceAPI + "/zones/{zone}/instances/{name}", "compute.instances.get", pathValue("name"), (*GCP).getInstance},
		{"PATCH", gceAPI + "/zones/{zone}/instances/{name}/updateNetworkInterface", "compute.instances.updateNetworkInterface", pathValue("name"), (*GCP).updateNetworkInterface},
		{"POST", gceAPI + "/zones/{zone}/instances/{name}/setLabels", "compute.instances.setLabels", pathValue("name"), (*GCP).setInstanceLabels},
		{"GET", gceAPI + "/global/routes", "compute.routes.list", pathValue("project"), (*GCP).listRoutes},
		{"GET", gceAPI + "/global/routes/{name}", "compute.routes.get", pathValue("name"), (*GCP).getRoute},
		{"POST", gceAPI + "/global/routes", "compute.routes.insert", routeNameFromBody, (*GCP).insertRoute},
		{"DELETE", gceAPI + "/global/routes/{name}", "compute.routes.delete", pathValue("name"), (*GCP).deleteRoute},
		{"GET", gceAPI + "/zones/{zone}/operations/{op}", "compute.zoneOperations.get", pathValue("op"), (*GCP).getOperation},
		{"POST", gceAPI + "/zones/{zone}/operations/{op}/wait", "compute.zoneOperations.wait", pathValue("op"), (*GCP).waitOperation},
		{"GET", gceAPI + "/regions/{region}/operations/{op}", "compute.regionOperations.get", pathValue("op"), (*GCP).getOperation},
		{"POST", gceAPI + "/regions/{region}/operations/{op}/wait", "compute.regionOperations.wait", pathValue("op"), (*GCP).waitOperation},
		{"GET", gceAPI + "/global/operations/{op}", "compute.globalOperations.get", pathValue("op"), (*GCP).getOperation},
		{"POST", gceAPI + "/global/operations/{op}/wait", "compute.globalOperations.wait", pathValue("op"), (*GCP).waitOperation},
	}
}

func routeNameFromBody(_ *http.Request, body []byte) string {
	var v struct {
		Name string `json:"name"`
	}
	_ = json.Unmarshal(body, &v) // a bad body is refused by the handler
	return v.Name
}

func (f *GCP) register(mux *http.ServeMux) {
	for _, ep := range f.endpoints() {
		mux.HandleFunc(ep.method+" "+ep.pattern, func(w http.ResponseWriter, r *http.Request) {
			body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
			if err != nil {
				gceError(w, http.StatusBadRequest, "invalid", "reading the request body: "+err.Error())
				return
			}
			res := ep.resource(r, body)
			f.e.log.Debug("gcp call", "op", ep.op, "resource", res)
			if kind, hit := f.e.gate.Enter(r.Context(), "gcp", ep.op, res); hit {
				f.writeFault(w, kind, ep.op, r.PathValue("project"), res)
				return
			}
			// A request whose client gave up is still carried out, as a
			// server that received it would: that is what requestId is for.
			ep.handle(f, w, r, body)
		})
	}
}

// writeFault renders an injected failure the way GCE does, so the SDK's
// googleapi.Error carries the real status and reason.
func (f *GCP) writeFault(w http.ResponseWriter, kind FaultKind, op, project, res string) {
	switch kind {
	case Throttle:
		gceError(w, http.StatusTooManyRequests, "rateLimitExceeded",
			"Rate Limit Exceeded: quota 'Queries per minute' exceeded for "+op)
	case ServerError:
		gceError(w, http.StatusServiceUnavailable, "backendError", "Internal error. Please try again or contact Google Support.")
	case Timeout:
		gceError(w, http.StatusGatewayTimeout, "deadlineExceeded", "Deadline exceeded.")
	case PermissionDenied:
		gceError(w, http.StatusForbidden, "forbidden",
			fmt.Sprintf("Required '%s' permission for 'projects/%s/%s'", op, project, res))
	case StaleFingerprint:
		gceError(w, http.StatusPreconditionFailed, "conditionNotMet",
			"Supplied fingerprint does not match current metadata fingerprint.")
	default:
		gceError(w, http.StatusInternalServerError, "backendError", "unknown injected fault "+kind.String())
	}
}

// gceError writes the JSON error envelope of Google APIs.
func gceError(w http.ResponseWriter, status int, reason, msg string) {
	writeJSON(w, status, map[string]any{"error": map[string]any{
		"code":    status,
		"message": msg,
		"errors":  []map[string]any{{"domain": "global", "reason": reason, "message": msg}},
	}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client went away; nothing to do
}

func notFound(w http.ResponseWriter, ref string) {
	gceError(w, http.StatusNotFound, "notFound", "The resource '"+ref+"' was not found")
}

// --- forwarding rules ---

func (f *GCP) forwardingRule(w http.ResponseWriter, r *http.Request) (*gceForwardingRule, string) {
	key := r.PathValue("project") + "/" + r.PathValue("region") + "/" + r.PathValue("name")
	ref := "projects/" + r.PathValue("project") + "/regions/" + r.PathValue("region") + "/forwardingRules/" + r.PathValue("name")
	fr := f.forwardingRules[key]
	if fr == nil {
		notFound(w, ref)
	}
	return fr, ref
}

func (f *GCP) getForwardingRule(w http.ResponseWriter, r *http.Request, _ []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fr, _ := f.forwardingRule(w, r); fr != nil {
		writeJSON(w, http.StatusOK, fr.json())
	}
}

func (f *GCP) setForwardingRuleTarget(w http.ResponseWriter, r *http.Request, body []byte) {
	var req struct {
		Target string `json:"target"`
	}
	if err := json.Unmarshal(body, &req); err != nil || req.Target == "" {
		gceError(w, http.StatusBadRequest, "required", "Required field 'target' not specified")
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	fr, ref := f.forwardingRule(w, r)
	if fr == nil {
		return
	}
	f.mutateLocked(w, r, "regions/"+fr.region, "setTarget", ref, func() (*gceHTTPError, *gceOpError) {
		target := gceURL(fr.project, req.Target)
		parts := strings.Split(gceRef(target), "/")
		// projects/p/zones/z/targetInstances/t
		if len(parts) != 6 || parts[2] != "zones" || parts[4] != "targetInstances" {
			return &gceHTTPError{http.StatusBadRequest, "invalid", "Invalid value for field 'target': '" + req.Target + "'"}, nil
		}
		if f.targetInstances[parts[1]+"/"+parts[3]+"/"+parts[5]] == nil {
			return &gceHTTPError{http.StatusNotFound, "notFound", "The resource '" + gceRef(target) + "' was not found"}, nil
		}
		fr.target = target
		return nil, nil
	})
}

type setLabelsBody struct {
	Labels           map[string]string `json:"labels"`
	LabelFingerprint string            `json:"labelFingerprint"`
}

var labelKeyRE = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,62}$`)
var labelValueRE = regexp.MustCompile(`^[a-z0-9_-]{0,63}$`)

// checkLabels applies GCE's label syntax, so the provider learns in tests
// what production would refuse.
func checkLabels(labels map[string]string) *gceHTTPError {
	if len(labels) > 64 {
		return &gceHTTPError{http.StatusBadRequest, "invalid", "Too many labels"}
	}
	for k, v := range labels {
		if !labelKeyRE.MatchString(k) || !labelValueRE.MatchString(v) {
			return &gceHTTPError{http.StatusBadRequest, "invalid",
				fmt.Sprintf("Invalid value for field 'labels': '%s=%s'", k, v)}
		}
	}
	return nil
}

func (f *GCP) setForwardingRuleLabels(w http.ResponseWriter, r *http.Request, body []byte) {
	var req setLabelsBody
	if err := json.Unmarshal(body, &req); err != nil {
		gceError(w, http.StatusBadRequest, "parseError", "Invalid JSON payload: "+err.Error())
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	fr, ref := f.forwardingRule(w, r)
	if fr == nil {
		return
	}
	f.mutateLocked(w, r, "regions/"+fr.region, "setLabels", ref, func() (*gceHTTPError, *gceOpError) {
		if req.LabelFingerprint != fr.labelFP {
			return staleFingerprint("labels"), nil
		}
		if e := checkLabels(req.Labels); e != nil {
			return e, nil
		}
		fr.labels = copyLabels(req.Labels)
		fr.labelFP = newFingerprint()
		return nil, nil
	})
}

func staleFingerprint(what string) *gceHTTPError {
	return &gceHTTPError{http.StatusPreconditionFailed, "conditionNotMet",
		"Supplied fingerprint does not match current " + what + " fingerprint."}
}

// --- instances ---

func (f *GCP) instance(w http.ResponseWriter, r *http.Request) (*gceInstance, string) {
	p, z, n := r.PathValue("project"), r.PathValue("zone"), r.PathValue("name")
	ref := "projects/" + p + "/zones/" + z + "/instances/" + n
	in := f.instances[p+"/"+z+"/"+n]
	if in == nil {
		notFound(w, ref)
	}
	return in, ref
}

func (f *GCP) getInstance(w http.ResponseWriter, r *http.Request, _ []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if in, _ := f.instance(w, r); in != nil {
		writeJSON(w, http.StatusOK, in.json())
	}
}

func (f *GCP) listInstances(w http.ResponseWriter, r *http.Request, _ []byte) {
	terms, err := parseGCEFilter(r.URL.Query().Get("filter"))
	if err != nil {
		gceError(w, http.StatusBadRequest, "invalid", err.Error())
		return
	}
	f.mu.Lock()
	var items []map[string]any
	var names []string
	byName := map[string]*gceInstance{}
	for _, in := range f.instances {
		if in.project == r.PathValue("project") && in.zone == r.PathValue("zone") {
			names = append(names, in.name)
			byName[in.name] = in
		}
	}
	sort.Strings(names)
	for _, n := range names {
		in := byName[n]
		ok, ferr := matchFilter(terms, map[string]string{"name": in.name, "status": "RUNNING"})
		if ferr != nil {
			f.mu.Unlock()
			gceError(w, http.StatusBadRequest, "invalid", ferr.Error())
			return
		}
		if ok {
			items = append(items, in.json())
		}
	}
	f.mu.Unlock()
	writePage(w, r, "compute#instanceList", items)
}

// writePage honours maxResults and pageToken (an offset), so the SDK's
// iterators page as they do against GCE.
func writePage(w http.ResponseWriter, r *http.Request, kind string, items []map[string]any) {
	start, _ := strconv.Atoi(r.URL.Query().Get("pageToken"))
	if start < 0 || start > len(items) {
		start = len(items)
	}
	end := len(items)
	if max, err := strconv.Atoi(r.URL.Query().Get("maxResults")); err == nil && max > 0 && start+max < end {
		end = start + max
	}
	out := map[string]any{"kind": kind, "items": items[start:end]}
	if end < len(items) {
		out["nextPageToken"] = strconv.Itoa(end)
	}
	writeJSON(w, http.StatusOK, out)
}

func (f *GCP) updateNetworkInterface(w http.ResponseWriter, r *http.Request, body []byte) {
	var req struct {
		Fingerprint string `json:"fingerprint"`
		// A pointer: updateNetworkInterface has PATCH semantics, so an
		// absent list leaves the ranges as they are and only an explicit
		// [] clears them.
		AliasIPRanges *[]struct {
			IPCidrRange         string `json:"ipCidrRange"`
			SubnetworkRangeName string `json:"subnetworkRangeName"`
		} `json:"aliasIpRanges"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		gceError(w, http.StatusBadRequest, "parseError", "Invalid JSON payload: "+err.Error())
		return
	}
	nicName := r.URL.Query().Get("networkInterface")
	f.mu.Lock()
	defer f.mu.Unlock()
	in, ref := f.instance(w, r)
	if in == nil {
		return
	}
	var nic *gceNIC
	for _, n := range in.nics {
		if n.name == nicName {
			nic = n
		}
	}
	if nic == nil {
		gceError(w, http.StatusBadRequest, "invalid", "Invalid value for field 'networkInterface': '"+nicName+"'")
		return
	}
	f.mutateLocked(w, r, "zones/"+in.zone, "updateNetworkInterface", ref, func() (*gceHTTPError, *gceOpError) {
		if req.Fingerprint == "" {
			return &gceHTTPError{http.StatusBadRequest, "required", "Required field 'fingerprint' not specified"}, nil
		}
		if req.Fingerprint != nic.fingerprint {
			return staleFingerprint("network interface"), nil
		}
		if req.AliasIPRanges == nil {
			nic.fingerprint = newFingerprint()
			return nil, nil
		}
		aliases := make([]GCPAliasRange, 0, len(*req.AliasIPRanges))
		for _, a := range *req.AliasIPRanges {
			aliases = append(aliases, GCPAliasRange{CIDR: a.IPCidrRange, RangeName: a.SubnetworkRangeName})
		}
		// GCE refuses an alias range another resource of the network
		// already uses: a range cannot be on two NICs, even briefly.
		for _, a := range aliases {
			if other := f.aliasUserLocked(nic.network, a.CIDR, in); other != "" {
				return nil, &gceOpError{http.StatusBadRequest, "IP_IN_USE_BY_ANOTHER_RESOURCE",
					fmt.Sprintf("IP '%s' is already being used by another resource (%s).", a.CIDR, other)}
			}
		}
		nic.aliases = aliases
		nic.fingerprint = newFingerprint()
		return nil, nil
	})
}

// aliasUserLocked returns the instance, other than self, that has cidr as
// an alias range or primary address on network.
func (f *GCP) aliasUserLocked(network, cidr string, self *gceInstance) string {
	for _, in := range f.instances {
		if in == self {
			continue
		}
		for _, n := range in.nics {
			if n.network != network {
				continue
			}
			if n.ip+"/32" == cidr || n.ip == cidr {
				return "projects/" + in.project + "/zones/" + in.zone + "/instances/" + in.name
			}
			for _, a := range n.aliases {
				if a.CIDR == cidr {
					return "projects/" + in.project + "/zones/" + in.zone + "/instances/" + in.name
				}
			}
		}
	}
	return ""
}

func (f *GCP) setInstanceLabels(w http.ResponseWriter, r *http.Request, body []byte) {
	var req setLabelsBody
	if err := json.Unmarshal(body, &req); err != nil {
		gceError(w, http.StatusBadRequest, "parseError", "Invalid JSON payload: "+err.Error())
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	in, ref := f.instance(w, r)
	if in == nil {
		return
	}
	f.mutateLocked(w, r, "zones/"+in.zone, "setLabels", ref, func() (*gceHTTPError, *gceOpError) {
		if req.LabelFingerprint != in.labelFP {
			return staleFingerprint("labels"), nil
		}
		if e := checkLabels(req.Labels); e != nil {
			return e, nil
		}
		in.labels = copyLabels(req.Labels)
		in.labelFP = newFingerprint()
		return nil, nil
	})
}

// --- routes ---

var routeNameRE = regexp.MustCompile(`^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$`)

func (f *GCP) listRoutes(w http.ResponseWriter, r *http.Request, _ []byte) {
	terms, err := parseGCEFilter(r.URL.Query().Get("filter"))
	if err != nil {
		gceError(w, http.StatusBadRequest, "invalid", err.Error())
		return
	}
	f.mu.Lock()
	var rs []*gceRoute
	for _, rt := range f.routes {
		if rt.Project != r.PathValue("project") {
			continue
		}
		ok, ferr := matchFilter(terms, map[string]string{
			"name": rt.Name, "destRange": rt.DestRange, "network": rt.Network,
			"priority": strconv.Itoa(int(rt.Priority)), "description": rt.Description,
		})
		if ferr != nil {
			f.mu.Unlock()
			gceError(w, http.StatusBadRequest, "invalid", ferr.Error())
			return
		}
		if ok {
			rs = append(rs, rt)
		}
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].Name < rs[j].Name })
	items := make([]map[string]any, 0, len(rs))
	for _, rt := range rs {
		items = append(items, rt.json())
	}
	f.mu.Unlock()
	writePage(w, r, "compute#routeList", items)
}

func (f *GCP) getRoute(w http.ResponseWriter, r *http.Request, _ []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rt := f.routes[r.PathValue("project")+"/"+r.PathValue("name")]
	if rt == nil {
		notFound(w, "projects/"+r.PathValue("project")+"/global/routes/"+r.PathValue("name"))
		return
	}
	writeJSON(w, http.StatusOK, rt.json())
}

func (f *GCP) insertRoute(w http.ResponseWriter, r *http.Request, body []byte) {
	var req struct {
		Name            string   `json:"name"`
		Network         string   `json:"network"`
		DestRange       string   `json:"destRange"`
		Priority        *uint32  `json:"priority"`
		NextHopInstance string   `json:"nextHopInstance"`
		NextHopIP       string   `json:"nextHopIp"`
		Description     string   `json:"description"`
		Tags            []string `json:"tags"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		gceError(w, http.StatusBadRequest, "parseError", "Invalid JSON payload: "+err.Error())
		return
	}
	project := r.PathValue("project")
	ref := "projects/" + project + "/global/routes/" + req.Name
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mutateLocked(w, r, "global", "insert", ref, func() (*gceHTTPError, *gceOpError) {
		if !routeNameRE.MatchString(req.Name) {
			return &gceHTTPError{http.StatusBadRequest, "invalid", "Invalid value for field 'resource.name': '" + req.Name + "'"}, nil
		}
		if f.routes[project+"/"+req.Name] != nil {
			return &gceHTTPError{http.StatusConflict, "alreadyExists", "The resource '" + ref + "' already exists"}, nil
		}
		if (req.NextHopInstance == "") == (req.NextHopIP == "") {
			return &gceHTTPError{http.StatusBadRequest, "invalid", "Exactly one of nextHopInstance and nextHopIp must be set"}, nil
		}
		nh := ""
		if req.NextHopInstance != "" {
			nh = gceURL(project, req.NextHopInstance)
			parts := strings.Split(gceRef(nh), "/")
			if len(parts) != 6 || f.instances[parts[1]+"/"+parts[3]+"/"+parts[5]] == nil {
				return &gceHTTPError{http.StatusNotFound, "notFound", "The resource '" + gceRef(nh) + "' was not found"}, nil
			}
		}
		netParts := strings.Split(gceRef(req.Network), "/")
		if req.Network == "" || req.DestRange == "" {
			return &gceHTTPError{http.StatusBadRequest, "required", "Required fields 'network' and 'destRange'"}, nil
		}
		prio := uint32(1000)
		if req.Priority != nil {
			prio = *req.Priority
		}
		f.routes[project+"/"+req.Name] = &gceRoute{GCPRoute: GCPRoute{
			Project: project, Name: req.Name, Network: netParts[len(netParts)-1], DestRange: req.DestRange,
			Priority: prio, NextHopInstance: nh, NextHopIP: req.NextHopIP, Description: req.Description, Tags: req.Tags,
		}, id: f.nextIDLocked(), created: time.Now()}
		return nil, nil
	})
}

func (f *GCP) deleteRoute(w http.ResponseWriter, r *http.Request, _ []byte) {
	project, name := r.PathValue("project"), r.PathValue("name")
	ref := "projects/" + project + "/global/routes/" + name
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mutateLocked(w, r, "global", "delete", ref, func() (*gceHTTPError, *gceOpError) {
		if f.routes[project+"/"+name] == nil {
			return &gceHTTPError{http.StatusNotFound, "notFound", "The resource '" + ref + "' was not found"}, nil
		}
		delete(f.routes, project+"/"+name)
		return nil, nil
	})
}

// --- filters ---

type filterTerm struct{ field, value string }

var filterTermRE = regexp.MustCompile(`([A-Za-z][A-Za-z0-9_.]*)\s*(?:=|\beq\b)\s*(?:"([^"]*)"|([^\s()"]+))`)

// parseGCEFilter understands the equality subset of GCE list filters:
// `destRange = "10.0.0.0/8"`, `(name = "a") AND (network = "vpc")`.
func parseGCEFilter(s string) ([]filterTerm, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var terms []filterTerm
	for _, m := range filterTermRE.FindAllStringSubmatch(s, -1) {
		v := m[2]
		if v == "" {
			v = m[3]
		}
		terms = append(terms, filterTerm{m[1], v})
	}
	rest := filterTermRE.ReplaceAllString(s, "")
	rest = strings.NewReplacer("(", "", ")", "", "AND", "", "and", "").Replace(rest)
	if strings.TrimSpace(rest) != "" || len(terms) == 0 {
		return nil, fmt.Errorf("invalid list filter expression %q", s)
	}
	return terms, nil
}

func matchFilter(terms []filterTerm, fields map[string]string) (bool, error) {
	for _, t := range terms {
		v, ok := fields[t.field]
		if !ok {
			return false, fmt.Errorf("invalid list filter expression: unknown field %q", t.field)
		}
		if t.field == "network" {
			want := gceRef(t.value)
			if want != v && !strings.HasSuffix(want, "/networks/"+v) {
				return false, nil
			}
			continue
		}
		if v != t.value {
			return false, nil
		}
	}
	return true, nil
}

// --- operations ---

type gceHTTPError struct {
	status      int
	reason, msg string
}

// gceOpError is a failure GCE reports inside a DONE Operation rather than
// as the HTTP answer to the request.
type gceOpError struct {
	status    int
	code, msg string
}

type gceOp struct {
	project, scope, name string // scope: "zones/z", "regions/r", "global"
	id                   uint64
	opType, target       string
	inserted, doneAt     time.Time
	err                  *gceOpError
}

// mutateLocked runs apply once per requestId and answers the Operation. A
// retried request with a requestId already seen gets the original
// Operation back and changes nothing, as GCE does.
func (f *GCP) mutateLocked(w http.ResponseWriter, r *http.Request, scope, opType, targetRef string, apply func() (*gceHTTPError, *gceOpError)) {
	project := r.PathValue("project")
	reqID := r.URL.Query().Get("requestId")
	if reqID != "" {
		if id, err := uuid.Parse(reqID); err != nil || id == uuid.Nil {
			gceError(w, http.StatusBadRequest, "invalid", "Invalid value for field 'requestId': '"+reqID+"'. The request ID must be a valid UUID")
			return
		}
		if op := f.requestIDs[project+"/"+reqID]; op != nil {
			writeJSON(w, http.StatusOK, op.json(time.Now()))
			return
		}
	}
	herr, operr := apply()
	if herr != nil {
		gceError(w, herr.status, herr.reason, herr.msg)
		return
	}
	now := time.Now()
	op := &gceOp{
		project: project, scope: scope, id: f.nextIDLocked(), opType: opType,
		target: gceBase + targetRef, inserted: now, doneAt: now.Add(f.opDelay), err: operr,
	}
	op.name = fmt.Sprintf("operation-%d-%x", now.UnixMilli(), op.id)
	f.ops[project+"/"+op.name] = op
	if reqID != "" {
		f.requestIDs[project+"/"+reqID] = op
	}
	writeJSON(w, http.StatusOK, op.json(now))
}

func (op *gceOp) json(now time.Time) map[string]any {
	m := map[string]any{
		"kind":          "compute#operation",
		"id":            fmt.Sprint(op.id),
		"name":          op.name,
		"operationType": op.opType,
		"targetLink":    op.target,
		"insertTime":    op.inserted.Format(time.RFC3339Nano),
		"startTime":     op.inserted.Format(time.RFC3339Nano),
		"selfLink":      gceBase + "projects/" + op.project + "/" + op.scope + "/operations/" + op.name,
		"user":          "handoff@emulator.iam.gserviceaccount.com",
	}
	switch {
	case strings.HasPrefix(op.scope, "zones/"):
		m["zone"] = gceBase + "projects/" + op.project + "/" + op.scope
	case strings.HasPrefix(op.scope, "regions/"):
		m["region"] = gceBase + "projects/" + op.project + "/" + op.scope
	}
	if now.Before(op.doneAt) {
		m["status"] = "RUNNING"
		m["progress"] = 0
		return m
	}
	m["status"] = "DONE"
	m["progress"] = 100
	m["endTime"] = op.doneAt.Format(time.RFC3339Nano)
	if op.err != nil {
		m["error"] = map[string]any{"errors": []map[string]any{{"code": op.err.code, "message": op.err.msg}}}
		m["httpErrorStatusCode"] = op.err.status
		m["httpErrorMessage"] = strings.ToUpper(http.StatusText(op.err.status))
	}
	return m
}

func (f *GCP) lookupOp(w http.ResponseWriter, r *http.Request) *gceOp {
	scope := "global"
	if z := r.PathValue("zone"); z != "" {
		scope = "zones/" + z
	} else if rg := r.PathValue("region"); rg != "" {
		scope = "regions/" + rg
	}
	f.mu.Lock()
	op := f.ops[r.PathValue("project")+"/"+r.PathValue("op")]
	f.mu.Unlock()
	if op == nil || op.scope != scope {
		notFound(w, "projects/"+r.PathValue("project")+"/"+scope+"/operations/"+r.PathValue("op"))
		return nil
	}
	return op
}

func (f *GCP) getOperation(w http.ResponseWriter, r *http.Request, _ []byte) {
	if op := f.lookupOp(w, r); op != nil {
		writeJSON(w, http.StatusOK, op.json(time.Now()))
	}
}

// gceMaxWait is how long operations.wait blocks at most, as in GCE; the
// caller then sees a not-yet-DONE Operation and waits again.
const gceMaxWait = 2 * time.Minute

func (f *GCP) waitOperation(w http.ResponseWriter, r *http.Request, _ []byte) {
	op := f.lookupOp(w, r)
	if op == nil {
		return
	}
	if d := time.Until(op.doneAt); d > 0 {
		t := time.NewTimer(min(d, gceMaxWait))
		select {
		case <-t.C:
		case <-r.Context().Done():
		}
		t.Stop()
	}
	writeJSON(w, http.StatusOK, op.json(time.Now()))
}
