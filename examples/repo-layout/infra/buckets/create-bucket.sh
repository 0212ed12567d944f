#!/bin/sh
# Create an S3 bucket if it does not exist, then (re)apply its settings: private, encrypted,
# versioned as asked, and the lifecycle rules rendered by render-lifecycle.sh.
#
# Environment:
#   BUCKET                 full bucket name (output of the bucket-name step)
#   LIFECYCLE_FILE         lifecycle JSON (output of the lifecycle step)
#   VERSIONING             "true" or "false"
#   AWS_REGION             region of the bucket
#   S3_ENDPOINT            empty for AWS; the URL of an S3-compatible service (MinIO, Ceph) otherwise
#   AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
#   GANTRY_OUTPUTS
#
# Outputs: bucket, region, endpoint, arn.
# Safe to run again: an existing bucket of ours is reconfigured; a name owned by another
# account (403 on HeadBucket) is an error.
set -eu
export LC_ALL=C

die() {
    printf 'create-bucket: %s\n' "$*" >&2
    exit 1
}

: "${BUCKET:?BUCKET is not set}"
: "${LIFECYCLE_FILE:?LIFECYCLE_FILE is not set}"
: "${VERSIONING:?VERSIONING is not set}"
: "${AWS_REGION:?AWS_REGION is not set}"
: "${GANTRY_OUTPUTS:?GANTRY_OUTPUTS is not set}"
S3_ENDPOINT=${S3_ENDPOINT:-}
export AWS_REGION AWS_DEFAULT_REGION="$AWS_REGION" AWS_PAGER=""
[ -r "$LIFECYCLE_FILE" ] || die "cannot read $LIFECYCLE_FILE"

s3api() {
    if [ -n "$S3_ENDPOINT" ]; then
        aws --endpoint-url "$S3_ENDPOINT" s3api "$@"
    else
        aws s3api "$@"
    fi
}

if err=$(s3api head-bucket --bucket "$BUCKET" 2>&1 >/dev/null); then
    echo "bucket $BUCKET exists: reapplying its settings"
else
    case $err in
        *404* | *"Not Found"* | *NoSuchBucket*) ;;
        *403* | *Forbidden*) die "bucket $BUCKET exists but belongs to someone else (or our key may not see it)" ;;
        *) die "cannot check bucket $BUCKET: $err" ;;
    esac
    echo "creating bucket $BUCKET in $AWS_REGION"
    if [ "$AWS_REGION" = us-east-1 ] || [ -n "$S3_ENDPOINT" ]; then
        s3api create-bucket --bucket "$BUCKET" >/dev/null
    else
        s3api create-bucket --bucket "$BUCKET" \
            --create-bucket-configuration "LocationConstraint=$AWS_REGION" >/dev/null
    fi
fi

if [ -z "$S3_ENDPOINT" ]; then
    # AWS only: S3-compatible servers keep buckets private by default and mostly lack this API.
    s3api put-public-access-block --bucket "$BUCKET" --public-access-block-configuration \
        BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true
fi
s3api put-bucket-encryption --bucket "$BUCKET" --server-side-encryption-configuration \
    '{"Rules":[{"ApplyServerSideEncryptionByDefault":{"SSEAlgorithm":"AES256"}}]}'
if [ "$VERSIONING" = true ]; then
    s3api put-bucket-versioning --bucket "$BUCKET" --versioning-configuration Status=Enabled
else
    s3api put-bucket-versioning --bucket "$BUCKET" --versioning-configuration Status=Suspended
fi
s3api put-bucket-lifecycle-configuration --bucket "$BUCKET" --lifecycle-configuration "file://$LIFECYCLE_FILE"

endpoint=${S3_ENDPOINT:-https://s3.$AWS_REGION.amazonaws.com}
printf '%s' "$BUCKET" >"$GANTRY_OUTPUTS/bucket"
printf '%s' "$AWS_REGION" >"$GANTRY_OUTPUTS/region"
printf '%s' "$endpoint" >"$GANTRY_OUTPUTS/endpoint"
printf '%s' "arn:aws:s3:::$BUCKET" >"$GANTRY_OUTPUTS/arn"
echo "bucket $BUCKET is ready at $endpoint"
