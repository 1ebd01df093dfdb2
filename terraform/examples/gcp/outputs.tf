output "vip" {
  description = "The external address VPN clients connect to (on every gateway's lo)."
  value       = module.handoff.vip
}

output "raft_addresses" {
  description = "Raft address of every node."
  value       = module.handoff.raft_addresses
}

output "service_account_email" {
  description = "The gateways' service account."
  value       = module.handoff.service_account_email
}
