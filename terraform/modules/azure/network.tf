resource "azurerm_application_security_group" "nodes" {
  name                = "${var.name}-nodes"
  resource_group_name = var.resource_group_name
  location            = var.location
  tags                = local.tags
}

resource "azurerm_application_security_group" "gateways" {
  name                = "${var.name}-gateways"
  resource_group_name = var.resource_group_name
  location            = var.location
  tags                = local.tags
}

resource "azurerm_network_security_group" "nodes" {
  name                = "${var.name}-nodes"
  resource_group_name = var.resource_group_name
  location            = var.location
  tags                = local.tags
}

resource "azurerm_network_security_rule" "raft" {
  name                                       = "handoff-raft"
  description                                = "Raft and cluster RPC (mutual TLS) between the Handoff nodes only"
  resource_group_name                        = var.resource_group_name
  network_security_group_name                = azurerm_network_security_group.nodes.name
  priority                                   = 100
  direction                                  = "Inbound"
  access                                     = "Allow"
  protocol                                   = "Tcp"
  source_port_range                          = "*"
  destination_port_ranges                    = [for p in concat([var.raft_port, var.api_port], var.extra_node_ports) : tostring(p)]
  source_application_security_group_ids      = [azurerm_application_security_group.nodes.id]
  destination_application_security_group_ids = [azurerm_application_security_group.nodes.id]
}

resource "azurerm_network_security_rule" "ike" {
  count                                      = length(var.client_cidrs) > 0 ? 1 : 0
  name                                       = "handoff-ike"
  description                                = "IKE (UDP 500, 4500) from the VPN peers"
  resource_group_name                        = var.resource_group_name
  network_security_group_name                = azurerm_network_security_group.nodes.name
  priority                                   = 110
  direction                                  = "Inbound"
  access                                     = "Allow"
  protocol                                   = "Udp"
  source_port_range                          = "*"
  destination_port_ranges                    = ["500", "4500"]
  source_address_prefixes                    = var.client_cidrs
  destination_application_security_group_ids = [azurerm_application_security_group.gateways.id]
}

resource "azurerm_network_security_rule" "esp" {
  count                                      = length(var.client_cidrs) > 0 ? 1 : 0
  name                                       = "handoff-esp"
  description                                = "ESP from the VPN peers (behind the public IP's NAT, peers use NAT-T on 4500)"
  resource_group_name                        = var.resource_group_name
  network_security_group_name                = azurerm_network_security_group.nodes.name
  priority                                   = 120
  direction                                  = "Inbound"
  access                                     = "Allow"
  protocol                                   = "Esp"
  source_port_range                          = "*"
  destination_port_range                     = "*"
  source_address_prefixes                    = var.client_cidrs
  destination_application_security_group_ids = [azurerm_application_security_group.gateways.id]
}

resource "azurerm_network_security_rule" "inside" {
  count                                      = length(var.inside_cidrs) > 0 ? 1 : 0
  name                                       = "handoff-inside"
  description                                = "Traffic from the protected networks, routed into the tunnels"
  resource_group_name                        = var.resource_group_name
  network_security_group_name                = azurerm_network_security_group.nodes.name
  priority                                   = 130
  direction                                  = "Inbound"
  access                                     = "Allow"
  protocol                                   = "*"
  source_port_range                          = "*"
  destination_port_range                     = "*"
  source_address_prefixes                    = var.inside_cidrs
  destination_application_security_group_ids = [azurerm_application_security_group.gateways.id]
}

resource "azurerm_network_security_rule" "ssh" {
  count                                      = length(var.ssh_cidrs) > 0 ? 1 : 0
  name                                       = "handoff-ssh"
  description                                = "SSH to the Handoff nodes"
  resource_group_name                        = var.resource_group_name
  network_security_group_name                = azurerm_network_security_group.nodes.name
  priority                                   = 140
  direction                                  = "Inbound"
  access                                     = "Allow"
  protocol                                   = "Tcp"
  source_port_range                          = "*"
  destination_port_range                     = "22"
  source_address_prefixes                    = var.ssh_cidrs
  destination_application_security_group_ids = [azurerm_application_security_group.nodes.id]
}

# The operator API from outside the fleet (Prometheus, a bastion), ahead
# of the deny below: only where api_listen = "private" puts the agents on it.
resource "azurerm_network_security_rule" "api" {
  count                                      = length(var.api_cidrs) > 0 ? 1 : 0
  name                                       = "handoff-api"
  description                                = "Handoff operator API and /metrics"
  resource_group_name                        = var.resource_group_name
  network_security_group_name                = azurerm_network_security_group.nodes.name
  priority                                   = 150
  direction                                  = "Inbound"
  access                                     = "Allow"
  protocol                                   = "Tcp"
  source_port_range                          = "*"
  destination_port_range                     = tostring(var.api_port)
  source_address_prefixes                    = var.api_cidrs
  destination_application_security_group_ids = [azurerm_application_security_group.nodes.id]
}

# The default rules allow all traffic inside the virtual network: deny the
# Raft port from anything that is not a node.
resource "azurerm_network_security_rule" "raft_deny" {
  name                        = "handoff-raft-deny"
  description                 = "Raft port from anything but the Handoff nodes"
  resource_group_name         = var.resource_group_name
  network_security_group_name = azurerm_network_security_group.nodes.name
  priority                    = 200
  direction                   = "Inbound"
  access                      = "Deny"
  protocol                    = "Tcp"
  source_port_range           = "*"
  destination_port_ranges     = [for p in concat([var.raft_port, var.api_port], var.extra_node_ports) : tostring(p)]
  source_address_prefix       = "*"
  destination_address_prefix  = "*"
}

resource "azurerm_network_interface_security_group_association" "gateway" {
  count                     = var.gateway_count
  network_interface_id      = azurerm_network_interface.gateway[count.index].id
  network_security_group_id = azurerm_network_security_group.nodes.id
}

resource "azurerm_network_interface_security_group_association" "witness" {
  count                     = var.witness ? 1 : 0
  network_interface_id      = azurerm_network_interface.witness[0].id
  network_security_group_id = azurerm_network_security_group.nodes.id
}

resource "azurerm_network_interface_application_security_group_association" "gateway_nodes" {
  count                         = var.gateway_count
  network_interface_id          = azurerm_network_interface.gateway[count.index].id
  application_security_group_id = azurerm_application_security_group.nodes.id
}

resource "azurerm_network_interface_application_security_group_association" "gateway_gateways" {
  count                         = var.gateway_count
  network_interface_id          = azurerm_network_interface.gateway[count.index].id
  application_security_group_id = azurerm_application_security_group.gateways.id
}

resource "azurerm_network_interface_application_security_group_association" "witness" {
  count                         = var.witness ? 1 : 0
  network_interface_id          = azurerm_network_interface.witness[0].id
  application_security_group_id = azurerm_application_security_group.nodes.id
}
