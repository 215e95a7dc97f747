#!/usr/bin/env bash
# Example in-use check for "poolmgr recycle", run as root before a lease is
# ended. Configure it as
#
#   recycle:
#     in_use_command: [/usr/libexec/poolmgr/account-in-use]
#
# poolmgr appends the account name as the last argument and describes the
# lease in POOLMGR_ACCOUNT, POOLMGR_UID, POOLMGR_POOL, POOLMGR_DN,
# POOLMGR_LEASE_ID, POOLMGR_LAST_USE and POOLMGR_REASON.
#
# Exit status: 0 the account is in use (poolmgr postpones recycling it); 1
# it is not; anything else is a failed check, which poolmgr reports and
# treats as in use. The account counts as in use while it has a process on
# this host, or a queued or running job in a batch system whose client is
# installed here: Slurm (squeue), HTCondor (condor_q), PBS/Torque (qselect).
# A client that is installed but fails makes the check fail: better to wait
# a day than to wipe an account under a running job. Run it on the host
# that sees the batch system; with processes on worker nodes only, the batch
# system's view is what counts.
set -uo pipefail

fail() {
    echo "account-in-use: $*" >&2
    exit 2
}

in_use() {
    echo "account-in-use: $account is in use: $*"
    exit 0
}

[ $# -ge 1 ] || fail "usage: $0 ACCOUNT"
account="${!#}"
[[ "$account" =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || fail "bad account name '$account'"
entry="$(getent passwd "$account")" || fail "unknown account '$account'"
IFS=: read -r _ _ uid _ <<<"$entry"
if [ -n "${POOLMGR_UID:-}" ] && [ "$uid" != "$POOLMGR_UID" ]; then
    fail "uid $uid of $account is not POOLMGR_UID"
fi

# Processes on this host. pgrep: 0 found, 1 none, anything else an error.
pgrep -U "$uid" >/dev/null
case $? in
    0) in_use "processes on $(hostname)" ;;
    1) ;;
    *) fail "pgrep failed for uid $uid" ;;
esac

# Batch jobs, in each batch system whose client is installed.
jobs_of() {
    local what="$1" output
    shift
    command -v "$1" >/dev/null || return 0
    output="$("$@" 2>&1)" || fail "$what query failed: ${output:0:200}"
    [ -z "$output" ] || in_use "$what jobs"
}
jobs_of Slurm squeue --noheader --user="$account" --format=%i
jobs_of HTCondor condor_q -allusers -constraint "Owner == \"$account\"" -af ClusterId
jobs_of PBS qselect -u "$account"

exit 1
