/*
 * One request and one reply over the poolmgr Unix socket, under a deadline.
 *
 * The plugin runs inside setuid programs and multi-threaded servers, so this
 * code starts no threads, installs no signal handlers, never lets a write
 * raise SIGPIPE, and never blocks past the deadline.
 */
#define _GNU_SOURCE

#include "poolmgr_client.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* Pause between connect attempts while the service's backlog is full. */
#define PM_BACKLOG_RETRY_MS 5

typedef struct pm_conn_s {
    int fd;
    long long deadline_ms;
    long timeout_ms;
    const char *path;
    char *reason;
    size_t reason_cap;
} pm_conn_t;

static void fail(pm_conn_t *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void fail(pm_conn_t *c, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(c->reason, c->reason_cap, fmt, ap);
    va_end(ap);
}

static void fail_errno(pm_conn_t *c, const char *what, int err)
{
    char buf[128];

    /* The GNU strerror_r is thread-safe and may ignore buf. */
    fail(c, "%s %s: %s", what, c->path, strerror_r(err, buf, sizeof(buf)));
}

static long long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int fail_timeout(pm_conn_t *c, const char *step)
{
    fail(c, "timed out after %ld ms while %s %s", c->timeout_ms, step,
         c->path);
    return -1;
}

/* Wait until fd is ready for events or the deadline passes. */
static int wait_for(pm_conn_t *c, short events, const char *step)
{
    for (;;) {
        long long left = c->deadline_ms - now_ms();
        struct pollfd pfd = { c->fd, events, 0 };
        int rc;

        if (left <= 0)
            return fail_timeout(c, step);
        rc = poll(&pfd, 1, (int)left);
        if (rc > 0)
            return 0;
        if (rc < 0 && errno != EINTR) {
            fail_errno(c, "poll failed on", errno);
            return -1;
        }
    }
}

/* Sleep a little, within the deadline, before trying connect() again. */
static int pause_before_retry(pm_conn_t *c)
{
    long long left = c->deadline_ms - now_ms();

    if (left <= 0)
        return fail_timeout(c, "connecting to");
    poll(NULL, 0, left < PM_BACKLOG_RETRY_MS ? (int)left : PM_BACKLOG_RETRY_MS);
    return 0;
}

static int finish_connect(pm_conn_t *c)
{
    int err = 0;
    socklen_t len = sizeof(err);

    if (wait_for(c, POLLOUT, "connecting to") != 0)
        return -1;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        err = errno;
    if (err != 0) {
        fail_errno(c, "cannot connect to", err);
        return -1;
    }
    return 0;
}

static int open_connection(pm_conn_t *c)
{
    struct sockaddr_un addr;
    size_t len = strlen(c->path);

    if (len >= sizeof(addr.sun_path)) {
        fail(c, "socket path is too long: %s", c->path);
        return -1;
    }
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, c->path, len + 1);

    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        fail_errno(c, "cannot create a socket for", errno);
        return -1;
    }

    for (;;) {
        if (connect(c->fd, (struct sockaddr *)&addr, sizeof(addr)) == 0)
            return 0;
        if (errno == EINPROGRESS || errno == EINTR)
            return finish_connect(c);
        /* A full listen backlog on a Unix socket: try again shortly. */
        if (errno == EAGAIN) {
            if (pause_before_retry(c) != 0)
                return -1;
            continue;
        }
        fail_errno(c, "cannot connect to", errno);
        return -1;
    }
}

static int send_all(pm_conn_t *c, const char *data, size_t len)
{
    size_t sent = 0;

    while (sent < len) {
        ssize_t n = send(c->fd, data + sent, len - sent, MSG_NOSIGNAL);

        if (n > 0) {
            sent += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_for(c, POLLOUT, "sending to") != 0)
                return -1;
            continue;
        }
        fail_errno(c, "cannot send the request to", n < 0 ? errno : EPIPE);
        return -1;
    }
    return 0;
}

/* Accept the line read so far if it holds its "\n" and no NUL byte. */
static int finish_line(pm_conn_t *c, char *reply, const char *newline)
{
    size_t len = (size_t)(newline - reply);

    if (memchr(reply, '\0', len) != NULL) {
        fail(c, "malformed reply: a NUL byte in the reply from %s", c->path);
        return -1;
    }
    reply[len] = '\0';
    return 0;
}

static int recv_line(pm_conn_t *c, char *reply, size_t cap)
{
    size_t got = 0;

    for (;;) {
        ssize_t n;
        char *newline;

        if (got + 1 >= cap) {
            fail(c, "malformed reply: longer than %zu bytes from %s", cap - 1,
                 c->path);
            return -1;
        }
        n = recv(c->fd, reply + got, cap - 1 - got, 0);
        if (n > 0) {
            newline = memchr(reply + got, '\n', (size_t)n);
            got += (size_t)n;
            if (newline != NULL)
                return finish_line(c, reply, newline);
            continue;
        }
        if (n == 0) {
            fail(c, "the service closed the connection without a complete "
                    "reply on %s", c->path);
            return -1;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (wait_for(c, POLLIN, "waiting for the reply on") != 0)
                return -1;
            continue;
        }
        fail_errno(c, "cannot read the reply from", errno);
        return -1;
    }
}

int pm_exchange(const char *socket_path, long timeout_ms, const char *request,
                size_t request_len, char *reply, size_t reply_cap,
                char *reason, size_t reason_cap)
{
    pm_conn_t c;
    int rc;

    c.fd = -1;
    c.timeout_ms = timeout_ms;
    c.deadline_ms = now_ms() + timeout_ms;
    c.path = socket_path;
    c.reason = reason;
    c.reason_cap = reason_cap;

    rc = open_connection(&c);
    if (rc == 0)
        rc = send_all(&c, request, request_len);
    if (rc == 0)
        rc = recv_line(&c, reply, reply_cap);

    if (c.fd >= 0)
        close(c.fd);
    return rc;
}
