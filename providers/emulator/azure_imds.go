package emulator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// Azure IMDS wire types: the parts of /metadata/instance the provider reads.
type azIMDSInstance struct {
	Compute azIMDSCompute `json:"compute"`
	Network azIMDSNetwork `json:"network"`
}

type azIMDSCompute struct {
	AzEnvironment     string `json:"azEnvironment"`
	Location          string `json:"location"`
	Name              string `json:"name"`
	ResourceGroupName string `json:"resourceGroupName"`
	ResourceID        string `json:"resourceId"`
	SubscriptionID    string `json:"subscriptionId"`
	VMID              string `json:"vmId"`
	VMSize            string `json:"vmSize"`
}

type azIMDSNetwork struct {
	Interface []azIMDSInterface `json:"interface"`
}

type azIMDSInterface struct {
	IPv4       azIMDSIPv4 `json:"ipv4"`
	IPv6       azIMDSIPv6 `json:"ipv6"`
	MacAddress string     `json:"macAddress"`
}

type azIMDSIPv4 struct {
	IPAddress []azIMDSAddress `json:"ipAddress"`
	Subnet    []azIMDSSubnet  `json:"subnet"`
}

type azIMDSIPv6 struct {
	IPAddress []azIMDSAddress `json:"ipAddress"`
}

type azIMDSAddress struct {
	PrivateIPAddress string `json:"privateIpAddress"`
	PublicIPAddress  string `json:"publicIpAddress"`
}

type azIMDSSubnet struct {
	Address string `json:"address"`
	Prefix  string `json:"prefix"`
}

// MetadataServer starts the instance metadata service of node's VM on its
// own loopback listener (plain HTTP, as IMDS at 169.254.169.254 is) and
// returns its base URL. Each in-process node gets its own listener, so each
// sees its own identity. stop is safe to call twice.
func (f *Azure) MetadataServer(node string) (url string, stop func() error, err error) {
	f.mu.Lock()
	_, ok := f.vms[node]
	f.mu.Unlock()
	if !ok {
		return "", nil, fmt.Errorf("starting azure metadata server: no VM for node %q", node)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, fmt.Errorf("starting azure metadata server for node %q: %w", node, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/metadata/instance", func(w http.ResponseWriter, r *http.Request) { f.serveIMDS(w, r, node) })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			f.e.log.Error("azure metadata server stopped", "node", node, "err", err)
		}
	}()
	var once sync.Once
	var stopErr error
	stop = func() error {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if stopErr = srv.Shutdown(ctx); stopErr != nil {
				stopErr = srv.Close()
			}
			<-done
		})
		return stopErr
	}
	return "http://" + ln.Addr().String(), stop, nil
}

func (f *Azure) imdsError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	b, _ := json.Marshal(map[string]string{"error": msg})
	_, _ = w.Write(b)
}

func (f *Azure) serveIMDS(w http.ResponseWriter, r *http.Request, node string) {
	if kind, hit := f.e.gate.Enter(r.Context(), "azure", AzureOpMetadata, node); hit {
		switch kind {
		case Throttle:
			f.imdsError(w, http.StatusTooManyRequests, "Too many requests")
		case PermissionDenied:
			f.imdsError(w, http.StatusForbidden, "Forbidden")
		default:
			f.imdsError(w, http.StatusInternalServerError, "Internal server error")
		}
		return
	}
	if r.Method != http.MethodGet {
		f.imdsError(w, http.StatusMethodNotAllowed, "Method not allowed")
		return
	}
	// Real IMDS refuses proxied requests and requests without the header,
	// to defeat SSRF.
	if !strings.EqualFold(r.Header.Get("Metadata"), "true") || r.Header.Get("X-Forwarded-For") != "" {
		f.imdsError(w, http.StatusBadRequest, "Bad request. Required metadata header not specified")
		return
	}
	if r.URL.Query().Get("api-version") == "" {
		f.imdsError(w, http.StatusBadRequest, "Bad request. api-version was not specified in the request")
		return
	}
	f.mu.Lock()
	vm, ok := f.vms[node]
	var out azIMDSInstance
	if ok {
		out.Compute = azIMDSCompute{
			AzEnvironment: "AzurePublicCloud", Location: vm.location, Name: vm.name,
			ResourceGroupName: vm.rg, ResourceID: AzureVMID(vm.sub, vm.rg, vm.name),
			SubscriptionID: vm.sub, VMID: vm.vmID, VMSize: "Standard_D2s_v5",
		}
		if nic, ok := f.nics[vm.nicID]; ok {
			iface := azIMDSInterface{MacAddress: strings.ReplaceAll(nic.mac, "-", ""), IPv6: azIMDSIPv6{IPAddress: []azIMDSAddress{}}}
			for _, c := range nic.ipconfigs {
				a := azIMDSAddress{PrivateIPAddress: c.privateIP}
				if p, ok := f.pips[c.publicIP]; ok && c.publicIP != "" {
					a.PublicIPAddress = p.address
				}
				iface.IPv4.IPAddress = append(iface.IPv4.IPAddress, a)
			}
			if addr, err := netip.ParseAddr(nic.ipconfigs[0].privateIP); err == nil {
				if pfx, err := addr.Prefix(24); err == nil {
					iface.IPv4.Subnet = []azIMDSSubnet{{Address: pfx.Addr().String(), Prefix: "24"}}
				}
			}
			out.Network.Interface = []azIMDSInterface{iface}
		}
	}
	f.mu.Unlock()
	if !ok {
		f.imdsError(w, http.StatusNotFound, "Not found")
		return
	}
	b, err := json.Marshal(out)
	if err != nil {
		f.imdsError(w, http.StatusInternalServerError, err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	_, _ = w.Write(b)
}
