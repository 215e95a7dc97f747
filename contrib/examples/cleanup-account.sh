#!/usr/bin/env bash
# Example cleanup command for "poolmgr recycle", run as root once a lease has
# ended and before the account goes back to the free pool. Configure it as
#
#   recycle:
#     cleanup_command: [/usr/libexec/poolmgr/cleanup-account, /scratch, /tmp, /var/tmp]
#
# The arguments before the account name are the scratch areas whose files of
# the account are deleted (default: /tmp /var/tmp). Give them there: poolmgr
# runs its commands with a clean environment (the system PATH, LC_ALL and the
# POOLMGR_* variables only), so nothing set in the environment of cron or
# systemd reaches this script. A scratch area left out keeps the previous
# holder's files for the next person who gets the account; one that does not
# exist on this host (a typo) fails the cleanup, so it is noticed.
#
# poolmgr appends the account name as the last argument and describes the
# ended lease in POOLMGR_ACCOUNT, POOLMGR_UID, POOLMGR_POOL, POOLMGR_DN,
# POOLMGR_LEASE_ID, POOLMGR_LAST_USE and POOLMGR_REASON. Exit status 0 means
# the account is clean; anything else keeps it out of service, and the next
# "poolmgr recycle" runs this again, so every step must be safe to repeat.
#
# Steps: kill the account's processes, remove its batch jobs (uncomment the
# line for your batch system), empty its home directory and delete its files
# in the scratch areas. To try it by hand: CLEANUP_DRY_RUN=1 POOLMGR_UID=<uid>
# cleanup-account [AREA...] ACCOUNT only prints what it would do.
set -euo pipefail

dry_run="${CLEANUP_DRY_RUN:-0}"

fail() {
    echo "cleanup-account: $*" >&2
    exit 2
}

run() {
    if [ "$dry_run" = 1 ]; then
        echo "would run: $*"
    else
        "$@"
    fi
}

[ $# -ge 1 ] || fail "usage: $0 [SCRATCH_AREA...] ACCOUNT"
account="${!#}"
[[ "$account" =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || fail "bad account name '$account'"
scratch=("${@:1:$#-1}")
[ ${#scratch[@]} -gt 0 ] || scratch=(/tmp /var/tmp)
for area in "${scratch[@]}"; do
    case "$area" in
        /) fail "refusing scratch area '/'" ;;
        /*) ;;
        *) fail "scratch area '$area' is not an absolute path" ;;
    esac
    [ -d "$area" ] || fail "scratch area '$area' is not a directory"
done

# Never touch anything unless the account is what poolmgr says it is.
entry="$(getent passwd "$account")" || fail "unknown account '$account'"
IFS=: read -r _ _ uid _ _ home _ <<<"$entry"
[ "$uid" = "${POOLMGR_UID:-}" ] || fail "uid $uid of $account is not POOLMGR_UID"
[ "$uid" -ge 1000 ] || fail "refusing to clean system account $account"
case "$home" in
    /|"") fail "refusing to empty home '$home' of $account" ;;
    /*) ;;
    *) fail "home '$home' of $account is not an absolute path" ;;
esac

# Processes: stop them first, so nothing writes while files are removed.
run pkill -KILL -U "$uid" || true
if [ "$dry_run" != 1 ]; then
    sleep 1
    ! pgrep -U "$uid" >/dev/null || fail "processes of $account survived SIGKILL"
fi

# Batch jobs: uncomment the one your site runs.
# run scancel --user="$account"
# run condor_rm "$account"
# run qdel -u "$account"

# Home: keep the directory (owner, mode, quota), remove what is inside.
if [ -d "$home" ]; then
    owner="$(stat -c %u "$home")"
    [ "$owner" = "$uid" ] || fail "home $home is not owned by $account"
    run find "$home" -xdev -mindepth 1 -delete
fi

# Scratch: every file the uid owns, on those file systems only.
for area in "${scratch[@]}"; do
    run find "$area" -xdev -depth -user "$uid" -delete
done

done_word=cleaned
[ "$dry_run" != 1 ] || done_word="would be cleaned (dry run)"
echo "cleanup-account: $account (uid $uid, lease ${POOLMGR_LEASE_ID:-?}) $done_word"
