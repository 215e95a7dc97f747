/*
 * Benchmark caller of the real LCMAPS library: maps a list of DNs and
 * times every call.
 *
 *   lcmaps_load [-l LOGFILE] [-p POLICY]... [-P PASSES] [-T SECONDS]
 *               -i DNFILE [FQAN]...
 *
 * Initialises LCMAPS (lcmaps.db from LCMAPS_DIR and LCMAPS_DB_FILE), prints
 * "ready", waits for a line on stdin, then calls
 * lcmaps_run_with_fqans_and_return_account once per DN of DNFILE, PASSES
 * times over the file, until done or SECONDS have passed. Prints one JSON
 * line: every call's latency in ms, the failure count, and the start and
 * end times on CLOCK_MONOTONIC (comparable between processes).
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

typedef struct options_s {
    char *logfile;
    char *policies[MAX_POLICIES];
    int npols;
    long passes;
    double deadline;
    char *dn_file;
    char **fqans;
    int nfqan;
} options_t;

static void usage(void)
{
    fputs("usage: lcmaps_load [-l LOGFILE] [-p POLICY]... [-P PASSES] "
          "[-T SECONDS] -i DNFILE [FQAN]...\n",
          stderr);
    exit(2);
}

static double parse_number(const char *text)
{
    char *end;
    double value;

    errno = 0;
    value = strtod(text, &end);
    if (errno != 0 || end == text || *end != '\0' || value < 0)
        usage();
    return value;
}

static void parse_options(int argc, char **argv, options_t *opt)
{
    int c;

    memset(opt, 0, sizeof(*opt));
    opt->passes = 1;
    opt->deadline = 1e9;
    while ((c = getopt(argc, argv, "+l:p:P:T:i:")) != -1) {
        switch (c) {
        case 'l': opt->logfile = optarg; break;
        case 'p':
            if (opt->npols == MAX_POLICIES)
                usage();
            opt->policies[opt->npols++] = optarg;
            break;
        case 'P': opt->passes = (long)parse_number(optarg); break;
        case 'T': opt->deadline = parse_number(optarg); break;
        case 'i': opt->dn_file = optarg; break;
        default: usage();
        }
    }
    if (opt->dn_file == NULL || opt->passes < 1)
        usage();
    opt->fqans = argv + optind;
    opt->nfqan = argc - optind;
}

/* Read every non-empty line of path; the array ends with NULL. */
static char **read_lines(const char *path, long *count)
{
    FILE *fp = fopen(path, "r");
    char **lines = NULL;
    char *line = NULL;
    size_t size = 0;
    long n = 0;
    ssize_t len;

    if (fp == NULL) {
        fprintf(stderr, "lcmaps_load: cannot read %s\n", path);
        exit(2);
    }
    while ((len = getline(&line, &size, fp)) != -1) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (len == 0)
            continue;
        lines = realloc(lines, (size_t)(n + 2) * sizeof(char *));
        if (lines == NULL)
            exit(2);
        lines[n++] = strdup(line);
    }
    free(line);
    fclose(fp);
    if (lines == NULL)
        lines = calloc(1, sizeof(char *));
    lines[n] = NULL;
    *count = n;
    return lines;
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int map_one(const options_t *opt, char *dn)
{
    uid_t uid;
    gid_t *pgids, *sgids;
    int npgid = 0, nsgid = 0;
    char *poolindex = NULL;

    return lcmaps_run_with_fqans_and_return_account(
        dn, opt->fqans, opt->nfqan, NULL, opt->npols, (char **)opt->policies,
        &uid, &pgids, &npgid, &sgids, &nsgid, &poolindex);
}

int main(int argc, char **argv)
{
    options_t opt;
    char **dns;
    long ndn, calls = 0, failures = 0, pass, i;
    double *ms, start, stop, end;
    char go[16];

    parse_options(argc, argv, &opt);
    dns = read_lines(opt.dn_file, &ndn);
    ms = calloc((size_t)(ndn * opt.passes + 1), sizeof(double));
    if (ms == NULL)
        return 2;
    if (lcmaps_init_and_logfile(opt.logfile, NULL, 1) != 0) {
        fputs("lcmaps_load: lcmaps_init failed\n", stderr);
        return 2;
    }
    puts("ready");
    fflush(stdout);
    if (fgets(go, sizeof(go), stdin) == NULL)
        return 2;

    start = now_s();
    stop = start + opt.deadline;
    for (pass = 0; pass < opt.passes; pass++) {
        for (i = 0; i < ndn && now_s() < stop; i++) {
            double began = now_s();

            failures += map_one(&opt, dns[i]) != 0;
            ms[calls++] = (now_s() - began) * 1e3;
        }
    }
    end = now_s();

    printf("{\"ms\":[");
    for (i = 0; i < calls; i++)
        printf("%s%.4f", i ? "," : "", ms[i]);
    printf("],\"errors\":{\"FAIL\":%ld},\"start\":%.6f,\"end\":%.6f}\n", failures,
           start, end);
    fflush(stdout);
    lcmaps_term();
    return 0;
}
