/* The compiled agent shim: shim.py's fast path in C, for the installed plugin executables.
 *
 * A `python3 -IS` start costs ~6 ms per plugin exec; this program costs well under one. It does
 * exactly what cni_plugin/agent/shim.py does on its fast path and nothing else:
 *   - connect to pycni-agent's unix socket;
 *   - send the request frame of protocol.py: b"PCNI" | 1 | header_len u32 BE | stdin_len u32 BE
 *     | header | stdin, header = plugin NUL "K=V" NUL ... with the CNI_* and PYCNI_* variables and
 *     PATH (first occurrence of a name, as os.environ keeps it);
 *   - read the replies ("S", then "R" | code u32 | stdout_len u32 | stderr_len u32 | stdout |
 *     stderr), write stdout and stderr verbatim and exit with the agent's code.
 *
 * Anything else is the Python shim's business (fallback.py): when the agent cannot serve the
 * request, this program execs PYCNI_FALLBACK (a `python3 -IS` script scripts/install.py writes
 * under PREFIX) as
 *     PYCNI_FALLBACK PLUGIN SOCKET --fallback started|not-started stdin|no-stdin REASON
 * - cannot connect, or stdin unreadable: "not-started", "no-stdin" (fd 0 is left as it was);
 * - the connection drops (or the bytes are not a reply) before "S": "not-started";
 *   after "S": "started" (an ADD may be half done: fallback.py answers TryAgainLater, 11);
 * - "stdin": the bytes read from stdin are given back on fd 0 (a memfd holding them, else a pipe
 *   fed by a child), so the Python side sees the very stdin the runtime sent.
 *
 * Compiled per plugin at install time (C99 + libc; cc -std=c99 -O2 -Wall -Wextra):
 *   -DPYCNI_PLUGIN="\"bridge\"" -DPYCNI_SOCKET="\"/run/pycni/agent.sock\""
 *   -DPYCNI_FALLBACK="\"/opt/pycni/libexec/pycni-shim\"" -DPYCNI_MARKER="\"# pycni-shim: bridge ...\""
 * PYCNI_MARKER goes into an allocated ELF note (.note.pycni): the linker puts notes right after the
 * program headers, so the marker lies in the file's first KiB, where scripts/install.py (is_ours)
 * and cni_plugin/invoke.py look for it with one small read.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#if !defined(PYCNI_PLUGIN) || !defined(PYCNI_SOCKET) || !defined(PYCNI_FALLBACK) || !defined(PYCNI_MARKER)
#error "compile with -DPYCNI_PLUGIN, -DPYCNI_SOCKET, -DPYCNI_FALLBACK and -DPYCNI_MARKER (scripts/install.py)"
#endif

/* An ELF note (namesz, descsz, type, "pycni\0" padded to 4, the marker padded to 4). */
#define NOTE_DESC_LEN ((sizeof(PYCNI_MARKER) + 3) & ~(size_t)3)
struct pycni_note {
    uint32_t namesz, descsz, type;
    char name[8];
    char desc[NOTE_DESC_LEN];
};
__attribute__((section(".note.pycni"), used, aligned(4)))
static const struct pycni_note pycni_note = {6, sizeof(PYCNI_MARKER), 1, "pycni", PYCNI_MARKER};

#define CHUNK 65536
#define PREFIX_LEN 13     /* magic, version, header_len, stdin_len */
#define REPLY_HEAD_LEN 13 /* "R", code, stdout_len, stderr_len */

extern char **environ;

struct buf {
    unsigned char *data;
    size_t len, cap;
};

static int buf_reserve(struct buf *b, size_t more)
{
    size_t cap = b->cap ? b->cap : CHUNK;
    unsigned char *grown;
    if (more > SIZE_MAX - b->len)
        return -1;
    while (cap - b->len < more) {
        if (cap > SIZE_MAX / 2)
            return -1;
        cap *= 2;
    }
    if (cap == b->cap)
        return 0;
    grown = realloc(b->data, cap);
    if (grown == NULL)
        return -1;
    b->data = grown;
    b->cap = cap;
    return 0;
}

static int buf_add(struct buf *b, const void *data, size_t len)
{
    if (buf_reserve(b, len) < 0)
        return -1;
    memcpy(b->data + b->len, data, len);
    b->len += len;
    return 0;
}

static void put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static void write_all(int fd, const unsigned char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return; /* a closed stdout/stderr: nothing else can be done with the bytes */
        data += n;
        len -= (size_t)n;
    }
}

