output "name" {
  description = "Replication group id."
  value       = aws_elasticache_replication_group.cache.id
}

output "primary_endpoint" {
  description = "Host name of the primary node (TLS)."
  value       = aws_elasticache_replication_group.cache.primary_endpoint_address
}

output "port" {
  description = "Port of the cache."
  value       = aws_elasticache_replication_group.cache.port
}

output "auth_token" {
  description = "AUTH token clients send after connecting."
  value       = random_password.auth_token.result
  sensitive   = true
}
