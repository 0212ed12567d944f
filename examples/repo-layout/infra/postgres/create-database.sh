#!/bin/sh
# Create or converge a PostgreSQL login role and a database owned by it.
#
# Run from the repository root after the checkout step:
#     sh infra/postgres/create-database.sh
#
# Environment:
#   PGHOST PGPORT PGUSER PGPASSWORD  an administrative login (superuser, or CREATEROLE + CREATEDB)
#   DB_NAME OWNER_ROLE               names to manage, ^[a-z_][a-z0-9_]*$, at most 63 characters
#   PG_MAINTENANCE_DB                database used for the admin session (default: postgres)
#   DRY_RUN                          "true": report what would change, touch nothing, write no outputs
#   GANTRY_OUTPUTS                   folder for the step's outputs (not needed with DRY_RUN=true)
#
# Outputs (files in $GANTRY_OUTPUTS, no trailing newline):
#   host port database username password
#
# Running it again is safe. An existing role keeps its name and gets a fresh password
# (consumers pick the new one up from the marketplace entry). An existing database owned
# by OWNER_ROLE is left as it is; one owned by anybody else is an error, never taken over.
# The password reaches psql through the environment (\getenv, psql 15 or newer), never
# through the command line or the SQL text.
set -eu
export LC_ALL=C

die() {
    printf 'create-database: %s\n' "$*" >&2
    exit 1
}

: "${PGHOST:?PGHOST is not set}"
: "${PGPORT:?PGPORT is not set}"
: "${PGUSER:?PGUSER is not set}"
: "${PGPASSWORD:?PGPASSWORD is not set}"
: "${DB_NAME:?DB_NAME is not set}"
: "${OWNER_ROLE:?OWNER_ROLE is not set}"
export PGHOST PGPORT PGUSER PGPASSWORD
MAINTENANCE_DB=${PG_MAINTENANCE_DB:-postgres}
DRY_RUN=${DRY_RUN:-false}
export PGCONNECT_TIMEOUT="${PGCONNECT_TIMEOUT:-10}"

# The pipeline validates the pattern already; check again so the script is safe on its own.
check_name() {
    case $2 in
        '' | [!a-z_]* | *[!a-z0-9_]*) die "$1 '$2' must match ^[a-z_][a-z0-9_]*\$" ;;
    esac
    [ "${#2}" -le 63 ] || die "$1 '$2' is longer than 63 characters"
}
check_name DB_NAME "$DB_NAME"
check_name OWNER_ROLE "$OWNER_ROLE"
[ "$OWNER_ROLE" != "$PGUSER" ] || die "OWNER_ROLE must not be the admin login '$PGUSER'"

# Admin session on the maintenance database. Statements come on stdin so that psql
# interpolates :'var' (quoted literal) and :"var" (quoted identifier); -c would not.
admin_psql() {
    psql -X -q -v ON_ERROR_STOP=1 -d "$MAINTENANCE_DB" "$@"
}

# Current state: role (absent / login / superuser) and database owner (empty if absent).
role_state=$(admin_psql -tA -v owner_role="$OWNER_ROLE" <<'SQL'
SELECT CASE WHEN rolsuper THEN 'superuser' ELSE 'present' END
  FROM pg_catalog.pg_roles
 WHERE rolname = :'owner_role';
SQL
)
db_owner=$(admin_psql -tA -v db_name="$DB_NAME" <<'SQL'
SELECT pg_catalog.pg_get_userbyid(datdba)
  FROM pg_catalog.pg_database
 WHERE datname = :'db_name';
SQL
)

[ "$role_state" != superuser ] ||
    die "role '$OWNER_ROLE' is a superuser; refusing to manage it"
if [ -n "$db_owner" ] && [ "$db_owner" != "$OWNER_ROLE" ]; then
    die "database '$DB_NAME' already exists and is owned by '$db_owner', not '$OWNER_ROLE'"
fi

if [ "$DRY_RUN" = true ]; then
    echo "dry run against $PGHOST:$PGPORT, nothing is changed"
    if [ -z "$role_state" ]; then
        echo "would create login role $OWNER_ROLE"
    else
        echo "would rotate the password of existing role $OWNER_ROLE"
    fi
    if [ -z "$db_owner" ]; then
        echo "would create database $DB_NAME owned by $OWNER_ROLE"
    else
        echo "database $DB_NAME exists and is owned by $OWNER_ROLE: no change"
    fi
    exit 0
fi

: "${GANTRY_OUTPUTS:?GANTRY_OUTPUTS is not set}"
[ -d "$GANTRY_OUTPUTS" ] || die "GANTRY_OUTPUTS '$GANTRY_OUTPUTS' is not a directory"

# 144 random bits as 36 hex characters: safe in any connection string without escaping.
ROLE_PASSWORD=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
[ "${#ROLE_PASSWORD}" -eq 36 ] || die "could not generate a password"
export ROLE_PASSWORD

if [ -z "$role_state" ]; then
    echo "creating login role $OWNER_ROLE"
    admin_psql -v owner_role="$OWNER_ROLE" <<'SQL'
\getenv role_password ROLE_PASSWORD
CREATE ROLE :"owner_role" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'role_password';
SQL
else
    echo "role $OWNER_ROLE exists: setting a new password"
    admin_psql -v owner_role="$OWNER_ROLE" <<'SQL'
\getenv role_password ROLE_PASSWORD
ALTER ROLE :"owner_role" WITH LOGIN PASSWORD :'role_password';
SQL
fi

if [ -z "$db_owner" ]; then
    echo "creating database $DB_NAME owned by $OWNER_ROLE"
    createdb --maintenance-db="$MAINTENANCE_DB" --owner="$OWNER_ROLE" "$DB_NAME"
else
    echo "database $DB_NAME exists and is owned by $OWNER_ROLE"
fi

# Only the owner (and superusers) may connect; applied on every run so it converges.
admin_psql -v db_name="$DB_NAME" -v owner_role="$OWNER_ROLE" <<'SQL'
REVOKE CONNECT, TEMPORARY ON DATABASE :"db_name" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"db_name" TO :"owner_role";
SQL

umask 077
write_output() {
    printf '%s' "$2" >"$GANTRY_OUTPUTS/$1"
}
write_output host "$PGHOST"
write_output port "$PGPORT"
write_output database "$DB_NAME"
write_output username "$OWNER_ROLE"
write_output password "$ROLE_PASSWORD"
echo "database $DB_NAME is ready for role $OWNER_ROLE on $PGHOST:$PGPORT"
