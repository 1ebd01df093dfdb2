data "google_compute_subnetwork" "nodes" {
  project = var.project
  region  = var.region
  name    = var.subnetwork
}

locals {
  gateway_ids   = [for i in range(var.gateway_count) : "gw${i + 1}"]
  node_ids      = concat(local.gateway_ids, var.witness ? ["witness"] : [])
  gateway_zones = [for i in range(var.gateway_count) : var.zones[i % length(var.zones)]]
  witness_zone  = coalesce(var.witness_zone, var.zones[length(var.zones) - 1])
  cidr          = data.google_compute_subnetwork.nodes.ip_cidr_range
  gateway_ips   = [for i in range(var.gateway_count) : cidrhost(local.cidr, var.gateway_host_number + i)]
  witness_ip    = cidrhost(local.cidr, var.witness_host_number)
  node_ips      = zipmap(local.node_ids, concat(local.gateway_ips, var.witness ? [local.witness_ip] : []))
  alias_ip      = "${cidrhost(local.cidr, var.alias_ip_host_number)}/32"
  network_name  = element(split("/", data.google_compute_subnetwork.nodes.network), length(split("/", data.google_compute_subnetwork.nodes.network)) - 1)
  labels        = merge(var.labels, { "handoff-fleet" = var.name })
  # Node names double as target instance names (the provider's default).
  instance_names = { for id in local.node_ids : id => "${var.name}-${id}" }

  resources = concat(
    var.floating == "forwarding_rule" ? [for p in var.forwarding_protocols : { kind = "forwarding_rule", id = "${var.region}/${google_compute_forwarding_rule.vpn[p].name}" }] : [],
    var.floating == "alias_ip" ? [{ kind = "alias_ip", id = local.alias_ip }] : [],
    [for c in var.routed_cidrs : { kind = "route", id = "${local.network_name}/${c}" }],
  )

  # What charon terminates on: with protocol forwarding the packets keep
  # the external address, so every gateway carries it on lo. An alias IP
  # range is made local by the guest agent on the NIC that holds it.
  local_vips = var.floating == "forwarding_rule" ? ["${google_compute_address.vpn[0].address}/32"] : []

  unit = file("${path.module}/../../files/handoff.service")

  configs = { for id in local.node_ids : id => templatefile("${path.module}/templates/handoff.hcl.tftpl", {
    node_id              = id
    role                 = id == "witness" ? "witness" : "gateway"
    priority             = id == "witness" ? 0 : 100 - index(local.node_ids, id)
    bind_addr            = "${local.node_ips[id]}:${var.raft_port}"
    bootstrap            = id == var.bootstrap_node
    join                 = id == var.bootstrap_node ? [] : [for o in local.node_ids : "${local.node_ips[o]}:${var.raft_port}" if o != id]
    allowed_nodes        = local.node_ids
    log_level            = var.log_level
    log_format           = var.log_format
    heartbeat_timeout    = var.heartbeat_timeout
    election_timeout     = var.election_timeout
    leader_lease_timeout = var.leader_lease_timeout
    resources            = local.resources
    region               = var.region
    route_next_hop       = var.route_next_hop
    alias_zones          = distinct(local.gateway_zones)
    dataplane            = var.dataplane
    ike_continuity       = var.ike_continuity && var.dataplane == "strongswan"
    api_addr             = var.api_listen == "private" ? "${local.node_ips[id]}:${var.api_port}" : "127.0.0.1:${var.api_port}"
    api_tls              = var.api_tls
    has_api_token        = var.api_token != ""
    webhook_url          = var.webhook_url
    notify               = id == "witness" ? {} : var.notify_commands
    notify_timeout       = var.notify_timeout
  }) }

  cloud_init = { for id in local.node_ids : id => templatefile("${path.module}/../../files/cloud-init.yaml.tftpl", {
    node_id        = id
    role           = id == "witness" ? "witness" : "gateway"
    packages       = id == "witness" ? ["curl"] : concat(["curl", "strongswan-swanctl", "charon-systemd"], var.ike_continuity ? ["libcharon-extra-plugins"] : [], var.extra_packages)
    config         = local.configs[id]
    cluster_key    = var.cluster_key
    ca_pem         = var.tls_ca_pem
    cert_pem       = var.node_tls[id].cert_pem
    key_pem        = var.node_tls[id].key_pem
    unit           = local.unit
    swanctl_conf   = id == "witness" ? "" : var.swanctl_conf
    ike_continuity = id != "witness" && var.ike_continuity && var.dataplane == "strongswan"
    api_token      = var.api_token
    webhook_secret = var.webhook_secret
    notify_script  = id == "witness" ? "" : var.notify_script
    local_vips     = id == "witness" ? [] : local.local_vips
    handoff_url    = var.handoff_url
    handoff_sha256 = var.handoff_sha256
  }) }
}

