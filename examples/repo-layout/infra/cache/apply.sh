#!/bin/sh
# Apply the plan saved by plan.sh and publish the cache's connection details as outputs.
#
# Run from the repository root:  sh infra/cache/apply.sh
#
# Environment:
#   PLAN_FILE                                  the plan_file output of the plan step
#   AWS_REGION AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
#   GANTRY_OUTPUTS                             folder for the step's outputs
#
# Outputs: name, host, port, auth_token (declared secret in the pipeline).
# Applying a saved plan fails if the state changed since the plan was made, so a stale
# plan never overwrites somebody else's change: run the pipeline again instead.
set -eu

: "${PLAN_FILE:?PLAN_FILE is not set}"
: "${GANTRY_OUTPUTS:?GANTRY_OUTPUTS is not set}"
[ -f "$PLAN_FILE" ] || {
    echo "apply: plan file $PLAN_FILE is missing (did the plan step run in this workspace?)" >&2
    exit 1
}
export TF_IN_AUTOMATION=1 TF_INPUT=0
tf_dir=infra/cache

terraform -chdir="$tf_dir" apply -no-color -lock-timeout=5m "$PLAN_FILE"

umask 077
# `output -raw` prints the bare value without a trailing newline.
terraform -chdir="$tf_dir" output -raw name >"$GANTRY_OUTPUTS/name"
terraform -chdir="$tf_dir" output -raw primary_endpoint >"$GANTRY_OUTPUTS/host"
terraform -chdir="$tf_dir" output -raw port >"$GANTRY_OUTPUTS/port"
terraform -chdir="$tf_dir" output -raw auth_token >"$GANTRY_OUTPUTS/auth_token"
echo "cache $(cat "$GANTRY_OUTPUTS/name") is available at $(cat "$GANTRY_OUTPUTS/host"):$(cat "$GANTRY_OUTPUTS/port")"
