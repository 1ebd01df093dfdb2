# The gateways' service account holds one custom role: exactly the
# permissions the gcp provider calls (local.handoff_permissions, generated
# from gcp.Permissions() into permissions.auto.tf.json).
resource "google_service_account" "gateway" {
  project      = var.project
  account_id   = "${var.name}-gateway"
  display_name = "Handoff gateways (${var.name})"
}

resource "google_project_iam_custom_role" "handoff" {
  project     = var.project
  role_id     = "${replace(var.name, "-", "_")}_handoff"
  title       = "Handoff gateway failover (${var.name})"
  description = "Moves forwarding rules, alias IP ranges and routes to the active Handoff gateway."
  stage       = "GA"
  permissions = local.handoff_permissions
}

resource "google_project_iam_member" "gateway" {
  project = var.project
  role    = google_project_iam_custom_role.handoff.name
  member  = "serviceAccount:${google_service_account.gateway.email}"
}
