/*
 * One request and one reply over the poolmgr Unix socket, under a deadline.
 */
#ifndef POOLMGR_CLIENT_H
#define POOLMGR_CLIENT_H

#include <stddef.h>

/*
 * Connect to socket_path, send the request and read one reply line, all
 * within timeout_ms. Returns 0 with the line in reply (NUL-terminated,
 * without its "\n"), or -1 with a one-line reason. Uses non-blocking I/O
 * and poll(); no threads, no signals, no SIGPIPE.
 */
int pm_exchange(const char *socket_path, long timeout_ms, const char *request,
                size_t request_len, char *reply, size_t reply_cap,
                char *reason, size_t reason_cap);

#endif /* POOLMGR_CLIENT_H */
