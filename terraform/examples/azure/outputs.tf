output "public_ip" {
  description = "The public IP VPN clients connect to."
  value       = module.handoff.public_ip
}

output "raft_addresses" {
  description = "Raft address of every node."
  value       = module.handoff.raft_addresses
}

output "identity_client_id" {
  description = "Client ID of the gateways' managed identity."
  value       = module.handoff.identity_client_id
}
