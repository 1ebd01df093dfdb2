package emulator

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// ARM wire types: the subset of the Microsoft.Network JSON the provider's
// calls send and read, spelled as the REST API spells it (the SDK's models
// are not imported, so the SDK is tested against an independent rendering).

type azSubResource struct {
	ID string `json:"id"`
}

type azWireRouteProps struct {
	ProvisioningState string `json:"provisioningState,omitempty"`
	AddressPrefix     string `json:"addressPrefix,omitempty"`
	NextHopType       string `json:"nextHopType,omitempty"`
	NextHopIPAddress  string `json:"nextHopIpAddress,omitempty"`
}

type azWireRoute struct {
	ID         string            `json:"id,omitempty"`
	Name       string            `json:"name,omitempty"`
	Type       string            `json:"type,omitempty"`
	Etag       string            `json:"etag,omitempty"`
	Properties *azWireRouteProps `json:"properties,omitempty"`
}

type azWireRouteTableProps struct {
	ProvisioningState          string        `json:"provisioningState"`
	ResourceGUID               string        `json:"resourceGuid,omitempty"`
	DisableBgpRoutePropagation bool          `json:"disableBgpRoutePropagation"`
	Routes                     []azWireRoute `json:"routes"`
}

type azWireRouteTable struct {
	ID         string                 `json:"id"`
	Name       string                 `json:"name"`
	Type       string                 `json:"type"`
	Location   string                 `json:"location"`
	Etag       string                 `json:"etag"`
	Tags       map[string]string      `json:"tags,omitempty"`
	Properties *azWireRouteTableProps `json:"properties"`
}

type azWireIPConfigProps struct {
	ProvisioningState         string         `json:"provisioningState,omitempty"`
	PrivateIPAddress          string         `json:"privateIPAddress,omitempty"`
	PrivateIPAllocationMethod string         `json:"privateIPAllocationMethod,omitempty"`
	PrivateIPAddressVersion   string         `json:"privateIPAddressVersion,omitempty"`
	Primary                   *bool          `json:"primary,omitempty"`
	Subnet                    *azSubResource `json:"subnet,omitempty"`
	PublicIPAddress           *azSubResource `json:"publicIPAddress,omitempty"`
}

type azWireIPConfig struct {
	ID         string               `json:"id,omitempty"`
	Name       string               `json:"name,omitempty"`
	Type       string               `json:"type,omitempty"`
	Etag       string               `json:"etag,omitempty"`
	Properties *azWireIPConfigProps `json:"properties,omitempty"`
}

type azWireNICProps struct {
	ProvisioningState  string           `json:"provisioningState,omitempty"`
	IPConfigurations   []azWireIPConfig `json:"ipConfigurations"`
	MacAddress         string           `json:"macAddress,omitempty"`
	Primary            *bool            `json:"primary,omitempty"`
	EnableIPForwarding *bool            `json:"enableIPForwarding,omitempty"`
	VirtualMachine     *azSubResource   `json:"virtualMachine,omitempty"`
}

type azWireNIC struct {
	ID         string            `json:"id,omitempty"`
	Name       string            `json:"name,omitempty"`
	Type       string            `json:"type,omitempty"`
	Location   string            `json:"location,omitempty"`
	Etag       string            `json:"etag,omitempty"`
	Tags       map[string]string `json:"tags,omitempty"`
	Properties *azWireNICProps   `json:"properties,omitempty"`
}

type azWireSKU struct {
	Name string `json:"name"`
	Tier string `json:"tier"`
}

type azWirePublicIPProps struct {
	ProvisioningState        string         `json:"provisioningState"`
	IPAddress                string         `json:"ipAddress"`
	PublicIPAddressVersion   string         `json:"publicIPAddressVersion"`
	PublicIPAllocationMethod string         `json:"publicIPAllocationMethod"`
	IdleTimeoutInMinutes     int            `json:"idleTimeoutInMinutes"`
	IPConfiguration          *azSubResource `json:"ipConfiguration,omitempty"`
}