/* 0 when the whole of fd was read into b, -1 on a read error. */
static int read_all(int fd, struct buf *b)
{
    for (;;) {
        ssize_t n;
        if (buf_reserve(b, CHUNK) < 0) {
            errno = ENOMEM;
            return -1;
        }
        n = read(fd, b->data + b->len, CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            return 0;
        b->len += (size_t)n;
    }
}

/* As shim.py: VERSION never blocks on a terminal or fails on stdin (empty instead); any other
 * verb reads stdin to the end, -1 when it cannot. */
static int read_stdin(const char *verb, struct buf *b)
{
    if (strcmp(verb, "VERSION") == 0) {
        if (isatty(0) || read_all(0, b) < 0)
            b->len = 0;
        return 0;
    }
    return read_all(0, b);
}

static int forwarded(const char *entry, size_t key_len)
{
    return (key_len >= 4 && memcmp(entry, "CNI_", 4) == 0) || (key_len >= 6 && memcmp(entry, "PYCNI_", 6) == 0) ||
           (key_len == 4 && memcmp(entry, "PATH", 4) == 0);
}

/* The header: plugin NUL entry NUL entry ...; a name's first occurrence only (os.environ's rule). */
static int build_header(struct buf *h)
{
    size_t i, j;
    if (buf_add(h, PYCNI_PLUGIN, strlen(PYCNI_PLUGIN)) < 0)
        return -1;
    for (i = 0; environ[i] != NULL; i++) {
        const char *entry = environ[i], *eq = strchr(entry, '=');
        size_t key_len;
        int seen = 0;
        if (eq == NULL)
            continue;
        key_len = (size_t)(eq - entry);
        if (!forwarded(entry, key_len))
            continue;
        for (j = 0; j < i && !seen; j++)
            seen = strncmp(environ[j], entry, key_len + 1) == 0;
        if (seen)
            continue;
        if (buf_add(h, "", 1) < 0 || buf_add(h, entry, strlen(entry)) < 0)
            return -1;
    }
    return 0;
}

static int send_all(int fd, const unsigned char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* What the bytes received so far say (protocol.decode_replies): 1 a whole reply, 0 not yet,
 * -1 not a reply. */
static int decode_replies(const struct buf *r, size_t *head)
{
    size_t off = (r->len > 0 && r->data[0] == 'S') ? 1 : 0, rest = r->len - off;
    uint64_t end;
    if (rest == 0)
        return 0;
    if (r->data[off] != 'R')
        return -1;
    if (rest < REPLY_HEAD_LEN)
        return 0;
    end = REPLY_HEAD_LEN + (uint64_t)get_u32(r->data + off + 5) + get_u32(r->data + off + 9);
    if (rest < end)
        return 0;
    if (rest > end)
        return -1;
    *head = off;
    return 1;
}

static int connect_agent(const char **reason)
{
    static char why[160];
    struct sockaddr_un addr;
    int fd;
    if (strlen(PYCNI_SOCKET) >= sizeof(addr.sun_path)) {
        *reason = "cannot connect: AF_UNIX path too long";
        return -1;
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && fd <= 2) {
        /* fd 0, 1 or 2 was closed: keep it so (stdin must read as closed, not as the socket). */
        int high = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        close(fd);
        fd = high;
    }
    if (fd >= 0) {
        memset(&addr, 0, sizeof(addr));
        addr.sun_family = AF_UNIX;
        memcpy(addr.sun_path, PYCNI_SOCKET, strlen(PYCNI_SOCKET));
        while (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
            if (errno == EINTR)
                continue;
            snprintf(why, sizeof(why), "cannot connect: %s", strerror(errno));
            *reason = why;
            close(fd);
            return -1;
        }
        return fd;
    }
    snprintf(why, sizeof(why), "cannot connect: %s", strerror(errno));
    *reason = why;
    return -1;
}

/* A readable fd holding exactly `data` from its start, or -1. */
static int replay_fd(const struct buf *data)
{
    int fds[2];
    pid_t child;
#ifdef SYS_memfd_create
    int fd = (int)syscall(SYS_memfd_create, "pycni-stdin", 1U /* MFD_CLOEXEC */);
    if (fd >= 0) {
        size_t done = 0;
        while (done < data->len) {
            ssize_t n = write(fd, data->data + done, data->len - done);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
            done += (size_t)n;
        }
        if (done == data->len && lseek(fd, 0, SEEK_SET) == 0)
            return fd;
        close(fd);
    }
#endif
    /* No memfd (kernel < 3.17, or a filter): a pipe, fed by a grandchild nobody needs to reap. */
    if (pipe(fds) < 0)
        return -1;
    child = fork();
    if (child == 0) {
        close(fds[0]);
        if (fork() == 0) {
            write_all(fds[1], data->data, data->len);
            _exit(0);
        }
        _exit(0);
    }
    close(fds[1]);
    if (child < 0) {
        close(fds[0]);
        return -1;
    }
    while (waitpid(child, NULL, 0) < 0 && errno == EINTR)
        ;
    return fds[0];
}

static struct sigaction old_sigpipe;

/* Hand the request to the Python shim (fallback.py's rules); never returns. */
static void fallback(int started, const struct buf *data, const char *reason)
{
    /* An installation fault (PREFIX removed, say): a CNI error on stdout, the cause on stderr. */
    static const char cni_error[] = "{\n    \"cniVersion\": \"1.1.0\",\n    \"code\": 999,\n"
                                    "    \"msg\": \"pycni: the shim's in-process fallback cannot run\",\n"
                                    "    \"details\": \"see the plugin's stderr\"\n}\n";
    char *argv[8];
    char msg[512];
    argv[0] = (char *)PYCNI_FALLBACK;
    argv[1] = (char *)PYCNI_PLUGIN;
    argv[2] = (char *)PYCNI_SOCKET;
    argv[3] = (char *)"--fallback";
    argv[4] = (char *)(started ? "started" : "not-started");
    argv[5] = (char *)(data != NULL ? "stdin" : "no-stdin");
    argv[6] = (char *)reason;
    argv[7] = NULL;
    if (data != NULL) {
        int fd = replay_fd(data);
        if (fd < 0 || dup2(fd, 0) < 0) {
            snprintf(msg, sizeof(msg), "pycni: cannot give stdin back to the fallback: %s\n", strerror(errno));
            goto fail;
        }
        close(fd);
    }
    sigaction(SIGPIPE, &old_sigpipe, NULL);
    execv(PYCNI_FALLBACK, argv);
    snprintf(msg, sizeof(msg), "pycni: cannot exec %s: %s\n", PYCNI_FALLBACK, strerror(errno));
fail:
    write_all(2, (const unsigned char *)msg, strlen(msg));
    write_all(1, (const unsigned char *)cni_error, sizeof(cni_error) - 1);
    _exit(1);
}

int main(void)
{
    const char *verb = getenv("CNI_COMMAND"), *reason = NULL;
    struct buf in = {NULL, 0, 0}, header = {NULL, 0, 0}, reply = {NULL, 0, 0};
    unsigned char prefix[PREFIX_LEN];
    struct sigaction ignore;
    size_t head = 0;
    int sock, state = 0;

    /* A closed stdout/stderr must fail the write (EPIPE), not kill the shim (as in Python). */
    memset(&ignore, 0, sizeof(ignore));
    ignore.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &ignore, &old_sigpipe);

    if (verb == NULL)
        verb = "";
    sock = connect_agent(&reason);
    if (sock < 0)
        fallback(0, NULL, reason);
    if (read_stdin(verb, &in) < 0) {
        close(sock); /* in-process dispatch reads stdin itself and reports its own IOFailure (5) */
        fallback(0, NULL, "stdin unreadable");
    }
    if (build_header(&header) < 0 || header.len > UINT32_MAX || in.len > UINT32_MAX) {
        close(sock);
        fallback(0, &in, "request too large for the frame format");
    }
    memcpy(prefix, "PCNI\1", 5);
    put_u32(prefix + 5, (uint32_t)header.len);
    put_u32(prefix + 9, (uint32_t)in.len);
    /* A send error is not the end: the agent may have answered before closing; read it below. */
    if (send_all(sock, prefix, PREFIX_LEN) == 0 && send_all(sock, header.data, header.len) == 0)
        send_all(sock, in.data, in.len);
    for (;;) {
        ssize_t n;
        if (buf_reserve(&reply, CHUNK) < 0)
            break;
        n = recv(sock, reply.data + reply.len, CHUNK, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        reply.len += (size_t)n;
        state = decode_replies(&reply, &head);
        if (state != 0)
            break;
    }
    close(sock);
    if (state == 1) {
        const unsigned char *r = reply.data + head;
        uint32_t out_len = get_u32(r + 5);
        write_all(1, r + REPLY_HEAD_LEN, out_len);
        write_all(2, r + REPLY_HEAD_LEN + out_len, get_u32(r + 9));
        _exit((int)get_u32(r + 1));
    }
    fallback(reply.len > 0 && reply.data[0] == 'S', &in, "the agent closed the connection");
    return 1;
}
