output "node_ids" {
  description = "Handoff node IDs, in order: gw1 ... gwN, then witness. Issue one certificate per ID (handoff tls cert -node ID)."
  value       = local.node_ids
}

output "gateway_instances" {
  description = "Gateway VM self links, keyed by node ID."
  value       = { for i, id in local.gateway_ids : id => google_compute_instance.gateway[i].self_link }
}

output "gateway_private_ips" {
  description = "Internal IPs of the gateways, keyed by node ID."
  value       = zipmap(local.gateway_ids, local.gateway_ips)
}

output "witness_private_ip" {
  description = "Internal IP of the witness, or null without one."
  value       = var.witness ? local.witness_ip : null
}

output "raft_addresses" {
  description = "Raft address (host:port) of every node, keyed by node ID."
  value       = { for id, ip in local.node_ips : id => "${ip}:${var.raft_port}" }
}

output "vip" {
  description = "The address VPN peers connect to and charon terminates on: the external address of the forwarding rules, or the alias IP range's address; null with floating = none."
  value       = var.floating == "forwarding_rule" ? google_compute_address.vpn[0].address : (var.floating == "alias_ip" ? split("/", local.alias_ip)[0] : null)
}

output "handoff_resources" {
  description = "The floating resources written into every gateway's provider block, as {kind, id}."
  value       = local.resources
}

output "service_account_email" {
  description = "The gateways' service account (holds only the custom role)."
  value       = google_service_account.gateway.email
}

output "custom_role_id" {
  description = "ID of the custom role: exactly the permissions gcp.Permissions() lists."
  value       = google_project_iam_custom_role.handoff.id
}
