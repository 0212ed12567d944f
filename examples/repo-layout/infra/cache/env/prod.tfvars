environment        = "prod"
name               = "platform-cache-prod"
node_type          = "cache.r7g.large"
replicas           = 2
subnet_group_name  = "platform-prod-cache"
security_group_ids = ["sg-0a1b2c3d4e5f60003", "sg-0a1b2c3d4e5f60004"]
