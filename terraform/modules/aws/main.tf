data "aws_region" "current" {}
data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

data "aws_subnet" "gateways" {
  id = var.subnet_id
}

data "aws_subnet" "witness" {
  id = coalesce(var.witness_subnet_id, var.subnet_id)
}

data "aws_ami" "ubuntu" {
  count       = var.ami_id == null ? 1 : 0
  most_recent = true
  owners      = ["099720109477"] # Canonical
  filter {
    name   = "name"
    values = ["ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"]
  }
}

locals {
  ami         = var.ami_id != null ? var.ami_id : data.aws_ami.ubuntu[0].id
  gateway_ids = [for i in range(var.gateway_count) : "gw${i + 1}"]
  node_ids    = concat(local.gateway_ids, var.witness ? ["witness"] : [])
  gateway_ips = [for i in range(var.gateway_count) : cidrhost(data.aws_subnet.gateways.cidr_block, var.gateway_host_number + i)]
  witness_ip  = cidrhost(data.aws_subnet.witness.cidr_block, var.witness_host_number)
  node_ips    = zipmap(local.node_ids, concat(local.gateway_ips, var.witness ? [local.witness_ip] : []))
  vip         = cidrhost(data.aws_subnet.gateways.cidr_block, var.vip_host_number)
  tags        = merge(var.tags, { "handoff:fleet" = var.name })

  # Every (route table, destination) pair Handoff moves.
  routes = { for p in setproduct(var.route_table_ids, var.routed_cidrs) : "${p[0]}|${p[1]}" => { table = p[0], cidr = p[1] } }

  resources = concat(
    var.create_eip ? [{ kind = "eip", id = aws_eip.vip[0].allocation_id }] : [],
    [for id in sort(keys(local.routes)) : { kind = "route", id = id }],
  )

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
    region               = data.aws_region.current.name
    eip_private_ips      = var.create_eip ? { (aws_eip.vip[0].allocation_id) = local.vip } : {}
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
    local_vips     = id != "witness" && var.create_eip ? ["${local.vip}/32"] : []
    handoff_url    = var.handoff_url
    handoff_sha256 = var.handoff_sha256
  }) }
}

# The VIP is a secondary private IP that only Handoff assigns (to the active
# gateway's interface, AssignPrivateIpAddresses with AllowReassignment); the
# explicit reservation keeps EC2 from giving it to anything else.
resource "aws_ec2_subnet_cidr_reservation" "vip" {
  count            = var.create_eip ? 1 : 0
  subnet_id        = var.subnet_id
  cidr_block       = "${local.vip}/32"
  reservation_type = "explicit"
  description      = "${var.name}: Handoff VIP"
}

# Associated by the first active gateway and moved by Handoff, never by
# Terraform; Handoff writes its fencing tags (handoff:term, handoff:node,
# handoff:eni) on it, which Terraform leaves alone.
resource "aws_eip" "vip" {
  count  = var.create_eip ? 1 : 0
  domain = "vpc"
  tags   = merge(local.tags, { Name = "${var.name}-vip" })
  lifecycle {
    ignore_changes = [tags, tags_all]
  }
}

resource "aws_instance" "gateway" {
  count                  = var.gateway_count
  ami                    = local.ami
  instance_type          = var.instance_type
  subnet_id              = var.subnet_id
  private_ip             = local.gateway_ips[count.index]
  vpc_security_group_ids = [aws_security_group.nodes.id, aws_security_group.gateways.id]
  iam_instance_profile   = aws_iam_instance_profile.gateway.name
  key_name               = var.key_name
  # The active gateway forwards the VPN clients' traffic.
  source_dest_check = false
  # Compressed: EC2 user data is limited to 16 KB; cloud-init unpacks gzip.
  user_data_base64 = base64gzip(local.cloud_init[local.gateway_ids[count.index]])

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required" # IMDSv2 only, as the provider uses
    http_put_response_hop_limit = 1
  }

  root_block_device {
    encrypted   = true
    volume_type = "gp3"
  }

  tags = merge(local.tags, { Name = "${var.name}-${local.gateway_ids[count.index]}", "handoff:node" = local.gateway_ids[count.index] })

  lifecycle {
    precondition {
      condition     = var.webhook_url == "" || length(trimspace(var.webhook_secret)) >= 16
      error_message = "webhook_url needs webhook_secret (at least 16 characters): the agents refuse to send unsigned webhooks."
    }
    # Handoff moves the VIP between gateways; user data runs once, at first
    # boot, so a changed template applies to replaced instances only.
    ignore_changes = [secondary_private_ips, user_data_base64, ami]
  }
}

resource "aws_instance" "witness" {
  count                  = var.witness ? 1 : 0
  ami                    = local.ami
  instance_type          = var.witness_instance_type
  subnet_id              = data.aws_subnet.witness.id
  private_ip             = local.witness_ip
  vpc_security_group_ids = [aws_security_group.nodes.id]
  key_name               = var.key_name
  # No instance profile: a witness never calls a cloud API.
  user_data_base64 = base64gzip(local.cloud_init["witness"])

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    encrypted   = true
    volume_type = "gp3"
  }

  tags = merge(local.tags, { Name = "${var.name}-witness", "handoff:node" = "witness" })

  lifecycle {
    ignore_changes = [user_data_base64, ami]
  }
}

# Routes start at the first gateway; ReplaceRoute moves them from then on.
resource "aws_route" "routed" {
  for_each                    = local.routes
  route_table_id              = each.value.table
  destination_cidr_block      = strcontains(each.value.cidr, ":") ? null : each.value.cidr
  destination_ipv6_cidr_block = strcontains(each.value.cidr, ":") ? each.value.cidr : null
  network_interface_id        = aws_instance.gateway[0].primary_network_interface_id
  lifecycle {
    ignore_changes = [network_interface_id]
  }
}
