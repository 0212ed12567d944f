terraform {
  required_version = ">= 1.10"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.60"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
  }

  # bucket, key and region come from `terraform init -backend-config=...` in plan.sh,
  # one state file per environment.
  backend "s3" {
    encrypt      = true
    use_lockfile = true
  }
}

provider "aws" {
  default_tags {
    tags = {
      managed-by  = "gantry"
      environment = var.environment
      team        = "platform"
    }
  }
}
