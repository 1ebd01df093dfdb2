variable "subscription_id" {
  description = "Azure subscription of the fleet."
  type        = string
}

variable "resource_group_name" {
  description = "Existing resource group of the fleet."
  type        = string
}

variable "location" {
  description = "Azure region of the fleet."
  type        = string
}

variable "subnet_id" {
  description = "ARM ID of the nodes' subnet."
  type        = string
}

variable "route_tables" {
  description = "Route tables that send the clients' pool to the active gateway."
  type = list(object({
    resource_group_name = string
    name                = string
  }))
  default = []
}

variable "handoff_url" {
  description = "HTTPS URL of the linux/amd64 handoff binary."
  type        = string
}

variable "handoff_sha256" {
  description = "SHA-256 of that binary."
  type        = string
}
