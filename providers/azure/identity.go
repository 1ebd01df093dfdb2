package azure

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v7"

	"github.com/handoffvpn/handoff/providers"
)

// imdsAPIVersion is the instance metadata API version the provider reads.
const imdsAPIVersion = "2021-02-01"

// identity is where this node's resources point: its NIC, the
// ipConfiguration public IPs attach to, and the private IP routes use.
type identity struct {
	subscription  string
	resourceGroup string // for resource IDs given without one
	nic           armID  // resolved
	nicID         string // as Azure spells it
	ipConfig      string
	ipConfigID    string
	privateIP     string
}

// imdsInstance is the part of IMDS's /metadata/instance the provider uses.
type imdsInstance struct {
	Compute struct {
		Name              string `json:"name"`
		ResourceGroupName string `json:"resourceGroupName"`
		ResourceID        string `json:"resourceId"`
		SubscriptionID    string `json:"subscriptionId"`
	} `json:"compute"`
	Network struct {
		Interface []struct {
			IPv4 struct {
				IPAddress []struct {
					PrivateIPAddress string `json:"privateIpAddress"`
				} `json:"ipAddress"`
			} `json:"ipv4"`
			MacAddress string `json:"macAddress"`
		} `json:"interface"`
	} `json:"network"`
}

// primaryIP is the first private IPv4 address of the first interface,
// which Azure lists as the primary NIC's primary ipConfiguration.
func (m *imdsInstance) primaryIP() string {
	for _, itf := range m.Network.Interface {
		for _, a := range itf.IPv4.IPAddress {
			if a.PrivateIPAddress != "" {
				return a.PrivateIPAddress
			}
		}
	}
	return ""
}

// fetchIMDS reads the instance metadata, retrying throttling, 5xx and
// timeouts like any other call.
func (p *Provider) fetchIMDS(ctx context.Context, base string) (*imdsInstance, error) {
	// IMDS is link-local and must never go through a proxy.
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	defer client.CloseIdleConnections()
	url := strings.TrimSuffix(base, "/") + "/metadata/instance?api-version=" + imdsAPIVersion
	var last error
	for attempt := 1; attempt <= p.tune.maxAttempts; attempt++ {
		if attempt > 1 {
			if err := sleep(ctx, p.tune.backoff(attempt-1)); err != nil {
				return nil, fmt.Errorf("reading instance metadata from %s: %w", base, err)
			}
		}
		m, err := p.fetchIMDSOnce(ctx, client, url)
		if err == nil {
			return m, nil
		}
		last = err
		if !errors.Is(err, providers.ErrThrottled) && !errors.Is(err, providers.ErrUnavailable) {
			break
		}
	}
	return nil, fmt.Errorf("reading instance metadata from %s: %w", base, last)
}

