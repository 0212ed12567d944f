#!/bin/sh
# Post a message to a chat incoming webhook (Slack, Mattermost and Rocket.Chat accept this shape).
#
# Environment:
#   WEBHOOK_URL  the incoming-webhook URL; it embeds a token, so it is a secret
#   MESSAGE      plain text, may span several lines
#
# The URL goes to curl through a config file on stdin, not the command line, so it does not
# show up in the process list. GANTRY_PIPELINE and GANTRY_RUN_ID, when set, are appended so
# the reader can find the run.
set -eu
export LC_ALL=C

: "${WEBHOOK_URL:?WEBHOOK_URL is not set}"
: "${MESSAGE:?MESSAGE is not set}"

text=$MESSAGE
if [ -n "${GANTRY_RUN_ID:-}" ]; then
    text="$text
(pipeline ${GANTRY_PIPELINE:-?}, run $GANTRY_RUN_ID)"
fi

# Encode stdin as one JSON string literal.
json_string() {
    awk '
        BEGIN { printf "\"" }
        {
            if (NR > 1) printf "\\n"
            out = ""
            for (i = 1; i <= length($0); i++) {
                c = substr($0, i, 1)
                if (c == "\\") out = out "\\\\"
                else if (c == "\"") out = out "\\\""
                else if (c == "\t") out = out "\\t"
                else if (c == "\r") out = out "\\r"
                else if (c ~ /[[:cntrl:]]/) out = out " "
                else out = out c
            }
            printf "%s", out
        }
        END { printf "\"" }
    '
}

payload=$(mktemp)
trap 'rm -f "$payload"' EXIT
printf '{"text":%s}\n' "$(printf '%s\n' "$text" | json_string)" >"$payload"

printf 'url = "%s"\n' "$WEBHOOK_URL" |
    curl --config - --fail --silent --show-error --max-time 20 \
        --header 'Content-Type: application/json' --data-binary "@$payload" --output /dev/null
echo "notification sent"
