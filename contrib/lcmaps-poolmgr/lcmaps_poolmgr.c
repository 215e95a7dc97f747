/*
 * lcmaps_poolmgr: an LCMAPS plugin that asks the poolmgr service for the
 * pool account of a DN and its FQANs.
 *
 * lcmaps.db arguments:
 *   -socket PATH      the service's Unix socket (default /run/poolmgr/poolmgr.sock)
 *   -timeout SECONDS  total time for connect, send and reply (default 10)
 *
 * In run mode the plugin sends MAP (the service creates a lease if needed);
 * in verify mode it sends VERIFY (the service only confirms an existing
 * lease). The reply's uid, primary gid, secondary gids and lease key go into
 * the LCMAPS credential store as UID, PRI_GID, SEC_GID and POOL_INDEX. Every
 * error fails closed with LCMAPS_MOD_FAIL so that lcmaps.db can fall back.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <syslog.h>

#include <lcmaps/lcmaps_arguments.h>
#include <lcmaps/lcmaps_cred_data.h>
#include <lcmaps/lcmaps_modules.h>

#include "poolmgr_client.h"
#include "poolmgr_proto.h"

#define PLUGIN_NAME "lcmaps_poolmgr"
#define DEFAULT_SOCKET "/run/poolmgr/poolmgr.sock"
#define DEFAULT_TIMEOUT_MS 10000L

#define PM_EXPORT __attribute__((visibility("default")))

/* Debian's LCMAPS packages ship no header with these prototypes. */
PM_EXPORT int plugin_initialize(int argc, char **argv);
PM_EXPORT int plugin_introspect(int *argc, lcmaps_argument_t **argv);
PM_EXPORT int plugin_run(int argc, lcmaps_argument_t *argv);
PM_EXPORT int plugin_verify(int argc, lcmaps_argument_t *argv);
PM_EXPORT int plugin_terminate(void);

typedef enum { MODE_MAP, MODE_VERIFY } pm_mode_t;

/* Set once by plugin_initialize and only read afterwards. */
static char socket_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static long timeout_ms = DEFAULT_TIMEOUT_MS;

/* Everything one call needs; on the heap to keep callers' stacks small. */
typedef struct pm_call_s {
    char request[PM_LINE_MAX + 1];
    char reply[PM_LINE_MAX + 1];
    char reason[PM_REASON_MAX];
    char dn_shown[PM_REASON_MAX];
    pm_mapping_t mapping;
} pm_call_t;

static int set_socket_path(const char *path)
{
    if (path[0] != '/') {
        lcmaps_log(LOG_ERR, "%s: -socket must be an absolute path, got '%s'\n",
                   PLUGIN_NAME, path);
        return -1;
    }
    if (strlen(path) >= sizeof(socket_path)) {
        lcmaps_log(LOG_ERR, "%s: -socket path is longer than %zu bytes: '%s'\n",
                   PLUGIN_NAME, sizeof(socket_path) - 1, path);
        return -1;
    }
    strcpy(socket_path, path);
    return 0;
}

static int set_timeout(const char *text)
{
    long millis;

    if (pm_parse_timeout(text, &millis) != 0) {
        lcmaps_log(LOG_ERR,
                   "%s: -timeout must be a number of seconds above 0 and at "
                   "most %ld, got '%s'\n",
                   PLUGIN_NAME, PM_TIMEOUT_MAX_MS / 1000, text);
        return -1;
    }
    timeout_ms = millis;
    return 0;
}

static int parse_option(const char *name, const char *value)
{
    if (strcmp(name, "-socket") == 0)
        return set_socket_path(value);
    if (strcmp(name, "-timeout") == 0)
        return set_timeout(value);
    lcmaps_log(LOG_ERR, "%s: unknown argument '%s' (known: -socket, -timeout)\n",
               PLUGIN_NAME, name);
    return -1;
}

int plugin_initialize(int argc, char **argv)
{
    int i;

    strcpy(socket_path, DEFAULT_SOCKET);
    timeout_ms = DEFAULT_TIMEOUT_MS;

    for (i = 1; i < argc; i += 2) {
        if (i + 1 >= argc) {
            lcmaps_log(LOG_ERR, "%s: argument '%s' needs a value\n", PLUGIN_NAME,
                       argv[i]);
            return LCMAPS_MOD_FAIL;
        }
        if (parse_option(argv[i], argv[i + 1]) != 0)
            return LCMAPS_MOD_FAIL;
    }

    lcmaps_log(LOG_DEBUG, "%s: socket %s, timeout %ld ms\n", PLUGIN_NAME,
               socket_path, timeout_ms);
    return LCMAPS_MOD_SUCCESS;
}

int plugin_introspect(int *argc, lcmaps_argument_t **argv)
{
    static lcmaps_argument_t args[] = {
        { "user_dn", "char *", 0, NULL },
        { "fqan_list", "char **", 0, NULL },
        { "nfqan", "int", 0, NULL },
        { "requested_username", "char *", 0, NULL },
        { NULL, NULL, -1, NULL },
    };

    *argv = args;
    *argc = lcmaps_cntArgs(args);
    return LCMAPS_MOD_SUCCESS;
}

/* The DN an earlier plugin registered, else the caller's user_dn. */
static const char *find_dn(int argc, lcmaps_argument_t *argv)
{
    int count = 0;
    char **stored = getCredentialData(DN, &count);
    char **given;

    if (stored != NULL && count > 0 && stored[0] != NULL)
        return stored[0];

    given = lcmaps_getArgValue("user_dn", "char *", argc, argv);
    if (given == NULL || *given == NULL)
        return NULL;
    /* Later plugins in the policy look for the DN in the store. */
    addCredentialData(DN, given);
    return *given;
}

