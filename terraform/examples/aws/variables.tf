variable "region" {
  description = "AWS region of the fleet."
  type        = string
}

variable "subnet_id" {
  description = "Subnet of the gateways."
  type        = string
}

variable "witness_subnet_id" {
  description = "Subnet of the witness, in another availability zone."
  type        = string
}

variable "route_table_ids" {
  description = "Route tables that send the clients' pool to the active gateway."
  type        = list(string)
}

variable "handoff_url" {
  description = "HTTPS URL of the linux/amd64 handoff binary."
  type        = string
}

variable "handoff_sha256" {
  description = "SHA-256 of that binary."
  type        = string
}
