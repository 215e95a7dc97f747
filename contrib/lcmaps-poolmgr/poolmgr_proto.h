/*
 * The poolmgr line protocol: building requests and checking replies.
 *
 * Pure string handling with no I/O and no LCMAPS calls, so that every rule
 * about what the plugin accepts from the service sits in one place.
 */
#ifndef POOLMGR_PROTO_H
#define POOLMGR_PROTO_H

#include <stddef.h>
#include <sys/types.h>

/* One protocol line, including its "\n". */
#define PM_LINE_MAX 16384

/* Longest account name kept; real Unix account names are far shorter. */
#define PM_ACCOUNT_MAX 256

/* More secondary groups than any pool account has; a larger list is refused. */
#define PM_SGIDS_MAX 1024

/* Room for a one-line reason, already made safe for the log. */
#define PM_REASON_MAX 512

/* Longest timeout accepted, in milliseconds (one hour). */
#define PM_TIMEOUT_MAX_MS 3600000L

typedef struct pm_mapping_s {
    char account[PM_ACCOUNT_MAX];
    uid_t uid;
    gid_t gid;
    gid_t sgids[PM_SGIDS_MAX];
    size_t nsgids;
    char lease_key[PM_LINE_MAX];
} pm_mapping_t;

/*
 * Parse a timeout given in decimal seconds ("10", "2.5", "0.25") into
 * milliseconds, without the locale-dependent strtod. Returns 0, or -1 for
 * anything that is not a positive number of at most one hour.
 */
int pm_parse_timeout(const char *text, long *millis);

/*
 * Write "<verb>\t<dn>[\t<fqan>]...\n" into buf, percent-encoding each field.
 * Returns 0 and sets *len, or -1 with a reason when a field is missing or
 * the line would pass PM_LINE_MAX.
 */
int pm_build_request(char *buf, size_t cap, size_t *len, const char *verb,
                     const char *dn, char *const *fqans, int nfqan,
                     char *reason, size_t reason_cap);

/* What pm_parse_reply found. */
#define PM_REPLY_OK 0
#define PM_REPLY_REFUSED 1
#define PM_REPLY_MALFORMED (-1)

/*
 * Check one reply line (NUL-terminated, without its "\n"; decoded in place).
 * Returns PM_REPLY_OK and fills *out for a valid OK reply; PM_REPLY_REFUSED
 * for an ERR reply, with its code and message as the reason; otherwise
 * PM_REPLY_MALFORMED with a reason saying what is wrong with the reply.
 */
int pm_parse_reply(char *line, pm_mapping_t *out, char *reason,
                   size_t reason_cap);

/*
 * Copy text into out for logging: printable ASCII is kept, every other byte
 * becomes \xHH, and the result is cut at about cap bytes with "...".
 */
void pm_sanitize(const char *text, char *out, size_t cap);

#endif /* POOLMGR_PROTO_H */
