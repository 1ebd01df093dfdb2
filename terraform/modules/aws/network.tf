# Raft between the nodes only: a security group that admits its own members.
resource "aws_security_group" "nodes" {
  name        = "${var.name}-nodes"
  description = "Handoff nodes: Raft and cluster RPC between members only"
  vpc_id      = data.aws_subnet.gateways.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-nodes" })
}

resource "aws_vpc_security_group_ingress_rule" "raft" {
  for_each                     = toset([for p in concat([var.raft_port, var.api_port], var.extra_node_ports) : tostring(p)])
  security_group_id            = aws_security_group.nodes.id
  referenced_security_group_id = aws_security_group.nodes.id
  ip_protocol                  = "tcp"
  from_port                    = tonumber(each.value)
  to_port                      = tonumber(each.value)
  description                  = "Handoff nodes to nodes, TCP ${each.value}"
}

# The operator API from outside the fleet (Prometheus, a bastion): only
# where api_listen = "private" puts the agents on it.
resource "aws_vpc_security_group_ingress_rule" "api" {
  for_each          = toset(var.api_cidrs)
  security_group_id = aws_security_group.nodes.id
  cidr_ipv4         = strcontains(each.value, ":") ? null : each.value
  cidr_ipv6         = strcontains(each.value, ":") ? each.value : null
  ip_protocol       = "tcp"
  from_port         = var.api_port
  to_port           = var.api_port
  description       = "Handoff operator API and /metrics"
}

resource "aws_vpc_security_group_ingress_rule" "ssh" {
  for_each          = toset(var.ssh_cidrs)
  security_group_id = aws_security_group.nodes.id
  cidr_ipv4         = strcontains(each.value, ":") ? null : each.value
  cidr_ipv6         = strcontains(each.value, ":") ? each.value : null
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  description       = "SSH"
}

# Egress: the EC2 API and the package mirrors (HTTPS/HTTP), Raft to peers,
# and the tunnels' traffic; the gateways forward arbitrary traffic.
resource "aws_vpc_security_group_egress_rule" "all_v4" {
  security_group_id = aws_security_group.nodes.id
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "-1"
  description       = "All outbound IPv4"
}

resource "aws_vpc_security_group_egress_rule" "all_v6" {
  security_group_id = aws_security_group.nodes.id
  cidr_ipv6         = "::/0"
  ip_protocol       = "-1"
  description       = "All outbound IPv6"
}

# IKE and ESP from the VPN peers, inside traffic from the protected side.
resource "aws_security_group" "gateways" {
  name        = "${var.name}-gateways"
  description = "Handoff gateways: IKE and ESP from the VPN peers"
  vpc_id      = data.aws_subnet.gateways.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-gateways" })
}

locals {
  vpn_rules = merge([for c in var.client_cidrs : {
    "${c} udp 500"  = { cidr = c, proto = "udp", port = 500 }
    "${c} udp 4500" = { cidr = c, proto = "udp", port = 4500 }
    "${c} esp"      = { cidr = c, proto = "50", port = null }
  }]...)
}

resource "aws_vpc_security_group_ingress_rule" "vpn" {
  for_each          = local.vpn_rules
  security_group_id = aws_security_group.gateways.id
  cidr_ipv4         = strcontains(each.value.cidr, ":") ? null : each.value.cidr
  cidr_ipv6         = strcontains(each.value.cidr, ":") ? each.value.cidr : null
  ip_protocol       = each.value.proto
  from_port         = each.value.port
  to_port           = each.value.port
  description       = "VPN peers: ${each.key}"
}

resource "aws_vpc_security_group_ingress_rule" "inside" {
  for_each          = toset(var.inside_cidrs)
  security_group_id = aws_security_group.gateways.id
  cidr_ipv4         = strcontains(each.value, ":") ? null : each.value
  cidr_ipv6         = strcontains(each.value, ":") ? each.value : null
  ip_protocol       = "-1"
  description       = "Protected network, routed into the tunnels"
}
