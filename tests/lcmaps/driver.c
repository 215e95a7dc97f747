/*
 * Test driver: calls the real LCMAPS library and prints one JSON line.
 *
 *   driver [-l LOGFILE] [-p POLICY]... [-n COUNT] DN [FQAN]...
 *       lcmaps_run_with_fqans_and_return_account, COUNT times in this
 *       process; prints the last result and the latency median and p90.
 *   driver [-l LOGFILE] [-p POLICY]... -V PEMFILE -u UID [-g GID] [DN]
 *       lcmaps_run_and_verify_account_from_pem: LCMAPS verify mode, which
 *       takes the DN from the certificate in PEMFILE.
 *
 * LCMAPS finds lcmaps.db through LCMAPS_DIR and LCMAPS_DB_FILE. Exit status:
 * 0 when the (last) call succeeded, 1 when it failed, 2 for usage errors or
 * a failed lcmaps_init.
 */
#define _GNU_SOURCE

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <lcmaps/lcmaps_basic.h>

#define MAX_POLICIES 16
#define MAX_PEM (1024 * 1024)

typedef struct options_s {
    char *logfile;
    char *policies[MAX_POLICIES];
    int npols;
    long count;
    char *pem_file;
    uid_t uid;
    gid_t gid;
    int has_uid;
    int has_gid;
    char *dn;
    char **fqans;
    int nfqan;
} options_t;

typedef struct result_s {
    int rc;
    uid_t uid;
    gid_t *pgids;
    int npgid;
    gid_t *sgids;
    int nsgid;
    char *poolindex;
} result_t;

static void usage(void)
{
    fputs("usage: driver [-l LOGFILE] [-p POLICY]... [-n COUNT] DN [FQAN]...\n"
          "       driver [-l LOGFILE] [-p POLICY]... -V PEMFILE -u UID [-g GID] "
          "[DN]\n",
          stderr);
    exit(2);
}

static unsigned long parse_number(const char *text)
{
    char *end;
    unsigned long value;

    errno = 0;
    value = strtoul(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0')
        usage();
    return value;
}

static void parse_options(int argc, char **argv, options_t *opt)
{
    int c;

    memset(opt, 0, sizeof(*opt));
    opt->count = 1;
    while ((c = getopt(argc, argv, "+l:p:n:V:u:g:")) != -1) {
        switch (c) {
        case 'l': opt->logfile = optarg; break;
        case 'p':
            if (opt->npols == MAX_POLICIES)
                usage();
            opt->policies[opt->npols++] = optarg;
            break;
        case 'n': opt->count = (long)parse_number(optarg); break;
        case 'V': opt->pem_file = optarg; break;
        case 'u': opt->uid = (uid_t)parse_number(optarg); opt->has_uid = 1; break;
        case 'g': opt->gid = (gid_t)parse_number(optarg); opt->has_gid = 1; break;
        default: usage();
        }
    }
    if (opt->count < 1 || (opt->pem_file != NULL && !opt->has_uid))
        usage();
    if (optind < argc)
        opt->dn = argv[optind++];
    if (opt->dn == NULL && opt->pem_file == NULL)
        usage();
    opt->fqans = argv + optind;
    opt->nfqan = argc - optind;
}

static char *read_file(const char *path)
{
    FILE *fp = fopen(path, "r");
    char *buf = calloc(1, MAX_PEM + 1);
    size_t n;

    if (fp == NULL || buf == NULL) {
        fprintf(stderr, "driver: cannot read %s\n", path);
        exit(2);
    }
    n = fread(buf, 1, MAX_PEM, fp);
    buf[n] = '\0';
    fclose(fp);
    return buf;
}

static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a;
    double y = *(const double *)b;

    return (x > y) - (x < y);
}

/* JSON string; bytes outside printable ASCII become \u00XX (Latin-1). */
static void print_json_string(const char *text)
{
    putchar('"');
    for (; text != NULL && *text != '\0'; text++) {
        unsigned char c = (unsigned char)*text;

        if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\')
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

static void print_gids(const char *name, const gid_t *gids, int n)
{
    int i;

    printf(",\"%s\":[", name);
    for (i = 0; i < n; i++)
        printf("%s%lu", i ? "," : "", (unsigned long)gids[i]);
    putchar(']');
}

static void print_result(const result_t *r)
{
    printf("\"rc\":%d", r->rc);
    if (r->rc != 0)
        return;
    printf(",\"uid\":%lu", (unsigned long)r->uid);
    print_gids("pgids", r->pgids, r->npgid);
    print_gids("sgids", r->sgids, r->nsgid);
    fputs(",\"poolindex\":", stdout);
    if (r->poolindex == NULL)
        fputs("null", stdout);
    else
        print_json_string(r->poolindex);
}

static void map_once(const options_t *opt, result_t *r)
{
    memset(r, 0, sizeof(*r));
    r->rc = lcmaps_run_with_fqans_and_return_account(
        opt->dn, opt->fqans, opt->nfqan, NULL, opt->npols,
        (char **)opt->policies, &r->uid, &r->pgids, &r->npgid, &r->sgids,
        &r->nsgid, &r->poolindex);
}

static int run_map(const options_t *opt)
{
    double *ms = calloc((size_t)opt->count, sizeof(double));
    long failures = 0;
    result_t r;
    long i;

    if (ms == NULL)
        return 2;
    for (i = 0; i < opt->count; i++) {
        double start = now_ms();

        map_once(opt, &r);
        ms[i] = now_ms() - start;
        failures += r.rc != 0;
    }
    qsort(ms, (size_t)opt->count, sizeof(double), compare_doubles);

    printf("{\"mode\":\"map\",");
    print_result(&r);
    printf(",\"calls\":%ld,\"failures\":%ld,\"median_ms\":%.4f,\"p90_ms\":%.4f}\n",
           opt->count, failures, ms[opt->count / 2], ms[opt->count * 9 / 10]);
    free(ms);
    return r.rc == 0 ? 0 : 1;
}

static int run_verify(const options_t *opt)
{
    char *pem = read_file(opt->pem_file);
    gid_t gid = opt->gid;
    double start = now_ms();
    int rc;

    rc = lcmaps_run_and_verify_account_from_pem(
        opt->dn, pem, opt->uid, opt->has_gid ? &gid : NULL, opt->has_gid, NULL,
        0, NULL, NULL, opt->npols, (char **)opt->policies);
    printf("{\"mode\":\"verify\",\"rc\":%d,\"median_ms\":%.4f}\n", rc,
           now_ms() - start);
    free(pem);
    return rc == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    options_t opt;
    int status;

    parse_options(argc, argv, &opt);
    if (lcmaps_init_and_logfile(opt.logfile, NULL, 1) != 0) {
        printf("{\"mode\":\"init\",\"rc\":-1}\n");
        return 2;
    }

    status = opt.pem_file != NULL ? run_verify(&opt) : run_map(&opt);

    fflush(stdout);
    lcmaps_term();
    return status;
}
