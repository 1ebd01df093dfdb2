# Two gateways in two zones and a witness in a third, behind protocol
# forwarding. Make the key material first (docs/runbook.md):
#
#   handoff keygen -out pki/cluster.key
#   handoff tls ca -out pki
#   for n in gw1 gw2 witness; do handoff tls cert -ca pki -node $n -out pki; done

terraform {
  required_version = ">= 1.5.0"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 5.0.0"
    }
  }
}

provider "google" {
  project = var.project
  region  = var.region
}

locals {
  nodes = ["gw1", "gw2", "witness"]
}

module "handoff" {
  source = "../../modules/gcp"

  name         = "vpn"
  project      = var.project
  region       = var.region
  zones        = ["${var.region}-a", "${var.region}-b"]
  witness_zone = "${var.region}-c"
  subnetwork   = var.subnetwork

  floating     = "forwarding_rule"
  client_cidrs = ["0.0.0.0/0"]
  routed_cidrs = ["100.64.0.0/16"]
  inside_cidrs = ["10.0.0.0/16"]

  handoff_url    = var.handoff_url
  handoff_sha256 = var.handoff_sha256

  cluster_key = file("${path.root}/pki/cluster.key")
  tls_ca_pem  = file("${path.root}/pki/ca.pem")
  node_tls = { for n in local.nodes : n => {
    cert_pem = file("${path.root}/pki/${n}.pem")
    key_pem  = file("${path.root}/pki/${n}-key.pem")
  } }
  swanctl_conf = file("${path.root}/swanctl.conf")
}
