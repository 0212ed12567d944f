#!/bin/sh
# terraform init + plan for one environment of the Redis cache.
#
# Run from the repository root:  sh infra/cache/plan.sh
#
# Environment:
#   ENVIRONMENT                                dev, staging or prod: selects env/$ENVIRONMENT.tfvars
#   TF_STATE_BUCKET                            S3 bucket that holds the Terraform state
#   AWS_REGION                                 region of the cache and of the state bucket
#   AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY    credentials, read by terraform itself
#   GANTRY_WORKSPACE                           the plan file is saved here for the apply step
#   GANTRY_OUTPUTS                             folder for the step's outputs
#
# Outputs: changes ("true" or "false"), summary (the "Plan: ..." line), plan_file.
set -eu

die() {
    printf 'plan: %s\n' "$*" >&2
    exit 1
}

: "${ENVIRONMENT:?ENVIRONMENT is not set}"
: "${TF_STATE_BUCKET:?TF_STATE_BUCKET is not set}"
: "${AWS_REGION:?AWS_REGION is not set}"
: "${GANTRY_WORKSPACE:?GANTRY_WORKSPACE is not set}"
: "${GANTRY_OUTPUTS:?GANTRY_OUTPUTS is not set}"
export TF_IN_AUTOMATION=1 TF_INPUT=0

tf_dir=infra/cache
var_file=env/$ENVIRONMENT.tfvars
[ -f "$tf_dir/$var_file" ] || die "no $tf_dir/$var_file for environment '$ENVIRONMENT'"
plan_file=$GANTRY_WORKSPACE/cache-$ENVIRONMENT.tfplan
log=$(mktemp)
trap 'rm -f "$log"' EXIT

terraform -chdir="$tf_dir" init -reconfigure -no-color \
    -backend-config="bucket=$TF_STATE_BUCKET" \
    -backend-config="key=cache/$ENVIRONMENT.tfstate" \
    -backend-config="region=$AWS_REGION"

# -detailed-exitcode: 0 = no changes, 1 = error, 2 = changes present.
set +e
terraform -chdir="$tf_dir" plan -no-color -lock-timeout=5m -detailed-exitcode \
    -var-file="$var_file" -out="$plan_file" >"$log" 2>&1
status=$?
set -e
cat "$log"
case $status in
    0) changes=false ;;
    2) changes=true ;;
    *) die "terraform plan failed (exit $status)" ;;
esac

summary=$(grep -E '^(Plan: |No changes\.)' "$log" | head -n 1 || true)
printf '%s' "$changes" >"$GANTRY_OUTPUTS/changes"
printf '%s' "${summary:-see the plan above}" >"$GANTRY_OUTPUTS/summary"
printf '%s' "$plan_file" >"$GANTRY_OUTPUTS/plan_file"
