#!/bin/sh
# Compare the databases on a PostgreSQL server with the desired list in databases.txt.
#
# Run from the repository root:  sh infra/postgres/drift.sh
#
# Environment:
#   PGHOST PGPORT PGUSER PGPASSWORD  any login role: reading pg_database needs no privilege
#   ENVIRONMENT                      which lines of the desired list apply (dev, staging, prod)
#   DESIRED_FILE                     default: infra/postgres/databases.txt
#   IGNORE_DATABASES                 space-separated names never reported as unexpected
#                                    (default: postgres and the admin databases of managed services)
#   GANTRY_OUTPUTS                   folder for the step's outputs
#   GANTRY_WORKSPACE                 if set, the report is also kept in $GANTRY_WORKSPACE/drift/
#
# Outputs: status ("clean" or "drift"), drift_count, summary (a short multi-line report).
# The script exits 0 when it could compare, whatever it found; a later step decides
# whether drift fails the run. It exits non-zero only when it cannot compare at all.
set -eu
export LC_ALL=C

die() {
    printf 'drift: %s\n' "$*" >&2
    exit 1
}

: "${PGHOST:?PGHOST is not set}"
: "${PGPORT:?PGPORT is not set}"
: "${PGUSER:?PGUSER is not set}"
: "${PGPASSWORD:?PGPASSWORD is not set}"
: "${ENVIRONMENT:?ENVIRONMENT is not set}"
: "${GANTRY_OUTPUTS:?GANTRY_OUTPUTS is not set}"
export PGHOST PGPORT PGUSER PGPASSWORD
export PGCONNECT_TIMEOUT="${PGCONNECT_TIMEOUT:-10}"
DESIRED_FILE=${DESIRED_FILE:-infra/postgres/databases.txt}
IGNORE_DATABASES=${IGNORE_DATABASES:-postgres rdsadmin cloudsqladmin azure_maintenance azure_sys}
[ -r "$DESIRED_FILE" ] || die "cannot read $DESIRED_FILE"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tab=$(printf '\t')

# Desired state for this environment as "<database>\t<owner>".
awk -v env="$ENVIRONMENT" '
    /^[[:space:]]*(#|$)/ { next }
    NF != 3 {
        printf "%s:%d: expected <environment> <database> <owner role>\n", FILENAME, FNR > "/dev/stderr"
        bad = 1
        next
    }
    $1 == env { print $2 "\t" $3 }
    END { exit bad }
' "$DESIRED_FILE" >"$work/desired.unsorted" || die "$DESIRED_FILE has malformed lines"
sort -u "$work/desired.unsorted" >"$work/desired"

# Observed state, same shape. Templates cannot hold application data, so they are skipped.
psql -X -q -v ON_ERROR_STOP=1 -d "${PGDATABASE:-postgres}" -tA -F "$tab" -c '
    SELECT datname, pg_catalog.pg_get_userbyid(datdba)
      FROM pg_catalog.pg_database
     WHERE NOT datistemplate
     ORDER BY datname' >"$work/observed.all" || die "cannot list the databases on $PGHOST:$PGPORT"
awk -F '\t' -v ignore="$IGNORE_DATABASES" '
    BEGIN { n = split(ignore, names, " "); for (i = 1; i <= n; i++) skip[names[i]] = 1 }
    !($1 in skip)
' "$work/observed.all" | sort >"$work/observed"

# One line per difference. FILENAME, not NR == FNR, tells the files apart, so an empty
# desired list still works.
awk -F '\t' -v desired="$work/desired" '
    FILENAME == desired { want[$1] = $2; next }
    { have[$1] = $2 }
    END {
        for (db in want) {
            if (!(db in have))
                printf "missing     %s (owner %s)\n", db, want[db]
            else if (have[db] != want[db])
                printf "owner       %s: want %s, found %s\n", db, want[db], have[db]
        }
        for (db in have)
            if (!(db in want))
                printf "unexpected  %s (owner %s)\n", db, have[db]
    }
' "$work/desired" "$work/observed" | sort >"$work/differences"

count=$(wc -l <"$work/differences" | tr -d ' ')
checked=$(wc -l <"$work/desired" | tr -d ' ')
if [ "$count" -eq 0 ]; then
    status=clean
    summary="PostgreSQL $ENVIRONMENT ($PGHOST:$PGPORT): no drift, $checked database(s) match $DESIRED_FILE"
else
    status=drift
    summary="PostgreSQL $ENVIRONMENT ($PGHOST:$PGPORT): $count difference(s) from $DESIRED_FILE
$(cat "$work/differences")"
fi
printf '%s\n' "$summary"

if [ -n "${GANTRY_WORKSPACE:-}" ]; then
    mkdir -p "$GANTRY_WORKSPACE/drift"
    printf '%s\n' "$summary" >"$GANTRY_WORKSPACE/drift/postgres-$ENVIRONMENT.txt"
fi
printf '%s' "$status" >"$GANTRY_OUTPUTS/status"
printf '%s' "$count" >"$GANTRY_OUTPUTS/drift_count"
printf '%s' "$summary" >"$GANTRY_OUTPUTS/summary"
