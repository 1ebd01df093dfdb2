data "azurerm_resource_group" "fleet" {
  name = var.resource_group_name
}

locals {
  # /subscriptions/S/resourceGroups/RG/providers/Microsoft.Network/virtualNetworks/VNET/subnets/SUBNET
  subnet_parts = split("/", var.subnet_id)
}

data "azurerm_subnet" "nodes" {
  resource_group_name  = local.subnet_parts[4]
  virtual_network_name = local.subnet_parts[8]
  name                 = local.subnet_parts[10]
}

locals {
  gateway_ids   = [for i in range(var.gateway_count) : "gw${i + 1}"]
  node_ids      = concat(local.gateway_ids, var.witness ? ["witness"] : [])
  gateway_zones = [for i in range(var.gateway_count) : length(var.zones) > 0 ? var.zones[i % length(var.zones)] : null]
  witness_zone  = var.witness_zone != null ? var.witness_zone : (length(var.zones) > 0 ? var.zones[length(var.zones) - 1] : null)
  cidr          = data.azurerm_subnet.nodes.address_prefixes[0]
  gateway_ips   = [for i in range(var.gateway_count) : cidrhost(local.cidr, var.gateway_host_number + i)]
  witness_ip    = cidrhost(local.cidr, var.witness_host_number)
  node_ips      = zipmap(local.node_ids, concat(local.gateway_ips, var.witness ? [local.witness_ip] : []))
  tags          = merge(var.tags, { "handoff-fleet" = var.name })

  # Every (route table, destination) pair Handoff moves; route names are
  # the destination with its slash and colons replaced.
  routes = { for p in setproduct(var.route_tables, var.routed_cidrs) :
    "${p[0].resource_group_name}/${p[0].name}/${var.name}-${replace(replace(p[1], "/", "_"), ":", "-")}" => {
      resource_group_name = p[0].resource_group_name
      table               = p[0].name
      name                = "${var.name}-${replace(replace(p[1], "/", "_"), ":", "-")}"
      cidr                = p[1]
    }
  }

  resources = concat(
    var.create_public_ip ? [{ kind = "public_ip", id = "${var.resource_group_name}/${azurerm_public_ip.vpn[0].name}" }] : [],
    [for k in sort(keys(local.routes)) : { kind = "route", id = k }],
  )

  unit = file("${path.module}/../../files/handoff.service")

  configs = { for id in local.node_ids : id => templatefile("${path.module}/templates/handoff.hcl.tftpl", {
    node_id                    = id
    role                       = id == "witness" ? "witness" : "gateway"
    priority                   = id == "witness" ? 0 : 100 - index(local.node_ids, id)
    bind_addr                  = "${local.node_ips[id]}:${var.raft_port}"
    bootstrap                  = id == var.bootstrap_node
    join                       = id == var.bootstrap_node ? [] : [for o in local.node_ids : "${local.node_ips[o]}:${var.raft_port}" if o != id]
    allowed_nodes              = local.node_ids
    log_level                  = var.log_level
    log_format                 = var.log_format
    heartbeat_timeout          = var.heartbeat_timeout
    election_timeout           = var.election_timeout
    leader_lease_timeout       = var.leader_lease_timeout
    resources                  = local.resources
    resource_group             = var.resource_group_name
    managed_identity_client_id = azurerm_user_assigned_identity.gateway.client_id
    network_interface          = "${var.resource_group_name}/${var.name}-${id}"
    dataplane                  = var.dataplane
    ike_continuity             = var.ike_continuity && var.dataplane == "strongswan"
    api_addr                   = var.api_listen == "private" ? "${local.node_ips[id]}:${var.api_port}" : "127.0.0.1:${var.api_port}"
    api_tls                    = var.api_tls
    has_api_token              = var.api_token != ""
    webhook_url                = var.webhook_url
    notify                     = id == "witness" ? {} : var.notify_commands
    notify_timeout             = var.notify_timeout
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
    local_vips     = [] # the public IP is 1:1 NAT to the NIC's own private IP
    handoff_url    = var.handoff_url
    handoff_sha256 = var.handoff_sha256
  }) }
}

# Attached by the first active gateway and moved by Handoff between the
# gateways' NICs; Handoff writes its fencing tags (handoff-term,
# handoff-node, handoff-target) on it, which Terraform leaves alone.
resource "azurerm_public_ip" "vpn" {
  count               = var.create_public_ip ? 1 : 0
  name                = "${var.name}-vpn"
  resource_group_name = var.resource_group_name
  location            = var.location
  sku                 = "Standard"
  allocation_method   = "Static"
  zones               = length(var.zones) > 0 ? var.zones : null
  tags                = local.tags
  lifecycle {
    ignore_changes = [tags]
  }
}

