output "node_ids" {
  description = "Handoff node IDs, in order: gw1 ... gwN, then witness. Issue one certificate per ID (handoff tls cert -node ID)."
  value       = local.node_ids
}

output "gateway_vm_ids" {
  description = "ARM IDs of the gateway VMs, keyed by node ID."
  value       = { for i, id in local.gateway_ids : id => azurerm_linux_virtual_machine.gateway[i].id }
}

output "gateway_private_ips" {
  description = "Static private IPs of the gateways (the routes' next hops), keyed by node ID."
  value       = zipmap(local.gateway_ids, local.gateway_ips)
}

output "witness_private_ip" {
  description = "Private IP of the witness, or null without one."
  value       = var.witness ? local.witness_ip : null
}

output "raft_addresses" {
  description = "Raft address (host:port) of every node, keyed by node ID."
  value       = { for id, ip in local.node_ips : id => "${ip}:${var.raft_port}" }
}

output "public_ip" {
  description = "The public IP VPN peers connect to, or null."
  value       = var.create_public_ip ? azurerm_public_ip.vpn[0].ip_address : null
}

output "handoff_resources" {
  description = "The floating resources written into every gateway's provider block, as {kind, id}."
  value       = local.resources
}

output "identity_client_id" {
  description = "Client ID of the gateways' user-assigned identity (managed_identity_client_id in the provider block)."
  value       = azurerm_user_assigned_identity.gateway.client_id
}

output "role_definition_id" {
  description = "Resource ID of the custom role: exactly the actions azure.Permissions() lists."
  value       = azurerm_role_definition.handoff.role_definition_resource_id
}
