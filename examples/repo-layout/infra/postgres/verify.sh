#!/bin/sh
# Log in as the role that create-database.sh provisioned and check what the session sees.
#
# Run from the repository root:  sh infra/postgres/verify.sh
#
# Environment (the outputs of the create step, passed in through `env`):
#   PGHOST PGPORT PGDATABASE PGUSER PGPASSWORD
#
# Checks that the login works with the new password, that the session runs as PGUSER in
# PGDATABASE, and that the role can create a table there (inside a rolled-back transaction,
# so nothing is left behind).
set -eu
export LC_ALL=C

: "${PGHOST:?PGHOST is not set}"
: "${PGPORT:?PGPORT is not set}"
: "${PGDATABASE:?PGDATABASE is not set}"
: "${PGUSER:?PGUSER is not set}"
: "${PGPASSWORD:?PGPASSWORD is not set}"
export PGHOST PGPORT PGDATABASE PGUSER PGPASSWORD
export PGCONNECT_TIMEOUT="${PGCONNECT_TIMEOUT:-10}"
session=$(psql -X -q -v ON_ERROR_STOP=1 -tA -F ' ' -c 'SELECT current_user, current_database()') || {
    echo "verify: cannot log in as $PGUSER to $PGDATABASE on $PGHOST:$PGPORT" >&2
    exit 1
}
echo "connected: user and database = $session"
if [ "$session" != "$PGUSER $PGDATABASE" ]; then
    echo "verify: expected '$PGUSER $PGDATABASE', the session reports '$session'" >&2
    exit 1
fi

psql -X -q -v ON_ERROR_STOP=1 <<'SQL'
BEGIN;
CREATE TABLE gantry_verify_probe (id integer PRIMARY KEY);
INSERT INTO gantry_verify_probe VALUES (1);
ROLLBACK;
SQL
echo "role $PGUSER can create objects in $PGDATABASE"
