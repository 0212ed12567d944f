#!/bin/sh
# Render the bucket's lifecycle configuration from lifecycle.json.tmpl.
#
# Environment:  RETENTION_DAYS (1-3650)  GANTRY_WORKSPACE  GANTRY_OUTPUTS
# Output:       file (absolute path of the rendered JSON, inside the run's workspace)
#
# Old object versions are kept for at most 30 days, or for RETENTION_DAYS if that is shorter.
set -eu
export LC_ALL=C

: "${RETENTION_DAYS:?RETENTION_DAYS is not set}"
: "${GANTRY_WORKSPACE:?GANTRY_WORKSPACE is not set}"
: "${GANTRY_OUTPUTS:?GANTRY_OUTPUTS is not set}"

case $RETENTION_DAYS in
    '' | *[!0-9]* | 0*) echo "render-lifecycle: RETENTION_DAYS must be a positive integer, got '$RETENTION_DAYS'" >&2; exit 1 ;;
esac
[ "$RETENTION_DAYS" -le 3650 ] || { echo "render-lifecycle: RETENTION_DAYS is above 3650" >&2; exit 1; }
noncurrent_days=30
[ "$RETENTION_DAYS" -ge "$noncurrent_days" ] || noncurrent_days=$RETENTION_DAYS

template=infra/buckets/lifecycle.json.tmpl
out_dir=$GANTRY_WORKSPACE/bucket
out=$out_dir/lifecycle.json
mkdir -p "$out_dir"
sed -e "s/@RETENTION_DAYS@/$RETENTION_DAYS/g" -e "s/@NONCURRENT_DAYS@/$noncurrent_days/g" "$template" >"$out"
if grep -n '@[A-Z_]*@' "$out" >&2; then
    echo "render-lifecycle: $template has placeholders this script does not fill" >&2
    exit 1
fi

cat "$out"
printf '%s' "$out" >"$GANTRY_OUTPUTS/file"