resource "azurerm_network_interface" "gateway" {
  count                          = var.gateway_count
  name                           = "${var.name}-${local.gateway_ids[count.index]}"
  resource_group_name            = var.resource_group_name
  location                       = var.location
  ip_forwarding_enabled          = true # the active gateway is the routes' next hop
  accelerated_networking_enabled = true
  tags                           = local.tags

  ip_configuration {
    name                          = "primary"
    primary                       = true
    subnet_id                     = var.subnet_id
    private_ip_address_allocation = "Static"
    private_ip_address            = local.gateway_ips[count.index]
  }

  lifecycle {
    # Handoff attaches the public IP to the active gateway's NIC.
    ignore_changes = [ip_configuration[0].public_ip_address_id]
  }
}

resource "azurerm_network_interface" "witness" {
  count               = var.witness ? 1 : 0
  name                = "${var.name}-witness"
  resource_group_name = var.resource_group_name
  location            = var.location
  tags                = local.tags

  ip_configuration {
    name                          = "primary"
    primary                       = true
    subnet_id                     = var.subnet_id
    private_ip_address_allocation = "Static"
    private_ip_address            = local.witness_ip
  }
}

resource "azurerm_linux_virtual_machine" "gateway" {
  count                           = var.gateway_count
  name                            = "${var.name}-${local.gateway_ids[count.index]}"
  resource_group_name             = var.resource_group_name
  location                        = var.location
  zone                            = local.gateway_zones[count.index]
  size                            = var.vm_size
  admin_username                  = var.admin_username
  disable_password_authentication = true
  network_interface_ids           = [azurerm_network_interface.gateway[count.index].id]
  custom_data                     = base64encode(local.cloud_init[local.gateway_ids[count.index]])
  tags                            = merge(local.tags, { "handoff-node" = local.gateway_ids[count.index] })

  admin_ssh_key {
    username   = var.admin_username
    public_key = var.admin_ssh_public_key
  }

  identity {
    type         = "UserAssigned"
    identity_ids = [azurerm_user_assigned_identity.gateway.id]
  }

  os_disk {
    caching              = "ReadWrite"
    storage_account_type = "Premium_LRS"
  }

  source_image_reference {
    publisher = var.image.publisher
    offer     = var.image.offer
    sku       = var.image.sku
    version   = var.image.version
  }

  lifecycle {
    precondition {
      condition     = var.webhook_url == "" || length(trimspace(var.webhook_secret)) >= 16
      error_message = "webhook_url needs webhook_secret (at least 16 characters): the agents refuse to send unsigned webhooks."
    }
    # custom_data runs once, at first boot; a changed template applies to
    # replaced VMs only.
    ignore_changes = [custom_data]
  }
}

resource "azurerm_linux_virtual_machine" "witness" {
  count                           = var.witness ? 1 : 0
  name                            = "${var.name}-witness"
  resource_group_name             = var.resource_group_name
  location                        = var.location
  zone                            = local.witness_zone
  size                            = var.witness_vm_size
  admin_username                  = var.admin_username
  disable_password_authentication = true
  network_interface_ids           = [azurerm_network_interface.witness[0].id]
  custom_data                     = base64encode(local.cloud_init["witness"])
  tags                            = merge(local.tags, { "handoff-node" = "witness" })
  # No identity: a witness never calls a cloud API.

  admin_ssh_key {
    username   = var.admin_username
    public_key = var.admin_ssh_public_key
  }

  os_disk {
    caching              = "ReadWrite"
    storage_account_type = "Standard_LRS"
  }

  source_image_reference {
    publisher = var.image.publisher
    offer     = var.image.offer
    sku       = var.image.sku
    version   = var.image.version
  }

  lifecycle {
    ignore_changes = [custom_data]
  }
}

# Routes start at the first gateway; Handoff rewrites the next hop (and
# the table's fencing tags) from then on.
resource "azurerm_route" "routed" {
  for_each               = local.routes
  name                   = each.value.name
  resource_group_name    = each.value.resource_group_name
  route_table_name       = each.value.table
  address_prefix         = each.value.cidr
  next_hop_type          = "VirtualAppliance"
  next_hop_in_ip_address = local.gateway_ips[0]
  lifecycle {
    ignore_changes = [next_hop_in_ip_address]
  }
}
