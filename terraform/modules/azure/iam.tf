# The gateways' user-assigned identity holds one custom role: exactly the
# actions the azure provider calls (local.handoff_permissions, generated
# from azure.Permissions() into permissions.auto.tf.json), assigned on the
# resources it moves and nothing else: the public IP, the gateways' NICs,
# their subnet and the route tables.
resource "azurerm_user_assigned_identity" "gateway" {
  name                = "${var.name}-gateway"
  resource_group_name = var.resource_group_name
  location            = var.location
  tags                = local.tags
}

locals {
  route_table_ids = { for t in var.route_tables : "route-table ${t.resource_group_name}/${t.name}" =>
  "/subscriptions/${data.azurerm_client_config.current.subscription_id}/resourceGroups/${t.resource_group_name}/providers/Microsoft.Network/routeTables/${t.name}" }

  # Keyed by what they are (known at plan time); the IDs may not be yet.
  role_assignments = merge(
    var.create_public_ip ? { "public-ip" = azurerm_public_ip.vpn[0].id } : {},
    { for i, id in local.gateway_ids : "nic ${id}" => azurerm_network_interface.gateway[i].id },
    { "subnet" = var.subnet_id },
    local.route_table_ids,
    { for s in var.role_scopes : "extra ${s}" => s },
  )

  # Where the role may be assigned: every resource group holding one of
  # them (the role definition lists scopes, not resources).
  role_scopes = distinct(concat([data.azurerm_resource_group.fleet.id],
    [for t in var.route_tables : "/subscriptions/${data.azurerm_client_config.current.subscription_id}/resourceGroups/${t.resource_group_name}"],
    ["/subscriptions/${local.subnet_parts[2]}/resourceGroups/${local.subnet_parts[4]}"],
  var.role_scopes))
}

data "azurerm_client_config" "current" {}

resource "azurerm_role_definition" "handoff" {
  name        = "Handoff gateway failover (${var.name})"
  scope       = data.azurerm_resource_group.fleet.id
  description = "Moves route next hops and public IPs to the active Handoff gateway."
  permissions {
    actions     = local.handoff_permissions
    not_actions = []
  }
  assignable_scopes = local.role_scopes
}

resource "azurerm_role_assignment" "gateway" {
  for_each           = local.role_assignments
  scope              = each.value
  role_definition_id = azurerm_role_definition.handoff.role_definition_resource_id
  principal_id       = azurerm_user_assigned_identity.gateway.principal_id
  principal_type     = "ServicePrincipal"
}
