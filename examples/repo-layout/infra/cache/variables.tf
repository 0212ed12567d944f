variable "environment" {
  description = "Environment the cache belongs to (dev, staging or prod)."
  type        = string
}

variable "name" {
  description = "Replication group id: lowercase letters, digits and hyphens, at most 40 characters."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,38}[a-z0-9]$", var.name)) && !strcontains(var.name, "--")
    error_message = "The name must start with a letter, use only a-z, 0-9 and single hyphens, and be at most 40 characters."
  }
}

variable "node_type" {
  description = "ElastiCache node type."
  type        = string
  default     = "cache.t4g.small"
}

variable "replicas" {
  description = "Read replicas in addition to the primary node."
  type        = number
  default     = 1

  validation {
    condition     = var.replicas >= 0 && var.replicas <= 5
    error_message = "Between 0 and 5 replicas are supported."
  }
}

variable "engine_version" {
  description = "Redis OSS engine version."
  type        = string
  default     = "7.1"
}

variable "subnet_group_name" {
  description = "Existing ElastiCache subnet group of the environment's VPC."
  type        = string
}

variable "security_group_ids" {
  description = "Security groups that allow port 6379 from the application subnets."
  type        = list(string)
}
