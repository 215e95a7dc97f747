/*
 * The poolmgr line protocol: building requests and checking replies.
 */
#include "poolmgr_proto.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define PM_FIELDS_MAX 7

static void set_reason(char *reason, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_reason(char *reason, size_t cap, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(reason, cap, fmt, ap);
    va_end(ap);
}

void pm_sanitize(const char *text, char *out, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    size_t pos = 0;

    if (cap < 8) {
        if (cap > 0)
            out[0] = '\0';
        return;
    }
    for (; *text != '\0'; text++) {
        unsigned char c = (unsigned char)*text;

        /* Keep room for the longest escape plus "..." and the NUL. */
        if (pos + 4 + 4 > cap) {
            memcpy(out + pos, "...", 3);
            pos += 3;
            break;
        }
        if (c >= 0x20 && c < 0x7f && c != '\\') {
            out[pos++] = (char)c;
            continue;
        }
        out[pos++] = '\\';
        out[pos++] = 'x';
        out[pos++] = hex[c >> 4];
        out[pos++] = hex[c & 0x0f];
    }
    out[pos] = '\0';
}

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

int pm_parse_timeout(const char *text, long *millis)
{
    long whole = 0;
    long fraction = 0;
    long scale = 100;
    int digits = 0;

    if (text == NULL)
        return -1;
    for (; is_digit(*text); text++, digits++) {
        whole = whole * 10 + (*text - '0');
        if (whole > PM_TIMEOUT_MAX_MS / 1000)
            return -1;
    }
    if (*text == '.') {
        /* Digits past the millisecond are ignored. */
        for (text++; is_digit(*text); text++, digits++) {
            fraction += (*text - '0') * scale;
            scale /= 10;
        }
    }
    if (*text != '\0' || digits == 0)
        return -1;

    *millis = whole * 1000 + fraction;
    if (*millis < 1 || *millis > PM_TIMEOUT_MAX_MS)
        return -1;
    return 0;
}

/* Append one field, percent-encoding the bytes that would break the line. */
static int append_field(char *buf, size_t limit, size_t *pos, const char *field)
{
    for (; *field != '\0'; field++) {
        const char *piece = NULL;
        size_t n = 1;

        switch (*field) {
        case '%': piece = "%25"; break;
        case '\t': piece = "%09"; break;
        case '\n': piece = "%0A"; break;
        case '\r': piece = "%0D"; break;
        default: break;
        }
        if (piece != NULL)
            n = 3;
        if (*pos + n > limit)
            return -1;
        if (piece != NULL)
            memcpy(buf + *pos, piece, n);
        else
            buf[*pos] = *field;
        *pos += n;
    }
    return 0;
}

static int append_tab_field(char *buf, size_t limit, size_t *pos,
                            const char *field)
{
    if (*pos + 1 > limit)
        return -1;
    buf[(*pos)++] = '\t';
    return append_field(buf, limit, pos, field);
}

static int check_request_fields(const char *dn, char *const *fqans, int nfqan,
                                char *reason, size_t reason_cap)
{
    int i;

    if (dn == NULL || dn[0] == '\0') {
        set_reason(reason, reason_cap, "no user DN was given to the plugin");
        return -1;
    }
    if (nfqan < 0 || (nfqan > 0 && fqans == NULL)) {
        set_reason(reason, reason_cap, "the FQAN list is inconsistent (nfqan=%d)",
                   nfqan);
        return -1;
    }
    for (i = 0; i < nfqan; i++) {
        if (fqans[i] == NULL) {
            set_reason(reason, reason_cap, "FQAN number %d of %d is missing",
                       i + 1, nfqan);
            return -1;
        }
    }
    return 0;
}

int pm_build_request(char *buf, size_t cap, size_t *len, const char *verb,
                     const char *dn, char *const *fqans, int nfqan,
                     char *reason, size_t reason_cap)
{
    /* Leave room for the final "\n" and a NUL after it. */
    size_t limit = (cap - 1 < PM_LINE_MAX ? cap - 1 : PM_LINE_MAX) - 1;
    size_t pos = 0;
    int failed = 0;
    int i;

    if (check_request_fields(dn, fqans, nfqan, reason, reason_cap) != 0)
        return -1;

    failed |= append_field(buf, limit, &pos, verb);
    failed |= append_tab_field(buf, limit, &pos, dn);
    for (i = 0; i < nfqan && !failed; i++)
        failed |= append_tab_field(buf, limit, &pos, fqans[i]);
    if (failed) {
        set_reason(reason, reason_cap,
                   "the request would pass the protocol limit of %d bytes",
                   PM_LINE_MAX);
        return -1;
    }

    buf[pos++] = '\n';
    buf[pos] = '\0';
    *len = pos;
    return 0;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Undo the percent-encoding in place; a bad escape or an encoded NUL fails. */
static int decode_field(char *field)
{
    char *out = field;
    const char *in = field;

    while (*in != '\0') {
        int high;
        int low;

        if (*in != '%') {
            *out++ = *in++;
            continue;
        }
        high = hex_value(in[1]);
        low = high < 0 ? -1 : hex_value(in[2]);
        if (low < 0 || (high == 0 && low == 0))
            return -1;
        *out++ = (char)(high * 16 + low);
        in += 3;
    }
    *out = '\0';
    return 0;
}

/* Split on TAB in place; returns the number of fields, at most max. */
static size_t split_fields(char *line, char **fields, size_t max)
{
    size_t n = 0;

    fields[n++] = line;
    for (; *line != '\0'; line++) {
        if (*line != '\t')
            continue;
        if (n == max)
            return max + 1;
        *line = '\0';
        fields[n++] = line + 1;
    }
    return n;
}

/* A uid or gid: plain decimal, neither 0 (root) nor (id_t)-1. */
static int parse_id(const char *text, const char *what, unsigned long *out,
                    char *reason, size_t reason_cap)
{
    unsigned long long value = 0;
    const unsigned long long max = (unsigned long long)(uid_t)-1 - 1;
    const char *p = text;
    char shown[64];

    for (; is_digit(*p) && p - text < 11; p++)
        value = value * 10 + (unsigned long long)(*p - '0');
    if (p == text || *p != '\0' || value > max) {
        pm_sanitize(text, shown, sizeof(shown));
        set_reason(reason, reason_cap,
                   "malformed reply: %s '%s' is not a valid decimal id", what,
                   shown);
        return -1;
    }
    if (value == 0) {
        set_reason(reason, reason_cap, "refused reply: %s 0 (root)", what);
        return -1;
    }
    *out = (unsigned long)value;
    return 0;
}

static int parse_sgids(char *text, pm_mapping_t *out, char *reason,
                       size_t reason_cap)
{
    char *item = text;

    out->nsgids = 0;
    if (*text == '\0')
        return 0;
    for (;;) {
        char *comma = strchr(item, ',');
        unsigned long value;

        if (comma != NULL)
            *comma = '\0';
        if (parse_id(item, "secondary gid", &value, reason, reason_cap) != 0)
            return -1;
        if ((gid_t)value == out->gid) {
            set_reason(reason, reason_cap,
                       "malformed reply: the secondary gids repeat the primary "
                       "gid %lu",
                       value);
            return -1;
        }
        if (out->nsgids == PM_SGIDS_MAX) {
            set_reason(reason, reason_cap,
                       "malformed reply: more than %d secondary gids",
                       PM_SGIDS_MAX);
            return -1;
        }
        out->sgids[out->nsgids++] = (gid_t)value;
        if (comma == NULL)
            return 0;
        item = comma + 1;
    }
}

/* Printable text: no control bytes; spaces only where allowed. */
static int is_printable(const char *text, int allow_space)
{
    if (*text == '\0')
        return 0;
    for (; *text != '\0'; text++) {
        unsigned char c = (unsigned char)*text;

        if (c < 0x20 || c == 0x7f || (c == ' ' && !allow_space))
            return 0;
    }
    return 1;
}

static int parse_ok(char **fields, pm_mapping_t *out, char *reason,
                    size_t reason_cap)
{
    unsigned long value;
    int i;

    for (i = 1; i < 6; i++) {
        if (decode_field(fields[i]) != 0) {
            set_reason(reason, reason_cap,
                       "malformed reply: bad percent-encoding in field %d",
                       i + 1);
            return -1;
        }
    }
    if (!is_printable(fields[1], 0) || strlen(fields[1]) >= PM_ACCOUNT_MAX) {
        set_reason(reason, reason_cap, "malformed reply: bad account name");
        return -1;
    }
    strcpy(out->account, fields[1]);

    if (parse_id(fields[2], "uid", &value, reason, reason_cap) != 0)
        return -1;
    out->uid = (uid_t)value;
    if (parse_id(fields[3], "gid", &value, reason, reason_cap) != 0)
        return -1;
    out->gid = (gid_t)value;
    if (parse_sgids(fields[4], out, reason, reason_cap) != 0)
        return -1;

    if (!is_printable(fields[5], 1)) {
        set_reason(reason, reason_cap, "malformed reply: bad lease key");
        return -1;
    }
    strcpy(out->lease_key, fields[5]);
    return 0;
}

static int describe_err(char **fields, char *reason, size_t reason_cap)
{
    char code[64];
    char message[PM_REASON_MAX / 2];

    if (decode_field(fields[1]) != 0 || decode_field(fields[2]) != 0) {
        set_reason(reason, reason_cap,
                   "malformed reply: bad percent-encoding in an ERR reply");
        return PM_REPLY_MALFORMED;
    }
    pm_sanitize(fields[1], code, sizeof(code));
    pm_sanitize(fields[2], message, sizeof(message));
    set_reason(reason, reason_cap, "service refused: %s: %s", code, message);
    return PM_REPLY_REFUSED;
}

int pm_parse_reply(char *line, pm_mapping_t *out, char *reason,
                   size_t reason_cap)
{
    char shown[128];
    char *fields[PM_FIELDS_MAX];
    size_t n;

    pm_sanitize(line, shown, sizeof(shown));
    n = split_fields(line, fields, PM_FIELDS_MAX);

    if (strcmp(fields[0], "OK") == 0 && n == 6)
        return parse_ok(fields, out, reason, reason_cap) == 0
                   ? PM_REPLY_OK
                   : PM_REPLY_MALFORMED;
    if (strcmp(fields[0], "ERR") == 0 && n == 3)
        return describe_err(fields, reason, reason_cap);
    set_reason(reason, reason_cap, "malformed reply from service: '%s'", shown);
    return PM_REPLY_MALFORMED;
}
