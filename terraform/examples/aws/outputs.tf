output "public_ip" {
  description = "The Elastic IP VPN clients connect to."
  value       = module.handoff.public_ip
}

output "vip" {
  description = "The private VIP charon terminates on (local_addrs in swanctl.conf)."
  value       = module.handoff.vip
}

output "raft_addresses" {
  description = "Raft address of every node."
  value       = module.handoff.raft_addresses
}
