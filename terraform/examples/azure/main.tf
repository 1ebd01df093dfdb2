# Two gateways in two zones and a witness in a third, behind a public IP
# that moves between the gateways' NICs. Make the key material first
# (docs/runbook.md):
#
#   handoff keygen -out pki/cluster.key
#   handoff tls ca -out pki
#   for n in gw1 gw2 witness; do handoff tls cert -ca pki -node $n -out pki; done

terraform {
  required_version = ">= 1.5.0"
  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = ">= 4.0.0"
    }
  }
}

provider "azurerm" {
  features {}
  subscription_id = var.subscription_id
}

locals {
  nodes = ["gw1", "gw2", "witness"]
}

module "handoff" {
  source = "../../modules/azure"

  name                = "vpn"
  resource_group_name = var.resource_group_name
  location            = var.location
  subnet_id           = var.subnet_id
  zones               = ["1", "2"]
  witness_zone        = "3"

  client_cidrs = ["0.0.0.0/0"]
  route_tables = var.route_tables
  routed_cidrs = ["100.64.0.0/16"]
  inside_cidrs = ["10.0.0.0/16"]

  admin_ssh_public_key = file(pathexpand("~/.ssh/id_ed25519.pub"))

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