func (p *Provider) fetchIMDSOnce(ctx context.Context, client *http.Client, url string) (*imdsInstance, error) {
	ctx, cancel := context.WithTimeout(ctx, p.tune.callTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Metadata", "true")
	resp, err := client.Do(req)
	if err != nil {
		if ctx.Err() != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, fmt.Errorf("%w: %v", providers.ErrUnavailable, err)
		}
		return nil, translate(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("%w: reading the answer: %v", providers.ErrUnavailable, err)
	}
	if resp.StatusCode != http.StatusOK {
		kind := classify(resp.StatusCode, "")
		if kind == nil {
			return nil, fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
		}
		return nil, fmt.Errorf("%w: HTTP %d: %s", kind, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	var m imdsInstance
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, fmt.Errorf("decoding the answer: %w", err)
	}
	return &m, nil
}

// resolveIdentity works out the node's subscription, NIC, ipConfiguration
// and private IP from settings, asking IMDS and Resource Manager for what
// they leave out.
func (p *Provider) resolveIdentity(ctx context.Context, s Settings) (identity, *imdsInstance, error) {
	var id identity
	var md *imdsInstance
	if s.SubscriptionID == "" || s.ResourceGroup == "" || s.NetworkInterface == "" {
		base := s.MetadataEndpoint
		if base == "" {
			base = defaultMetadataEndpoint
		}
		var err error
		if md, err = p.fetchIMDS(ctx, base); err != nil {
			return id, nil, err
		}
	}
	id.subscription = s.SubscriptionID
	id.resourceGroup = s.ResourceGroup
	if md != nil {
		if id.subscription == "" {
			id.subscription = md.Compute.SubscriptionID
		}
		if id.resourceGroup == "" {
			id.resourceGroup = md.Compute.ResourceGroupName
		}
	}
	if id.subscription == "" {
		return id, nil, errors.New("no subscription: set subscription_id or run on an Azure VM")
	}
	return id, md, nil
}

// findNIC locates the node's NIC: the configured one, or the NIC in the
// VM's resource group that belongs to the VM and carries its primary
// private IP.
func (p *Provider) findNIC(ctx context.Context, s Settings, md *imdsInstance) (armnetwork.Interface, armID, error) {
	if s.NetworkInterface != "" {
		ref, err := parseTopLevel(s.NetworkInterface, "networkInterfaces")
		if err != nil {
			return armnetwork.Interface{}, armID{}, fmt.Errorf("network_interface: %w", err)
		}
		if ref, err = ref.resolve(p.self.subscription, p.self.resourceGroup); err != nil {
			return armnetwork.Interface{}, armID{}, fmt.Errorf("network_interface: %w", err)
		}
		resp, err := p.nics.Get(ctx, ref.rg, ref.name, nil)
		if err != nil {
			return armnetwork.Interface{}, armID{}, fmt.Errorf("reading network interface %s: %w", nicID(ref.sub, ref.rg, ref.name), translate(err))
		}
		return resp.Interface, ref, nil
	}
	vmID, rg, ip := md.Compute.ResourceID, md.Compute.ResourceGroupName, md.primaryIP()
	if vmID == "" || rg == "" || ip == "" {
		return armnetwork.Interface{}, armID{}, errors.New("instance metadata lacks the VM's resource ID, resource group or private IP: set network_interface")
	}
	pager := p.nics.NewListPager(rg, nil)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return armnetwork.Interface{}, armID{}, fmt.Errorf("listing network interfaces of resource group %s: %w", rg, translate(err))
		}
		for _, nic := range page.Value {
			if nic == nil || nic.Properties == nil || nic.Properties.VirtualMachine == nil ||
				!strings.EqualFold(deref(nic.Properties.VirtualMachine.ID), vmID) {
				continue
			}
			for _, c := range nic.Properties.IPConfigurations {
				if c != nil && c.Properties != nil && deref(c.Properties.PrivateIPAddress) == ip {
					ref, err := parseARM(deref(nic.ID), "networkInterfaces", "")
					if err != nil {
						return armnetwork.Interface{}, armID{}, fmt.Errorf("network interface of VM %s: %w", vmID, err)
					}
					return *nic, ref, nil
				}
			}
		}
	}
	return armnetwork.Interface{}, armID{}, fmt.Errorf("no network interface of VM %s in resource group %s carries %s: set network_interface", vmID, rg, ip)
}

// selectIPConfig picks the ipConfiguration public IPs attach to and the
// private IP routes point at.
func selectIPConfig(nic armnetwork.Interface, wantConfig, wantIP string) (cfgName, cfgID, privateIP string, err error) {
	if nic.Properties == nil || len(nic.Properties.IPConfigurations) == 0 {
		return "", "", "", fmt.Errorf("network interface %s has no ipConfigurations", deref(nic.ID))
	}
	var primary, chosen *armnetwork.InterfaceIPConfiguration
	for _, c := range nic.Properties.IPConfigurations {
		if c == nil {
			continue
		}
		if c.Properties != nil && c.Properties.Primary != nil && *c.Properties.Primary && primary == nil {
			primary = c
		}
		if wantConfig != "" && strings.EqualFold(deref(c.Name), wantConfig) {
			chosen = c
		}
	}
	if primary == nil {
		primary = nic.Properties.IPConfigurations[0]
	}
	if wantConfig == "" {
		chosen = primary
	}
	if chosen == nil {
		return "", "", "", fmt.Errorf("ip_configuration: network interface %s has no ipConfiguration %q", deref(nic.ID), wantConfig)
	}
	privateIP = wantIP
	if privateIP == "" && primary.Properties != nil {
		privateIP = deref(primary.Properties.PrivateIPAddress)
	}
	if privateIP == "" {
		return "", "", "", fmt.Errorf("network interface %s has no private IP: set private_ip", deref(nic.ID))
	}
	cfgID = deref(chosen.ID)
	if cfgID == "" {
		cfgID = deref(nic.ID) + "/ipConfigurations/" + deref(chosen.Name)
	}
	return deref(chosen.Name), cfgID, privateIP, nil
}

func deref[T any](p *T) T {
	if p == nil {
		var zero T
		return zero
	}
	return *p
}