static void find_fqans(int argc, lcmaps_argument_t *argv, char ***fqans,
                       int *nfqan)
{
    char ***list = lcmaps_getArgValue("fqan_list", "char **", argc, argv);
    int *count = lcmaps_getArgValue("nfqan", "int", argc, argv);

    /* LCMAPS reports "no FQANs" as nfqan -1 as well as 0. */
    *fqans = NULL;
    *nfqan = 0;
    if (list != NULL && count != NULL && *count > 0) {
        *fqans = *list;
        *nfqan = *count;
    }
}

/* A caller that asks for one account (gsissh) must get exactly that one. */
static int check_requested(int argc, lcmaps_argument_t *argv, pm_call_t *call)
{
    char **wanted = lcmaps_getArgValue("requested_username", "char *", argc, argv);
    char wanted_shown[PM_ACCOUNT_MAX];

    if (wanted == NULL || *wanted == NULL || (*wanted)[0] == '\0')
        return 0;
    if (strcmp(*wanted, call->mapping.account) == 0)
        return 0;
    pm_sanitize(*wanted, wanted_shown, sizeof(wanted_shown));
    lcmaps_log(LOG_NOTICE,
               "%s: the service chose account %s but the caller requested "
               "'%s' for DN '%s'\n",
               PLUGIN_NAME, call->mapping.account, wanted_shown, call->dn_shown);
    return -1;
}

static int register_mapping(const pm_mapping_t *m)
{
    char *lease = (char *)m->lease_key;
    int failed = 0;
    size_t i;

    failed |= addCredentialData(UID, (void *)&m->uid);
    failed |= addCredentialData(PRI_GID, (void *)&m->gid);
    for (i = 0; i < m->nsgids; i++)
        failed |= addCredentialData(SEC_GID, (void *)&m->sgids[i]);
    failed |= addCredentialData(POOL_INDEX, &lease);
    if (failed) {
        lcmaps_log(LOG_ERR, "%s: could not store the mapping in the LCMAPS "
                            "credential store\n", PLUGIN_NAME);
        return -1;
    }
    return 0;
}

static void log_success(pm_mode_t mode, const pm_call_t *call)
{
    char lease_shown[PM_REASON_MAX];

    pm_sanitize(call->mapping.lease_key, lease_shown, sizeof(lease_shown));
    lcmaps_log(LOG_INFO,
               "%s: %s DN '%s' to account %s (uid %lu, gid %lu, %zu secondary "
               "gids, pool index '%s')\n",
               PLUGIN_NAME, mode == MODE_MAP ? "mapped" : "verified",
               call->dn_shown, call->mapping.account,
               (unsigned long)call->mapping.uid,
               (unsigned long)call->mapping.gid, call->mapping.nsgids,
               lease_shown);
}

/* Ask the service; on failure, log why and return -1. */
static int ask_service(pm_mode_t mode, const char *dn, char **fqans, int nfqan,
                       pm_call_t *call)
{
    const char *verb = mode == MODE_MAP ? "MAP" : "VERIFY";
    size_t len = 0;
    int rc;

    if (pm_build_request(call->request, sizeof(call->request), &len, verb, dn,
                         fqans, nfqan, call->reason, sizeof(call->reason)) != 0) {
        lcmaps_log(LOG_ERR, "%s: %s not sent for DN '%s': %s\n", PLUGIN_NAME,
                   verb, call->dn_shown, call->reason);
        return -1;
    }
    if (pm_exchange(socket_path, timeout_ms, call->request, len, call->reply,
                    sizeof(call->reply), call->reason,
                    sizeof(call->reason)) != 0) {
        lcmaps_log(LOG_ERR, "%s: %s failed for DN '%s': %s\n", PLUGIN_NAME, verb,
                   call->dn_shown, call->reason);
        return -1;
    }

    rc = pm_parse_reply(call->reply, &call->mapping, call->reason,
                        sizeof(call->reason));
    if (rc != 0) {
        /* A refusal by the service is routine; a bad reply is not. */
        lcmaps_log(rc == PM_REPLY_REFUSED ? LOG_NOTICE : LOG_ERR,
                   "%s: %s failed for DN '%s': %s\n", PLUGIN_NAME, verb,
                   call->dn_shown, call->reason);
        return -1;
    }
    return 0;
}

static int run_or_verify(pm_mode_t mode, int argc, lcmaps_argument_t *argv)
{
    pm_call_t *call = calloc(1, sizeof(*call));
    const char *dn;
    char **fqans;
    int nfqan;
    int ok;

    if (call == NULL) {
        lcmaps_log(LOG_ERR, "%s: out of memory\n", PLUGIN_NAME);
        return LCMAPS_MOD_FAIL;
    }

    dn = find_dn(argc, argv);
    pm_sanitize(dn != NULL ? dn : "", call->dn_shown, sizeof(call->dn_shown));
    find_fqans(argc, argv, &fqans, &nfqan);

    ok = ask_service(mode, dn, fqans, nfqan, call) == 0
         && check_requested(argc, argv, call) == 0
         && register_mapping(&call->mapping) == 0;
    if (ok)
        log_success(mode, call);

    free(call);
    return ok ? LCMAPS_MOD_SUCCESS : LCMAPS_MOD_FAIL;
}

int plugin_run(int argc, lcmaps_argument_t *argv)
{
    return run_or_verify(MODE_MAP, argc, argv);
}

int plugin_verify(int argc, lcmaps_argument_t *argv)
{
    return run_or_verify(MODE_VERIFY, argc, argv);
}

int plugin_terminate(void)
{
    return LCMAPS_MOD_SUCCESS;
}
