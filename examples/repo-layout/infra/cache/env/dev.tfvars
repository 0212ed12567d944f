environment        = "dev"
name               = "platform-cache-dev"
node_type          = "cache.t4g.small"
replicas           = 0
subnet_group_name  = "platform-dev-cache"
security_group_ids = ["sg-0a1b2c3d4e5f60001"]
