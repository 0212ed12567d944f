#!/bin/sh
# Work out the full bucket name and check it against the S3 naming rules before anything
# is created: <prefix>-<bucket>-<environment>, or <bucket>-<environment> without a prefix.
#
# Environment:  BUCKET_PREFIX (may be empty)  BUCKET  ENVIRONMENT  GANTRY_OUTPUTS
# Output:       bucket
set -eu
export LC_ALL=C

: "${BUCKET:?BUCKET is not set}"
: "${ENVIRONMENT:?ENVIRONMENT is not set}"
: "${GANTRY_OUTPUTS:?GANTRY_OUTPUTS is not set}"

name="${BUCKET_PREFIX:+$BUCKET_PREFIX-}$BUCKET-$ENVIRONMENT"

invalid() {
    printf 'bucket-name: "%s" is not a valid bucket name: %s\n' "$name" "$*" >&2
    exit 1
}
if [ "${#name}" -lt 3 ] || [ "${#name}" -gt 63 ]; then
    invalid "it must be 3 to 63 characters long"
fi
case $name in
    *[!a-z0-9.-]*) invalid "only lowercase letters, digits, dots and hyphens are allowed" ;;
    [!a-z0-9]* | *[!a-z0-9]) invalid "it must start and end with a letter or a digit" ;;
    *..* | *.-* | *-.*) invalid "dots may not be doubled or next to a hyphen" ;;
    xn--* | sthree-* | amzn-s3-demo-*) invalid "the prefix is reserved by S3" ;;
    *-s3alias | *--ol-s3 | *.mrap | *--x-s3) invalid "the suffix is reserved by S3" ;;
esac
if printf '%s\n' "$name" | grep -Eq '^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$'; then
    invalid "it must not look like an IP address"
fi

echo "bucket name: $name"
printf '%s' "$name" >"$GANTRY_OUTPUTS/bucket"
