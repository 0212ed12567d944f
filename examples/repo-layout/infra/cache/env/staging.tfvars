environment        = "staging"
name               = "platform-cache-staging"
node_type          = "cache.t4g.medium"
replicas           = 1
subnet_group_name  = "platform-staging-cache"
security_group_ids = ["sg-0a1b2c3d4e5f60002"]
