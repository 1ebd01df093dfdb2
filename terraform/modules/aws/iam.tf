# The gateways' instance role: exactly the EC2 actions the aws provider
# calls (local.handoff_permissions, generated from aws.Permissions() into
# permissions.auto.tf.json; terraform_test.go checks both ways).
resource "aws_iam_role" "gateway" {
  name = "${var.name}-gateway"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ec2.${data.aws_partition.current.dns_suffix}" }
      Action    = "sts:AssumeRole"
    }]
  })
  tags = local.tags
}

locals {
  # Describe* actions support no resource-level permissions.
  handoff_read_actions  = [for a in local.handoff_permissions : a if startswith(a, "ec2:Describe")]
  handoff_write_actions = [for a in local.handoff_permissions : a if !startswith(a, "ec2:Describe")]
}

data "aws_iam_policy_document" "handoff" {
  statement {
    sid       = "HandoffRead"
    effect    = "Allow"
    actions   = local.handoff_read_actions
    resources = ["*"]
  }
  statement {
    sid     = "HandoffMove"
    effect  = "Allow"
    actions = local.handoff_write_actions
    # Interfaces, Elastic IPs, route tables (and the instances behind
    # them) of this account and region only.
    resources = ["arn:${data.aws_partition.current.partition}:ec2:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:*"]
  }
}

resource "aws_iam_role_policy" "handoff" {
  name   = "handoff-failover"
  role   = aws_iam_role.gateway.id
  policy = data.aws_iam_policy_document.handoff.json
}

resource "aws_iam_instance_profile" "gateway" {
  name = "${var.name}-gateway"
  role = aws_iam_role.gateway.name
  tags = local.tags
}
