#!/bin/sh
# Fast, offline checks for the infrastructure code, used by the `lint` template.
#
#   sh infra/bin/lint.sh CHECK DIR
#
# CHECK is one of:
#   tf-fmt     Terraform formatting of DIR. Uses `terraform fmt -check` when terraform is
#              installed, otherwise checks the whitespace rules terraform fmt enforces most
#              often (no tabs, no trailing blanks, no CRLF, two-space indents, final newline).
#   tf-vars    Every var.X used in DIR/*.tf is declared, every variable without a default is
#              set in each DIR/env/*.tfvars, and every tfvars key is declared.
#   sh-syntax  Every *.sh under DIR parses with `sh -n`, starts with #!/bin/sh and is
#              executable; shellcheck also runs when it is installed.
#
# Prints one line per problem as FILE:LINE: message and exits 1 if there was any.
set -eu
export LC_ALL=C

[ "$#" -eq 2 ] || {
    echo "usage: lint.sh tf-fmt|tf-vars|sh-syntax DIR" >&2
    exit 2
}
check=$1
dir=$2
[ -d "$dir" ] || {
    echo "lint: $dir is not a directory" >&2
    exit 2
}

problems=0
problem() {
    printf '%s\n' "$*"
    problems=$((problems + 1))
}

# Files below DIR with the given name pattern, skipping .terraform and .git.
files() {
    find "$dir" \( -name .terraform -o -name .git \) -prune -o -type f -name "$1" -print | sort
}

tf_fmt() {
    if command -v terraform >/dev/null 2>&1; then
        terraform fmt -check -diff -recursive "$dir" || problems=$((problems + 1))
        return
    fi
    echo "terraform is not installed: checking whitespace only"
    for f in $(files '*.tf') $(files '*.tfvars'); do
        out=$(awk '
            /\t/ { printf "%s:%d: tab character (indent with two spaces)\n", FILENAME, FNR }
            /\r$/ { printf "%s:%d: CRLF line ending\n", FILENAME, FNR }
            /[ \t]+\r?$/ { printf "%s:%d: trailing whitespace\n", FILENAME, FNR }
            {
                match($0, /^ */)
                if (RLENGTH % 2 == 1) printf "%s:%d: indent of %d spaces is not a multiple of two\n", FILENAME, FNR, RLENGTH
            }
        ' "$f")
        if [ -n "$out" ]; then
            problem "$out"
        fi
        if [ -s "$f" ] && [ "$(tail -c 1 "$f" | od -An -c | tr -d ' ')" != '\n' ]; then
            problem "$f: no newline at the end of the file"
        fi
    done
}

tf_vars() {
    tf_files=$(files '*.tf')
    [ -n "$tf_files" ] || {
        problem "$dir: no .tf files"
        return
    }
    declared=$(mktemp)
    required=$(mktemp)
    trap 'rm -f "$declared" "$required"' EXIT

    # Variable blocks: record the name, and whether a top-level `default` appears in it.
    # shellcheck disable=SC2086 # word splitting of the file list is intended
    awk -v declared="$declared" -v required="$required" '
        depth == 0 && /^variable[ \t]+"[^"]+"/ {
            split($0, parts, "\"")
            name = parts[2]; has_default = 0; depth = 0
        }
        name != "" {
            if (depth == 1 && $0 ~ /^[ \t]*default[ \t]*=/) has_default = 1
            line = $0
            opened = gsub(/\{/, "{", line); closed = gsub(/\}/, "}", line)
            depth += opened - closed
            if (depth == 0) {
                print name > declared
                if (!has_default) print name > required
                name = ""
            }
        }
    ' $tf_files

    # References outside comments.
    # shellcheck disable=SC2086
    awk -v declared="$declared" '
        BEGIN { while ((getline n < declared) > 0) known[n] = 1 }
        {
            line = $0
            sub(/(#|\/\/).*/, "", line)
            while (match(line, /var\.[A-Za-z_][A-Za-z0-9_-]*/)) {
                ref = substr(line, RSTART + 4, RLENGTH - 4)
                if (!(ref in known)) printf "%s:%d: var.%s is not declared\n", FILENAME, FNR, ref
                line = substr(line, RSTART + RLENGTH)
            }
        }
    ' $tf_files >"$declared.refs"
    if [ -s "$declared.refs" ]; then
        problem "$(cat "$declared.refs")"
    fi
    rm -f "$declared.refs"

    for tfvars in $(files '*.tfvars'); do
        out=$(awk -v declared="$declared" -v required="$required" '
            BEGIN {
                while ((getline n < declared) > 0) known[n] = 1
                while ((getline n < required) > 0) needed[n] = 1
            }
            /^[A-Za-z_][A-Za-z0-9_-]*[ \t]*=/ {
                key = $0; sub(/[ \t]*=.*/, "", key)
                set[key] = 1
                if (!(key in known)) printf "%s:%d: %s is not a declared variable\n", FILENAME, FNR, key
            }
            END {
                for (n in needed) if (!(n in set)) printf "%s: required variable %s is not set\n", FILENAME, n
            }
        ' "$tfvars")
        if [ -n "$out" ]; then
            problem "$out"
        fi
    done
}

sh_syntax() {
    scripts=$(files '*.sh')
    for f in $scripts; do
        sh -n "$f" || problem "$f: does not parse"
        [ "$(head -n 1 "$f")" = '#!/bin/sh' ] || problem "$f:1: the first line must be #!/bin/sh"
        [ -x "$f" ] || problem "$f: not executable (git update-index --chmod=+x $f)"
    done
    if [ -n "$scripts" ] && command -v shellcheck >/dev/null 2>&1; then
        # shellcheck disable=SC2086
        shellcheck -s sh $scripts || problems=$((problems + 1))
    fi
}

case $check in
    tf-fmt) tf_fmt ;;
    tf-vars) tf_vars ;;
    sh-syntax) sh_syntax ;;
    *)
        echo "lint: unknown check '$check' (tf-fmt, tf-vars, sh-syntax)" >&2
        exit 2
        ;;
esac

if [ "$problems" -gt 0 ]; then
    echo "lint $check $dir: failed" >&2
    exit 1
fi
echo "lint $check $dir: ok"
