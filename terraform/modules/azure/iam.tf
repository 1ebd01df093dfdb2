# The gateways' user-assigned identity holds one custom role: exactly the
# actions the azure provider calls (local.handoff_permissions, generated
# from azure.Permissions() into permissions.auto.tf.json).
resource "azurerm_user_assigned_identity" "gateway" {
  name                = "${var.name}-gateway"
  resource_group_name = var.resource_group_name
  location            = var.location
  tags                = local.tags
}

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
  for_each           = toset(local.role_scopes)
  scope              = each.value
  role_definition_id = azurerm_role_definition.handoff.role_definition_resource_id
  principal_id       = azurerm_user_assigned_identity.gateway.principal_id
  principal_type     = "ServicePrincipal"
}
