resource "google_compute_firewall" "raft" {
  project     = var.project
  name        = "${var.name}-raft"
  network     = data.google_compute_subnetwork.nodes.network
  description = "Handoff: Raft and cluster RPC (mutual TLS) between the nodes only"
  direction   = "INGRESS"
  source_tags = ["${var.name}-node"]
  target_tags = ["${var.name}-node"]
  allow {
    protocol = "tcp"
    ports    = [for p in concat([var.raft_port, var.api_port], var.extra_node_ports) : tostring(p)]
  }
}

# The operator API from outside the fleet (Prometheus, a bastion): only
# where api_listen = "private" puts the agents on it.
resource "google_compute_firewall" "api" {
  count         = length(var.api_cidrs) > 0 ? 1 : 0
  project       = var.project
  name          = "${var.name}-api"
  network       = data.google_compute_subnetwork.nodes.network
  description   = "Handoff operator API and /metrics"
  direction     = "INGRESS"
  source_ranges = var.api_cidrs
  target_tags   = ["${var.name}-node"]
  allow {
    protocol = "tcp"
    ports    = [tostring(var.api_port)]
  }
}

resource "google_compute_firewall" "vpn" {
  count         = length(var.client_cidrs) > 0 ? 1 : 0
  project       = var.project
  name          = "${var.name}-vpn"
  network       = data.google_compute_subnetwork.nodes.network
  description   = "Handoff gateways: IKE (UDP 500, 4500) and ESP from the VPN peers"
  direction     = "INGRESS"
  source_ranges = var.client_cidrs
  target_tags   = ["${var.name}-gateway"]
  allow {
    protocol = "udp"
    ports    = ["500", "4500"]
  }
  allow {
    protocol = "esp"
  }
}

resource "google_compute_firewall" "inside" {
  count         = length(var.inside_cidrs) > 0 ? 1 : 0
  project       = var.project
  name          = "${var.name}-inside"
  network       = data.google_compute_subnetwork.nodes.network
  description   = "Handoff gateways: traffic from the protected networks, routed into the tunnels"
  direction     = "INGRESS"
  source_ranges = var.inside_cidrs
  target_tags   = ["${var.name}-gateway"]
  allow {
    protocol = "all"
  }
}

resource "google_compute_firewall" "ssh" {
  count         = length(var.ssh_cidrs) > 0 ? 1 : 0
  project       = var.project
  name          = "${var.name}-ssh"
  network       = data.google_compute_subnetwork.nodes.network
  description   = "SSH to the Handoff nodes"
  direction     = "INGRESS"
  source_ranges = var.ssh_cidrs
  target_tags   = ["${var.name}-node"]
  allow {
    protocol = "tcp"
    ports    = ["22"]
  }
}
