variable "project" {
  description = "GCP project of the fleet."
  type        = string
}

variable "region" {
  description = "Region of the fleet (zones -a, -b and -c are used)."
  type        = string
}

variable "subnetwork" {
  description = "Subnetwork of the nodes, in region."
  type        = string
}

variable "handoff_url" {
  description = "HTTPS URL of the linux/amd64 handoff binary."
  type        = string
}

variable "handoff_sha256" {
  description = "SHA-256 of that binary."
  type        = string
}