type azWirePublicIP struct {
	ID         string               `json:"id"`
	Name       string               `json:"name"`
	Type       string               `json:"type"`
	Location   string               `json:"location"`
	Etag       string               `json:"etag"`
	Tags       map[string]string    `json:"tags,omitempty"`
	SKU        azWireSKU            `json:"sku"`
	Properties *azWirePublicIPProps `json:"properties"`
}

type azWireTags struct {
	Tags map[string]*string `json:"tags"`
}

type azWirePermission struct {
	Actions        []string `json:"actions"`
	NotActions     []string `json:"notActions"`
	DataActions    []string `json:"dataActions"`
	NotDataActions []string `json:"notDataActions"`
}

type azWireOperationStatus struct {
	Status    string       `json:"status"`
	StartTime string       `json:"startTime,omitempty"`
	EndTime   string       `json:"endTime,omitempty"`
	Error     *azWireError `json:"error,omitempty"`
}

type azWireError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (f *Azure) writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		f.writeError(w, http.StatusInternalServerError, "InternalServerError", "emulator: encoding the answer: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// writeError answers in ARM's error envelope, which the SDK parses into
// azcore.ResponseError.ErrorCode.
func (f *Azure) writeError(w http.ResponseWriter, status int, code, msg string) {
	b, _ := json.Marshal(struct {
		Error azWireError `json:"error"`
	}{azWireError{Code: code, Message: msg}})
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// writeFault renders an injected fault as ARM answers it.
func (f *Azure) writeFault(w http.ResponseWriter, kind FaultKind, op, scope string, linked bool) {
	switch kind {
	case Throttle:
		f.mu.Lock()
		d := f.retryAfter
		f.mu.Unlock()
		secs := int(math.Ceil(d.Seconds()))
		if secs < 1 {
			secs = 1
		}
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		w.Header().Set("retry-after-ms", strconv.FormatInt(d.Milliseconds(), 10))
		f.writeError(w, http.StatusTooManyRequests, "TooManyRequests",
			fmt.Sprintf("The request is being throttled as the limit has been reached for operation type - %s.", op))
	case ServerError:
		f.writeError(w, http.StatusInternalServerError, "InternalServerError",
			"An error occurred while processing the request. (emulated fault)")
	case Timeout:
		f.writeError(w, http.StatusGatewayTimeout, "GatewayTimeout",
			"The gateway did not receive a response within the specified time period.")
	case PermissionDenied:
		code := "AuthorizationFailed"
		if linked {
			code = "LinkedAuthorizationFailed"
		}
		f.writeError(w, http.StatusForbidden, code, fmt.Sprintf(
			"The client 'handoff' with object id '00000000-0000-0000-0000-000000000000' does not have authorization to perform action '%s' over scope '%s' or the scope is invalid.",
			op, scope))
	case StaleFingerprint:
		f.writeError(w, http.StatusPreconditionFailed, "PreconditionFailed",
			"The condition specified using HTTP conditional header(s) is not met. (emulated fault)")
	default:
		f.writeError(w, http.StatusInternalServerError, "InternalServerError", "unknown emulated fault "+kind.String())
	}
}

func azProvisioning(busyUntil, now time.Time) string {
	if now.Before(busyUntil) {
		return "Updating"
	}
	return "Succeeded"
}

func azBool(b bool) *bool { return &b }

// renderRouteTableLocked renders a route table; every route carries the
// table's ETag.
func (f *Azure) renderRouteTableLocked(t *azRouteTable, now time.Time) azWireRouteTable {
	state := azProvisioning(t.busyUntil, now)
	out := azWireRouteTable{
		ID: t.id(), Name: t.name, Type: "Microsoft.Network/routeTables", Location: t.location,
		Etag: t.etag, Tags: azCopyTags(t.tags),
		Properties: &azWireRouteTableProps{ProvisioningState: state, Routes: []azWireRoute{}},
	}
	for _, r := range t.routes {
		out.Properties.Routes = append(out.Properties.Routes, f.renderRouteLocked(t, r, state))
	}
	return out
}

func (f *Azure) renderRouteLocked(t *azRouteTable, r *azRoute, state string) azWireRoute {
	return azWireRoute{
		ID: t.id() + "/routes/" + r.name, Name: r.name, Type: "Microsoft.Network/routeTables/routes", Etag: t.etag,
		Properties: &azWireRouteProps{ProvisioningState: state, AddressPrefix: r.prefix, NextHopType: r.nextHopType, NextHopIPAddress: r.nextHopIP},
	}
}

func (f *Azure) renderNICLocked(n *azNIC, state string) azWireNIC {
	out := azWireNIC{
		ID: n.id(), Name: n.name, Type: "Microsoft.Network/networkInterfaces", Location: n.location,
		Etag: n.etag, Tags: azCopyTags(n.tags),
		Properties: &azWireNICProps{
			ProvisioningState: state, MacAddress: n.mac, Primary: azBool(true), EnableIPForwarding: azBool(true),
			VirtualMachine: &azSubResource{ID: n.vmID},
		},
	}
	for _, c := range n.ipconfigs {
		props := &azWireIPConfigProps{
			ProvisioningState: state, PrivateIPAddress: c.privateIP, PrivateIPAllocationMethod: "Static",
			PrivateIPAddressVersion: "IPv4", Primary: azBool(c.primary),
		}
		if c.subnetID != "" {
			props.Subnet = &azSubResource{ID: c.subnetID}
		}
		if c.publicIP != "" {
			if p, ok := f.pips[c.publicIP]; ok {
				props.PublicIPAddress = &azSubResource{ID: p.id()}
			}
		}
		out.Properties.IPConfigurations = append(out.Properties.IPConfigurations, azWireIPConfig{
			ID: n.id() + "/ipConfigurations/" + c.name, Name: c.name,
			Type: "Microsoft.Network/networkInterfaces/ipConfigurations", Etag: n.etag, Properties: props,
		})
	}
	return out
}

func (f *Azure) renderPublicIPLocked(p *azPublicIP) azWirePublicIP {
	out := azWirePublicIP{
		ID: p.id(), Name: p.name, Type: "Microsoft.Network/publicIPAddresses", Location: p.location,
		Etag: p.etag, Tags: azCopyTags(p.tags), SKU: azWireSKU{Name: "Standard", Tier: "Regional"},
		Properties: &azWirePublicIPProps{
			ProvisioningState: "Succeeded", IPAddress: p.address, PublicIPAddressVersion: "IPv4",
			PublicIPAllocationMethod: "Static", IdleTimeoutInMinutes: 4,
		},
	}
	if p.attachedTo != "" {
		out.Properties.IPConfiguration = &azSubResource{ID: f.canonicalIPConfigIDLocked(p.attachedTo)}
	}
	return out
}

// canonicalIPConfigIDLocked turns a lower-case ipConfiguration key back into
// the ID as the NIC spells it.
func (f *Azure) canonicalIPConfigIDLocked(key string) string {
	nicKey, cfgName, ok := strings.Cut(key, "/ipconfigurations/")
	if !ok {
		return key
	}
	nic, ok := f.nics[nicKey]
	if !ok {
		return key
	}
	if c := nic.ipconfig(cfgName); c != nil {
		return nic.id() + "/ipConfigurations/" + c.name
	}
	return key
}

// azSubnetResource names a subnet to the Gate as "vnet/subnet".
func azSubnetResource(id string) string {
	parts := strings.Split(id, "/")
	for i := 0; i+3 < len(parts); i++ {
		if strings.EqualFold(parts[i], "virtualNetworks") && strings.EqualFold(parts[i+2], "subnets") {
			return parts[i+1] + "/" + parts[i+3]
		}
	}
	return id
}

// azLastSegment returns the name at the end of an ARM ID.
func azLastSegment(id string) string {
	return id[strings.LastIndex(id, "/")+1:]
}
