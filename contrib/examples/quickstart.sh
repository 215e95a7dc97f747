#!/usr/bin/env bash
# The README's quick start: syncs the shipped VO cards into an embedded
# SQLite database under ./demo and maps a few fictitious people.
# Run from the repository root with poolmgr on PATH (make demo does both).
set -euo pipefail
cd "$(dirname "$0")/../.."

mkdir -p demo
cat > demo/poolmgr.yaml <<YAML
# Demo configuration written by contrib/examples/quickstart.sh.
database: sqlite:///$(pwd)/demo/poolmgr.db
vocards: $(pwd)/vocards
check_nss: false        # the demo accounts do not exist on this host
syslog:
  enabled: false
YAML
export POOLMGR_CONFIG="$PWD/demo/poolmgr.yaml"

run() { printf '$ %s\n' "$*"; "$@"; echo; }

run poolmgr sync
run poolmgr map "/DC=org/DC=example/O=Example Grid/OU=People/CN=Jane Roe" --fqan /atlas
run poolmgr map "CN=Jane Roe,OU=People,O=Example Grid,DC=example,DC=org" --fqan /atlas/Role=NULL/Capability=NULL
run poolmgr map "/DC=org/DC=example/O=Example Grid/OU=People/CN=Jane Roe/CN=proxy" --fqan /atlas/Role=production --fqan /atlas
run poolmgr map "DC = org, DC = example, OU = People, CN = Robin Test + UID = rtest" --fqan /cms/dcms --json
run poolmgr map "/DC=org/DC=example/OU=Robots/CN=pilotbot/host01.example.org" --fqan /lhcb/Role=pilot
run poolmgr pools
run poolmgr leases
