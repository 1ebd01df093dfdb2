# The gateways' instance role: exactly the EC2 actions the aws provider
# calls (local.handoff_permissions, generated from aws.Permissions() into
# permissions.auto.tf.json; terraform_test.go checks both ways), each on
# the resources this module manages only.
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
  arn_prefix = "arn:${data.aws_partition.current.partition}:ec2:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}"

  # Describe* actions support no resource-level permissions.
  handoff_read_actions = [for a in local.handoff_permissions : a if startswith(a, "ec2:Describe")]
  # Each write action goes where it acts: the fleet's Elastic IP (by its
  # handoff:fleet tag), the gateways' interfaces (the VIP moves between
  # them), the route tables the fleet's routes are in. A new action the
  # provider calls is granted nowhere until it is placed here (the
  # permission check then fails, naming it).
  handoff_eip_actions   = [for a in local.handoff_permissions : a if contains(["ec2:AssociateAddress", "ec2:CreateTags"], a)]
  handoff_eni_actions   = [for a in local.handoff_permissions : a if contains(["ec2:AssignPrivateIpAddresses", "ec2:AssociateAddress"], a)]
  handoff_route_actions = [for a in local.handoff_permissions : a if contains(["ec2:ReplaceRoute", "ec2:CreateTags"], a)]

  gateway_eni_arns = [for eni in aws_instance.gateway[*].primary_network_interface_id : "${local.arn_prefix}:network-interface/${eni}"]
  route_table_arns = [for id in var.route_table_ids : "${local.arn_prefix}:route-table/${id}"]
}

data "aws_iam_policy_document" "handoff" {
  statement {
    sid       = "HandoffRead"
    effect    = "Allow"
    actions   = local.handoff_read_actions
    resources = ["*"]
  }
  # Associating the Elastic IP and writing its fencing tags: only an
  # Elastic IP of this fleet (the module tags it handoff:fleet = name).
  statement {
    sid       = "HandoffElasticIP"
    effect    = "Allow"
    actions   = local.handoff_eip_actions
    resources = ["${local.arn_prefix}:elastic-ip/*"]
    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/handoff:fleet"
      values   = [var.name]
    }
    # Only the fencing tags (handoff:term, handoff:node, handoff:eni,
    # handoff:route:<destination>), never another tag.
    condition {
      test     = "ForAllValues:StringLike"
      variable = "aws:TagKeys"
      values   = ["handoff:*"]
    }
  }
  # Moving the VIP (and the Elastic IP with it) onto a gateway's interface.
  statement {
    sid       = "HandoffGatewayInterfaces"
    effect    = "Allow"
    actions   = local.handoff_eni_actions
    resources = local.gateway_eni_arns
  }
  # Repointing the fleet's routes and writing their fencing tags.
  dynamic "statement" {
    for_each = length(var.route_table_ids) > 0 ? [1] : []
    content {
      sid       = "HandoffRouteTables"
      effect    = "Allow"
      actions   = local.handoff_route_actions
      resources = local.route_table_arns
      # Only the fencing tags (handoff:term, handoff:node, handoff:eni,
      # handoff:route:<destination>), never another tag.
      condition {
        test     = "ForAllValues:StringLike"
        variable = "aws:TagKeys"
        values   = ["handoff:*"]
      }
    }
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
