output "node_ids" {
  description = "Handoff node IDs, in order: gw1 ... gwN, then witness. Issue one certificate per ID (handoff tls cert -node ID)."
  value       = local.node_ids
}

output "gateway_instance_ids" {
  description = "EC2 instance IDs of the gateways, in node order."
  value       = aws_instance.gateway[*].id
}

output "gateway_private_ips" {
  description = "Primary private IPs of the gateways, keyed by node ID."
  value       = { for i, id in local.gateway_ids : id => aws_instance.gateway[i].private_ip }
}

output "witness_private_ip" {
  description = "Private IP of the witness, or null without one."
  value       = var.witness ? aws_instance.witness[0].private_ip : null
}

output "raft_addresses" {
  description = "Raft address (host:port) of every node, keyed by node ID."
  value       = { for id, ip in local.node_ips : id => "${ip}:${var.raft_port}" }
}

output "vip" {
  description = "The secondary private IP the gateways terminate IKE on (local_addrs in swanctl.conf); the Elastic IP maps to it. Null without an Elastic IP."
  value       = var.create_eip ? local.vip : null
}

output "public_ip" {
  description = "The Elastic IP VPN peers connect to, or null."
  value       = var.create_eip ? aws_eip.vip[0].public_ip : null
}

output "eip_allocation_id" {
  description = "Allocation ID of the Elastic IP (the eip resource Handoff moves), or null."
  value       = var.create_eip ? aws_eip.vip[0].allocation_id : null
}

output "handoff_resources" {
  description = "The floating resources written into every gateway's provider block, as {kind, id}."
  value       = local.resources
}

output "gateway_role_arn" {
  description = "ARN of the gateways' IAM role (exactly the actions aws.Permissions() lists)."
  value       = aws_iam_role.gateway.arn
}

output "security_group_ids" {
  description = "Security groups: nodes (Raft between members) and gateways (IKE/ESP from the VPN peers)."
  value       = { nodes = aws_security_group.nodes.id, gateways = aws_security_group.gateways.id }
}
