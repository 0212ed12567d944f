resource "random_password" "auth_token" {
  length  = 48
  special = false
}

resource "aws_elasticache_replication_group" "cache" {
  replication_group_id = var.name
  description          = "Redis cache ${var.name} (${var.environment}), provisioned by Gantry"

  engine               = "redis"
  engine_version       = var.engine_version
  parameter_group_name = "default.redis7"
  node_type            = var.node_type
  num_cache_clusters   = var.replicas + 1
  port                 = 6379

  subnet_group_name  = var.subnet_group_name
  security_group_ids = var.security_group_ids

  automatic_failover_enabled = var.replicas > 0
  multi_az_enabled           = var.replicas > 0

  at_rest_encryption_enabled = true
  transit_encryption_enabled = true
  auth_token                 = random_password.auth_token.result

  snapshot_retention_limit = var.environment == "prod" ? 7 : 0
  apply_immediately        = var.environment != "prod"
}
