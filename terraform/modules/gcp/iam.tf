# The gateways' service account holds two custom roles: exactly the
# permissions the gcp provider calls (local.handoff_permissions, generated
# from gcp.Permissions() into permissions.auto.tf.json), split so that
# what moves anything is granted on this fleet's resources only.
resource "google_service_account" "gateway" {
  project      = var.project
  account_id   = "${var.name}-gateway"
  display_name = "Handoff gateways (${var.name})"
}

locals {
  # Reads (get, list, operation polls) are granted on the project: list
  # calls and operations have no resource a condition could name.
  handoff_read_permissions = [for p in local.handoff_permissions : p if endswith(p, ".get") || endswith(p, ".list")]
  handoff_move_permissions = [for p in local.handoff_permissions : p if !(endswith(p, ".get") || endswith(p, ".list"))]

  # What the moves may touch: this fleet's forwarding rules, its VMs and
  # their target instances (named "<name>-<node>"), the routes the
  # provider inserts ("handoff-..."), and the network they are in.
  handoff_move_condition = join(" || ", [
    "resource.name.startsWith(\"projects/${var.project}/regions/${var.region}/forwardingRules/${var.name}-\")",
    "resource.name.startsWith(\"projects/${var.project}/global/routes/handoff-\")",
    "resource.name == \"projects/${var.project}/global/networks/${local.network_name}\"",
    "(resource.name.startsWith(\"projects/${var.project}/zones/\") && (resource.name.extract(\"/instances/{name}\").startsWith(\"${var.name}-\") || resource.name.extract(\"/targetInstances/{name}\").startsWith(\"${var.name}-\")))",
  ])
}

resource "google_project_iam_custom_role" "handoff_read" {
  project     = var.project
  role_id     = "${replace(var.name, "-", "_")}_handoff_read"
  title       = "Handoff gateway reads (${var.name})"
  description = "Reads forwarding rules, instances and routes, and polls operations, for the Handoff gateways."
  stage       = "GA"
  permissions = local.handoff_read_permissions
}

resource "google_project_iam_custom_role" "handoff" {
  project     = var.project
  role_id     = "${replace(var.name, "-", "_")}_handoff"
  title       = "Handoff gateway failover (${var.name})"
  description = "Moves forwarding rules, alias IP ranges and routes to the active Handoff gateway."
  stage       = "GA"
  permissions = local.handoff_move_permissions
}

resource "google_project_iam_member" "gateway_read" {
  project = var.project
  role    = google_project_iam_custom_role.handoff_read.name
  member  = "serviceAccount:${google_service_account.gateway.email}"
}

resource "google_project_iam_member" "gateway" {
  project = var.project
  role    = google_project_iam_custom_role.handoff.name
  member  = "serviceAccount:${google_service_account.gateway.email}"
  condition {
    title       = "handoff-${var.name}-resources"
    description = "Only this Handoff fleet's forwarding rules, VMs, target instances, routes and network."
    expression  = local.handoff_move_condition
  }
}