resource "google_compute_instance" "gateway" {
  count        = var.gateway_count
  project      = var.project
  name         = local.instance_names[local.gateway_ids[count.index]]
  zone         = local.gateway_zones[count.index]
  machine_type = var.machine_type
  # The active gateway forwards the VPN clients' traffic (route next hop).
  can_ip_forward = true
  tags           = ["${var.name}-node", "${var.name}-gateway"]
  labels         = merge(local.labels, { "handoff-node" = local.gateway_ids[count.index] })

  boot_disk {
    initialize_params {
      image = var.image
    }
  }

  network_interface {
    subnetwork = data.google_compute_subnetwork.nodes.self_link
    network_ip = local.gateway_ips[count.index]
  }

  metadata = {
    user-data              = local.cloud_init[local.gateway_ids[count.index]]
    block-project-ssh-keys = "true"
  }

  service_account {
    email  = google_service_account.gateway.email
    scopes = ["https://www.googleapis.com/auth/cloud-platform"] # IAM, not scopes, limits it
  }

  shielded_instance_config {
    enable_secure_boot = true
  }

  lifecycle {
    precondition {
      condition     = var.webhook_url == "" || length(trimspace(var.webhook_secret)) >= 16
      error_message = "webhook_url needs webhook_secret (at least 16 characters): the agents refuse to send unsigned webhooks."
    }
    # Handoff moves the alias IP range between NICs and writes its fencing
    # labels (handoff-alias-*); user data runs once, at first boot.
    ignore_changes = [network_interface[0].alias_ip_range, labels, metadata["user-data"]]
  }
}

resource "google_compute_instance" "witness" {
  count        = var.witness ? 1 : 0
  project      = var.project
  name         = local.instance_names["witness"]
  zone         = local.witness_zone
  machine_type = var.witness_machine_type
  tags         = ["${var.name}-node"]
  labels       = merge(local.labels, { "handoff-node" = "witness" })

  boot_disk {
    initialize_params {
      image = var.image
    }
  }

  network_interface {
    subnetwork = data.google_compute_subnetwork.nodes.self_link
    network_ip = local.witness_ip
  }

  metadata = {
    user-data              = local.cloud_init["witness"]
    block-project-ssh-keys = "true"
  }

  # No service account: a witness never calls a cloud API.

  shielded_instance_config {
    enable_secure_boot = true
  }

  lifecycle {
    ignore_changes = [metadata["user-data"]]
  }
}

# One target instance per gateway, named like the VM: the provider's
# default target_instance. setTarget points the rules at the active one.
resource "google_compute_target_instance" "gateway" {
  count    = var.floating == "forwarding_rule" ? var.gateway_count : 0
  project  = var.project
  name     = google_compute_instance.gateway[count.index].name
  zone     = google_compute_instance.gateway[count.index].zone
  instance = google_compute_instance.gateway[count.index].self_link
}

resource "google_compute_address" "vpn" {
  count        = var.floating == "forwarding_rule" ? 1 : 0
  project      = var.project
  region       = var.region
  name         = "${var.name}-vpn"
  address_type = "EXTERNAL"
}

# Protocol forwarding: packets keep the external address as destination.
# The first rule points at gw1; Handoff moves it (setTarget) and writes its
# fencing labels, which Terraform leaves alone.
resource "google_compute_forwarding_rule" "vpn" {
  for_each              = var.floating == "forwarding_rule" ? toset(var.forwarding_protocols) : toset([])
  project               = var.project
  region                = var.region
  name                  = "${var.name}-vpn-${lower(each.value)}"
  ip_address            = google_compute_address.vpn[0].address
  ip_protocol           = each.value
  ports                 = each.value == "UDP" ? ["500", "4500"] : null
  load_balancing_scheme = "EXTERNAL"
  target                = google_compute_target_instance.gateway[0].self_link
  lifecycle {
    ignore_changes = [target, labels]
  }
}

# Routes to routed_cidrs are not Terraform's: the first active gateway
# inserts handoff-<hash>-<term>-<node> and each takeover replaces it
# (GCE routes are immutable). Handoff never touches routes it did not make.
