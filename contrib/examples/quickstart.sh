#!/usr/bin/env bash
# The README's quick start: syncs the shipped VO cards into an embedded
# SQLite database, maps a few fictitious people, and asks the mapping
# service (started on a socket in the demo directory, stopped at the end)
# for one of them. The database, its configuration, the socket and the
# service's log go to $DEMO_DIR (default ./demo). Run from anywhere with
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

# The mapping service, as the LCMAPS plugin talks to it; relative socket
# path, so that the transcript is the same wherever the demo lives.
cd "$demo"
rm -f poolmgr.sock
printf '%s\n' '$ poolmgr serve --socket poolmgr.sock --processes 1 &'
poolmgr serve --socket poolmgr.sock --processes 1 2> serve.log &
serve_pid=$!
trap 'kill "$serve_pid" 2> /dev/null || true' EXIT
for _ in $(seq 50); do
    poolmgr query --socket poolmgr.sock --ping > /dev/null 2>&1 && break
    sleep 0.2
done
echo
run poolmgr query --socket poolmgr.sock \
    "/DC=org/DC=example/O=Example Grid/OU=People/CN=Jane Roe" --fqan /atlas
kill "$serve_pid"
wait "$serve_pid" || true
trap - EXIT

cat <<TEXT
To run your own commands against this demo database:
  export POOLMGR_CONFIG=$demo/poolmgr.yaml
  export PATH=$(dirname "$(command -v poolmgr)"):\$PATH
TEXT
