#!/usr/bin/env bash
# The README's quick start: syncs the shipped VO cards into an embedded
# SQLite database and maps a few fictitious people. The database and its
# configuration go to $DEMO_DIR (default ./demo). Run from anywhere with
# poolmgr on PATH; `make demo` does both.
set -euo pipefail
top="$(cd "$(dirname "$0")/../.." && pwd)"
demo="${DEMO_DIR:-$top/demo}"

mkdir -p "$demo"
cat > "$demo/poolmgr.yaml" <<YAML
# Demo configuration written by contrib/examples/quickstart.sh.
database: sqlite:///$demo/poolmgr.db
vocards: $top/vocards
check_nss: false        # the demo accounts do not exist on this host
syslog:
  enabled: false
YAML
export POOLMGR_CONFIG="$demo/poolmgr.yaml"

run() {
    local shown="\$"
    for word in "$@"; do
        case "$word" in
            *[[:space:]\'\"\$\\]*) shown+=" '${word//\'/\'\\\'\'}'" ;;
            *) shown+=" $word" ;;
        esac
    done
    printf '%s\n' "$shown"
    "$@"
    echo
}

run poolmgr sync
run poolmgr map "/DC=org/DC=example/O=Example Grid/OU=People/CN=Jane Roe" --fqan /atlas
run poolmgr map "CN=Jane Roe,OU=People,O=Example Grid,DC=example,DC=org" \
    --fqan /atlas/Role=NULL/Capability=NULL
run poolmgr map "/DC=org/DC=example/O=Example Grid/OU=People/CN=Jane Roe/CN=proxy" \
    --fqan /atlas/Role=production --fqan /atlas
run poolmgr map "DC = org, DC = example, OU = People, CN = Robin Test + UID = rtest" \
    --fqan /cms/dcms --json
run poolmgr map "/DC=org/DC=example/OU=Robots/CN=pilotbot/host01.example.org" \
    --fqan /lhcb/Role=pilot
run poolmgr leases
run poolmgr show atlas001
