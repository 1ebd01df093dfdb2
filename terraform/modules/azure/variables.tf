variable "name" {
  description = "Prefix of every resource name, and the value of the handoff:fleet tag."
  type        = string
  default     = "handoff"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,30}$", var.name))
    error_message = "name must be 1-31 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "resource_group_name" {
  description = "Resource group of the fleet: VMs, NICs, the public IP, the identity and the role definition."
  type        = string
}

variable "location" {
  description = "Azure region of the fleet."
  type        = string
}

variable "subnet_id" {
  description = "ARM ID of the subnet of every node. The public IP moves between NICs of this subnet."
  type        = string
}

variable "zones" {
  description = "Availability zones of the gateways, used in turn (gateway i in zones[i % length(zones)]). Empty: no zone pinning."
  type        = list(string)
  default     = ["1", "2", "3"]
}

variable "witness_zone" {
  description = "Availability zone of the witness. Null: the last of zones (none if zones is empty)."
  type        = string
  default     = null
}

variable "create_public_ip" {
  description = "Whether to create the Standard static public IP VPN peers connect to. The first active gateway attaches it to its NIC; Terraform never does."
  type        = bool
  default     = true
}

variable "route_tables" {
  description = "Existing route tables whose routes to routed_cidrs point at the active gateway (next hop VirtualAppliance). Terraform creates each route at the first gateway; Handoff rewrites the next hop afterwards. The gateways' role is assigned on each table."
  type = list(object({
    resource_group_name = string
    name                = string
  }))
  default = []
}

variable "role_scopes" {
  description = "More scopes (resource IDs, or resource group IDs) where the gateways' role is assignable and assigned. Not needed for what the module moves: the role is assigned on the public IP, the gateways' NICs, their subnet and each of route_tables."
  type        = list(string)
  default     = []
}

variable "vm_size" {
  description = "VM size of the gateways."
  type        = string
  default     = "Standard_D2s_v5"
}

variable "witness_vm_size" {
  description = "VM size of the witness."
  type        = string
  default     = "Standard_B1s"
}

variable "admin_username" {
  description = "Administrator account of every VM (SSH key login only)."
  type        = string
  default     = "handoff"
}

variable "admin_ssh_public_key" {
  description = "SSH public key of admin_username (Azure requires one for Linux VMs without a password)."
  type        = string
}

