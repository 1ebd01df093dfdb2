# Two gateways and a witness in an existing VPC. Before `terraform apply`,
# make the cluster's key material on your workstation (docs/runbook.md):
#
#   handoff keygen -out pki/cluster.key
#   handoff tls ca -out pki
#   for n in gw1 gw2 witness; do handoff tls cert -ca pki -node $n -out pki; done
#
# pki/ca-key.pem never goes to Terraform: keep it offline.

terraform {
  required_version = ">= 1.5.0"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.40.0"
    }
  }
}

provider "aws" {
  region = var.region
}

locals {
  nodes = ["gw1", "gw2", "witness"]
}

module "handoff" {
  source = "../../modules/aws"

  name              = "vpn"
  subnet_id         = var.subnet_id
  witness_subnet_id = var.witness_subnet_id
  gateway_count     = 2
  witness           = true

  client_cidrs    = ["0.0.0.0/0"] # road warriors from anywhere
  route_table_ids = var.route_table_ids
  routed_cidrs    = ["100.64.0.0/16"] # the clients' virtual IP pool
  inside_cidrs    = ["10.0.0.0/16"]

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
