node_id          = "gw1"
priority         = 120
bind_addr        = "0.0.0.0:7946"
advertise_addr   = "192.0.2.11:7946"
data_dir         = "/var/lib/handoff"
join             = ["192.0.2.12:7946", "192.0.2.13:7946"]
cluster_key      = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"

tls {
  ca   = "/etc/handoff/tls/ca.pem"
  cert = "/etc/handoff/tls/gw1.pem"
  key  = "/etc/handoff/tls/gw1-key.pem"
  # gw2's certificate before its rebuild (runbook, section 6)
  deny_serials = ["3a:5f:01:9c"]
}

raft {
  heartbeat_timeout    = "100ms"
  election_timeout     = "100ms"
  leader_lease_timeout = "30ms"
}

replication {
  batch_window    = "2ms"
  replay_interval = "50ms"
}

provider {
  type = "memory"
  resource {
    kind = "eip"
    id   = "eipalloc-0abc"
  }
  resource {
    kind = "route"
    id   = "rtb-1|198.51.100.0/24"
  }
}