variable "image" {
  description = "Marketplace image of every node (Debian or Ubuntu: cloud-init installs strongSwan with apt)."
  type = object({
    publisher = string
    offer     = string
    sku       = string
    version   = string
  })
  default = {
    publisher = "Canonical"
    offer     = "ubuntu-24_04-lts"
    sku       = "server"
    version   = "latest"
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

variable "gateway_count" {
  description = "Number of gateways (strongSwan + Handoff agent). With a witness, 2 tolerate one failure."
  type        = number
  default     = 2
  validation {
    condition     = var.gateway_count >= 1 && var.gateway_count <= 7
    error_message = "gateway_count must be between 1 and 7."
  }
}

variable "witness" {
  description = "Whether to run a witness: a Raft voter without strongSwan that never becomes active, so that two gateways keep a quorum when one fails."
  type        = bool
  default     = true
}

variable "gateway_host_number" {
  description = "Host number (cidrhost) of the first gateway's private IP in its subnet; gateway i gets this plus i. Fixed addresses let every node's configuration name its peers before they exist."
  type        = number
  default     = 10
}

variable "witness_host_number" {
  description = "Host number (cidrhost) of the witness's private IP in its subnet."
  type        = number
  default     = 20
}

variable "routed_cidrs" {
  description = "Destinations (IPv4 or IPv6 CIDRs) routed through the active gateway: the VPN clients' virtual IP pools or remote sites."
  type        = list(string)
  default     = []
}

variable "client_cidrs" {
  description = "Sources allowed to reach the gateways with IKE (UDP 500 and 4500) and ESP: the VPN peers."
  type        = list(string)
}

variable "inside_cidrs" {
  description = "Protected networks allowed to send any traffic to the gateways, to be routed into the tunnels."
  type        = list(string)
  default     = []
}

variable "ssh_cidrs" {
  description = "Sources allowed to reach the nodes on TCP 22. Empty: no SSH rule (use Azure Bastion)."
  type        = list(string)
  default     = []
}

variable "raft_port" {
  description = "TCP port of Raft and the cluster RPC (join, leadership hand-over, health reports), mutual TLS, open between the nodes only."
  type        = number
  default     = 7946
}

variable "api_port" {
  description = "TCP port of the agent's operator HTTP API (status, members, promote, drain, /metrics), opened between the nodes and to api_cidrs. api_listen decides whether the agent listens on it on the private address or on 127.0.0.1 only."
  type        = number
  default     = 7950
}

variable "api_token" {
  description = "Token of the operator API (at least 16 characters; e.g. the output of handoff keygen -for api-token), written to /etc/handoff/api.token, mode 0600, as api.token_file. Empty: the API serves reads only, from loopback."
  type        = string
  default     = ""
  sensitive   = true
  validation {
    condition     = var.api_token == "" || (length(var.api_token) >= 16 && can(regex("^[A-Za-z0-9._~+/=-]+$", var.api_token)))
    error_message = "api_token must be empty or at least 16 characters of A-Z a-z 0-9 . _ ~ + / = -."
  }
}

variable "api_listen" {
  description = "Where each node's operator API (status, members, promote, drain, the status page, /metrics) listens: \"loopback\" (127.0.0.1:api_port, the node itself only) or \"private\" (the node's private IP:api_port, which the api_port rule opens to the other nodes and to api_cidrs, e.g. Prometheus). With \"private\", set api_tls and api_token: the token crosses the network."
  type        = string
  default     = "loopback"
  validation {
    condition     = contains(["loopback", "private"], var.api_listen)
    error_message = "api_listen must be loopback or private."
  }
}

variable "api_tls" {
  description = "Serve the operator API over HTTPS with the node's cluster certificate (/etc/handoff/tls/node.pem, whose DNS name is the node ID): clients verify it with the cluster CA and the node ID as server name (handoff -ca-file ca.pem -addr https://NODE:7950; Prometheus tls_config { ca_file, server_name })."
  type        = bool
  default     = false
}

variable "api_cidrs" {
  description = "Sources (CIDRs) allowed to reach api_port on every node, besides the nodes themselves: a Prometheus server, an operators' bastion. Useful with api_listen = \"private\"."
  type        = list(string)
  default     = []
}

variable "webhook_url" {
  description = "Receiver of the agents' signed operator events (failover, health, lag), rendered as webhook.url. Empty: no webhooks. Sensitive: incoming-webhook URLs carry their own secret."
  type        = string
  default     = ""
  sensitive   = true
  validation {
    condition     = var.webhook_url == "" || (can(regex("^https?://[^\\s\"]+$", var.webhook_url)) && !strcontains(var.webhook_url, "$${") && !strcontains(var.webhook_url, "%%{"))
    error_message = "webhook_url must be empty or an http(s) URL without spaces, quotes, \"$${\" or \"%%{\"."
  }
}

variable "webhook_secret" {
  description = "Signing secret of the webhooks (at least 16 characters; e.g. the output of handoff keygen -for webhook-secret), written to /etc/handoff/webhook.secret, mode 0600, as webhook.secret_file. Required with webhook_url."
  type        = string
  default     = ""
  sensitive   = true
  validation {
    condition     = var.webhook_secret == "" || length(trimspace(var.webhook_secret)) >= 16
    error_message = "webhook_secret must be empty or at least 16 characters."
  }
}

variable "notify_commands" {
  description = "Commands each gateway's agent runs on becoming active, standby, fenced or faulty (keepalived's notify_master and friends), keyed by state; each an argument vector whose program is an absolute path, e.g. { active = [\"/usr/local/sbin/handoff-notify\", \"active\"] }. They run after the transition, never in a takeover's path."
  type        = map(list(string))
  default     = {}
  validation {
    condition = alltrue([for k, v in var.notify_commands : contains(["active", "standby", "fenced", "faulty"], k) && length(v) > 0 && startswith(v[0], "/") &&
    alltrue([for a in v : !strcontains(a, "$${") && !strcontains(a, "%%{")])])
    error_message = "notify_commands keys must be active, standby, fenced or faulty, each a non-empty list whose first element is an absolute path, without \"$${\" or \"%%{\"."
  }
}

variable "notify_script" {
  description = "A script written to /usr/local/sbin/handoff-notify (mode 0755) on every gateway, for notify_commands to run. Empty: none."
  type        = string
  default     = ""
}

variable "notify_timeout" {
  description = "notify.timeout: a notify command running longer is killed with its process group."
  type        = string
  default     = "30s"
}

variable "extra_node_ports" {
  description = "More TCP ports opened between the nodes only."
  type        = list(number)
  default     = []
}

variable "extra_packages" {
  description = "More Debian packages for the gateways, e.g. libcharon-extra-plugins for EAP."
  type        = list(string)
  default     = []
}

variable "handoff_url" {
  description = "HTTPS URL of the handoff binary for linux/amd64 (make build with GOOS=linux GOARCH=amd64), downloaded at first boot."
  type        = string
  validation {
    condition     = can(regex("^https://[^'\\s]+$", var.handoff_url))
    error_message = "handoff_url must be an https:// URL without quotes or spaces."
  }
}

variable "handoff_sha256" {
  description = "SHA-256 of the binary at handoff_url (hex); the node refuses to install anything else."
  type        = string
  validation {
    condition     = can(regex("^[0-9a-f]{64}$", var.handoff_sha256))
    error_message = "handoff_sha256 must be 64 lowercase hex digits."
  }
}

variable "cluster_key" {
  description = "The cluster key (64 hex digits, from `handoff keygen`) that seals SA keys in the Raft log. Written to /etc/handoff/cluster.key, mode 0600."
  type        = string
  sensitive   = true
  validation {
    condition     = can(regex("^[0-9a-fA-F]{64}\\s*$", var.cluster_key))
    error_message = "cluster_key must be 64 hex digits (handoff keygen writes one)."
  }
}

variable "tls_ca_pem" {
  description = "The cluster CA certificate (ca.pem from `handoff tls ca`). Its key stays offline: it is never given to Terraform."
  type        = string
}

variable "node_tls" {
  description = "Each node's certificate and key from `handoff tls cert -node ID`, keyed by node ID: gw1 ... gwN and, with a witness, witness. Written to /etc/handoff/tls, keys mode 0600."
  type = map(object({
    cert_pem = string
    key_pem  = string
  }))
  sensitive = true
}

variable "swanctl_conf" {
  description = "strongSwan connection configuration (swanctl.conf syntax) for every gateway, written to /etc/swanctl/conf.d/handoff-vpn.conf mode 0600. Gateways terminate on their own private IP behind the public IP's 1:1 NAT: use NAT-T (encap = yes). Empty: none."
  type        = string
  default     = ""
  sensitive   = true
}

variable "bootstrap_node" {
  description = "Node that bootstraps the Raft cluster on first start; the others join it. Set to \"\" after the first apply, so a replaced instance joins instead of founding a second cluster."
  type        = string
  default     = "gw1"
}

variable "heartbeat_timeout" {
  description = "raft.heartbeat_timeout: how long followers wait for the leader before an election (the failure detector)."
  type        = string
  default     = "150ms"
}

variable "election_timeout" {
  description = "raft.election_timeout."
  type        = string
  default     = "150ms"
}

variable "leader_lease_timeout" {
  description = "raft.leader_lease_timeout: must be under half of heartbeat_timeout (handoff validate refuses otherwise)."
  type        = string
  default     = "50ms"
}

variable "log_level" {
  description = "Agent log level: debug, info, warn or error."
  type        = string
  default     = "info"
}

variable "log_format" {
  description = "Agent log format: text or json."
  type        = string
  default     = "json"
}

variable "ike_continuity" {
  description = "Carry the IKE_SAs across a takeover (strongswan dataplane): the gateways load charon's ha plugin (libcharon-extra-plugins) with Handoff as its peer on loopback, and the peers keep their IKE_SAs instead of being re-established. See docs/ipsec.md, \"IKE continuity\"."
  type        = bool
  default     = false
}

variable "dataplane" {
  description = "Dataplane of the gateways: strongswan (VICI + XFRM) or memory (moves the floating resources but carries no tunnels; for trying the deployment)."
  type        = string
  default     = "strongswan"
  validation {
    condition     = contains(["strongswan", "memory"], var.dataplane)
    error_message = "dataplane must be strongswan or memory."
  }
}
