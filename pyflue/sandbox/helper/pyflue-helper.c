/*
 * pyflue-helper: the in-container end of pyflue's persistent channel.
 *
 * Started by one long-lived `docker exec` as the sandbox user. It reads request frames on
 * stdin and writes reply frames on stdout; there is no network port. Every frame is a 12-byte
 * header (payload length, u32 big-endian; type, u8; three zero bytes; request id, u32
 * big-endian) and its payload, at most MAX_FRAME bytes. The wire format is described, and
 * parsed on the other side, in pyflue/sandbox/docker/frames.py.
 *
 * Requests: EXEC (a command in its own session, output streamed, exit code; flagged as a
 * shell command it may be served by the spare shell, see below), KILL (signal a command's
 * process group), CREDIT (more output may be sent for a request), DROP (forget a
 * request's output), STAT, MKDIR, PUT (open a file) + DATA + END, TAR (a tar of a path, written
 * by a forked child and streamed like a command's stdout).
 *
 * Care taken: buffers are fixed-size and every length read from the wire is checked against
 * them; every system call retries on EINTR; SIGPIPE is ignored (a closed stdout ends the
 * helper); every child is reaped (SIGCHLD through a self-pipe); all our descriptors are
 * close-on-exec, so commands inherit none of them; the helper is not dumpable, so commands
 * (same uid) cannot ptrace it or open its descriptors through /proc.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define VERSION 1
#define HDR 12
#define MAX_FRAME (1u << 20)
#define MAX_SLOTS 256
#define CHUNK (256u << 10)
#define PIPE_SIZE (1 << 20)
#define OUT_HIGH (1u << 20)
#define OUT_CAP (OUT_HIGH + 4u * (MAX_FRAME + HDR))
#define IN_CAP (MAX_FRAME + HDR)
#define START_CREDIT (4u << 20)
#define MAX_STRINGS 65536
#define SPARE_MAX_CMD 4096 /* longer commands are not handed to a spare (bash reads it bytewise) */
#define F_SHELL 1          /* EXEC flag: argv is [shell, "-c", command, name] */
#define STARTED_SPARE 1    /* STARTED flag: a spare shell became the command */

enum {
    T_EXEC = 1, T_KILL = 2, T_CREDIT = 3, T_DROP = 4, T_STAT = 5, T_MKDIR = 6,
    T_PUT = 7, T_DATA = 8, T_END = 9, T_TAR = 10,
    R_HELLO = 0x81, R_STARTED = 0x82, R_STDOUT = 0x83, R_STDERR = 0x84, R_EXIT = 0x85,
    R_DONE = 0x86, R_ERROR = 0x87, R_STAT = 0x88,
};

enum { S_FREE = 0, S_PROC, S_FILE };

struct slot {
    int state;
    uint32_t id;
    pid_t pid;
    int fds[2];          /* the child's stdout and stderr pipes (read ends), -1 once closed */
    int exited, status;
    int discard;
    uint64_t credit;
    int file_fd, file_err;
    uint32_t file_mode;
};

static struct slot slots[MAX_SLOTS];
static unsigned char inbuf[IN_CAP];
static size_t inlen;
static unsigned char outbuf[OUT_CAP];
static size_t outlen;
static int sigpipe_fds[2] = {-1, -1};
static unsigned char iobuf[CHUNK];

static uint32_t get32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void put32(unsigned char *p, uint32_t v) {
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

static void put64(unsigned char *p, uint64_t v) {
    put32(p, (uint32_t)(v >> 32)); put32(p + 4, (uint32_t)v);
}

static void die(const char *what) {
    dprintf(2, "pyflue-helper: %s: %s\n", what, strerror(errno));
    _exit(70);
}

/* Queues one frame; callers keep payloads within MAX_FRAME and outlen below OUT_HIGH before
 * producing, so this cannot overflow (checked anyway). */
static void emit2(int type, uint32_t id, const void *a, size_t alen, const void *b, size_t blen) {
    size_t len = alen + blen;
    if (len > MAX_FRAME || outlen + HDR + len > OUT_CAP) {
        errno = ENOBUFS;
        die("reply too large");
    }
    unsigned char *p = outbuf + outlen;
    put32(p, (uint32_t)len);
    p[4] = (unsigned char)type; p[5] = p[6] = p[7] = 0;
    put32(p + 8, id);
    if (alen) memcpy(p + HDR, a, alen);
    if (blen) memcpy(p + HDR + alen, b, blen);
    outlen += HDR + len;
}

static void emit(int type, uint32_t id, const void *data, size_t len) {
    emit2(type, id, data, len, NULL, 0);
}

static void emit_started(uint32_t id, uint32_t pid, uint32_t flags) {
    unsigned char p[8];
    put32(p, pid);
    put32(p + 4, flags);
    emit(R_STARTED, id, p, 8);
}

static void emit_error(uint32_t id, int err) {
    unsigned char code[4];
    const char *msg = strerror(err);
    put32(code, (uint32_t)err);
    emit2(R_ERROR, id, code, 4, msg, strlen(msg));
}

static void flush_out(void) {
    size_t done = 0;
    while (done < outlen) {
        ssize_t n = write(1, outbuf + done, outlen - done);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            _exit(0); /* the other end went away: nothing left to serve */
        }
        done += (size_t)n;
    }
    memmove(outbuf, outbuf + done, outlen - done);
    outlen -= done;
}

static void on_sigchld(int sig) {
    (void)sig;
    int saved = errno;
    ssize_t r = write(sigpipe_fds[1], "c", 1);
    (void)r;
    errno = saved;
}

static struct slot *find(uint32_t id) {
    for (int i = 0; i < MAX_SLOTS; i++)
        if (slots[i].state != S_FREE && slots[i].id == id) return &slots[i];
    return NULL;
}

static struct slot *claim(uint32_t id) {
    if (id == 0 || find(id)) return NULL;
    for (int i = 0; i < MAX_SLOTS; i++)
        if (slots[i].state == S_FREE) {
            memset(&slots[i], 0, sizeof slots[i]);
            slots[i].id = id;
            slots[i].fds[0] = slots[i].fds[1] = slots[i].file_fd = -1;
            return &slots[i];
        }
    return NULL;
}

static void close_fd(int *fd) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
}

static int write_all(int fd, const void *data, size_t len) {
    const unsigned char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += n; len -= (size_t)n;
    }
    return 0;
}

/* ---- the tar writer ------------------------------------------------------------------------
 * Runs in a forked child writing to fd 1, or (a small regular file: see req_tar) in the helper
 * itself, writing into `inline_tar`, which is then sent as frames: no fork for a small read. */

static char tar_block[512];
#define INLINE_MAX (256u << 10)
static unsigned char inline_tar[INLINE_MAX + 8 * 512 + 3 * PATH_MAX + 256];
static size_t inline_len;
static int tar_inline; /* 1: the tar goes into inline_tar, not to fd 1 */

static int tar_out(const void *data, size_t len) {
    if (!tar_inline) return write_all(1, data, len);
    if (inline_len + len > sizeof inline_tar) { errno = EFBIG; return -1; }
    memcpy(inline_tar + inline_len, data, len);
    inline_len += len;
    return 0;
}

static void tar_complain(const char *path, int err) {
    if (!tar_inline) dprintf(2, "%s: %s\n", path, strerror(err));
}

static void octal(char *dst, size_t width, uint64_t v) {
    /* width-1 digits, zero-padded, then NUL */
    dst[width - 1] = 0;
    for (size_t i = width - 1; i-- > 0;) { dst[i] = (char)('0' + (v & 7)); v >>= 3; }
}

static int pax_record(char *buf, size_t cap, size_t *used, const char *key, const char *val) {
    size_t body = strlen(key) + strlen(val) + 3; /* ' ', '=', '\n' */
    size_t len = body + 1, digits;
    for (;;) {
        digits = (size_t)snprintf(NULL, 0, "%zu", len);
        if (body + digits == len) break;
        len = body + digits;
    }
    if (*used + len > cap) return -1;
    snprintf(buf + *used, cap - *used, "%zu %s=%s\n", len, key, val);
    *used += len; /* overwrites snprintf's NUL on the next record, or is never read */
    return 0;
}

static int tar_header(const char *name, int type, const struct stat *st, uint64_t size,
                      const char *link) {
    static char pax[3 * PATH_MAX + 256];
    size_t paxlen = 0;
    int long_name = strlen(name) > 100, long_link = link && strlen(link) > 100;
    char buf[32];
    if (long_name && pax_record(pax, sizeof pax, &paxlen, "path", name)) return -1;
    if (long_link && pax_record(pax, sizeof pax, &paxlen, "linkpath", link)) return -1;
    if (size > 077777777777ULL) {
        snprintf(buf, sizeof buf, "%llu", (unsigned long long)size);
        if (pax_record(pax, sizeof pax, &paxlen, "size", buf)) return -1;
    }
    if (paxlen > 0) {
        struct stat none = {0};
        if (tar_header("././@PaxHeader", 'x', &none, paxlen, NULL)) return -1;
        if (tar_out(pax, paxlen)) return -1;
        size_t pad = (512 - paxlen % 512) % 512;
        memset(tar_block, 0, sizeof tar_block);
        if (pad && tar_out(tar_block, pad)) return -1;
    }
    char *h = tar_block;
    memset(h, 0, 512);
    memcpy(h, name, long_name ? 100 : strlen(name));
    octal(h + 100, 8, st->st_mode & 07777);
    octal(h + 108, 8, (uint64_t)st->st_uid & 07777777);
    octal(h + 116, 8, (uint64_t)st->st_gid & 07777777);
    octal(h + 124, 12, size > 077777777777ULL ? 0 : size);
    octal(h + 136, 12, st->st_mtime > 0 ? (uint64_t)st->st_mtime & 077777777777ULL : 0);
    h[156] = (char)type;
    if (link) memcpy(h + 157, link, long_link ? 100 : strlen(link));
    memcpy(h + 257, "ustar", 6);
    memcpy(h + 263, "00", 2);
    memset(h + 148, ' ', 8);
    unsigned sum = 0;
    for (int i = 0; i < 512; i++) sum += (unsigned char)h[i];
    snprintf(h + 148, 8, "%06o", sum);
    h[155] = ' ';
    return tar_out(h, 512);
}

/* ---- no symlink followed (sec) ------------------------------------------------------------
 * A copy out and a command's folder are opened one component at a time, each relative to the
 * folder above it with O_NOFOLLOW: a process inside that swaps a folder for a symlink while
 * we walk (CVE-2018-15664, CVE-2024-21626 class) gets an error, never a walk outside. */

/* The folder holding the last component of `path` (absolute), opened without following any
 * symlink on the way; the component itself goes into `last` (cap PATH_MAX). -1 on error. */
static int open_parent_nofollow(const char *path, char *last) {
    char buf[PATH_MAX];
    size_t len = strlen(path);
    if (path[0] != '/' || len >= PATH_MAX) { errno = EINVAL; return -1; }
    memcpy(buf, path, len + 1);
    while (len > 1 && buf[len - 1] == '/') buf[--len] = 0;
    int fd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    char *part = buf + 1, *slash;
    while (fd >= 0 && (slash = strchr(part, '/')) != NULL) {
        *slash = 0;
        if (*part) {
            int next = openat(fd, part, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            int saved = errno;
            close(fd);
            errno = saved;
            fd = next;
        }
        part = slash + 1;
    }
    if (fd >= 0) snprintf(last, PATH_MAX, "%s", *part ? part : ".");
    return fd;
}

/* The folder `path` (absolute), opened (O_PATH) without following a symlink on the way. */
static int open_dir_nofollow(const char *path) {
    char last[PATH_MAX];
    int parent = open_parent_nofollow(path, last);
    if (parent < 0) return -1;
    int fd = openat(parent, last, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int saved = errno;
    close(parent);
    errno = saved;
    return fd;
}

/* Enters `path` (absolute) without following a symlink anywhere on the way. */
static int chdir_nofollow(const char *path) {
    int fd = open_dir_nofollow(path);
    if (fd < 0) return -1;
    int saved;
    int rc = fchdir(fd);
    saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

static int tar_file(int dir, const char *entry, const char *path, const char *name) {
    /* O_NONBLOCK: a fifo swapped in does not block the open; fstat then refuses it. */
    int fd = openat(dir, entry, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT || errno == ELOOP) return 0; /* removed or swapped meanwhile */
        tar_complain(path, errno);
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) { close(fd); return 0; }
    uint64_t size = (uint64_t)st.st_size, left = size;
    if (tar_header(name, '0', &st, size, NULL)) { close(fd); return -1; }
    while (left > 0) {
        size_t want = left < CHUNK ? (size_t)left : CHUNK;
        ssize_t n = read(fd, iobuf, want);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) { tar_complain(path, errno); close(fd); return -1; }
        if (n == 0) { memset(iobuf, 0, want); n = (ssize_t)want; } /* shrank: pad */
        if (tar_out(iobuf, (size_t)n)) { close(fd); return -1; }
        left -= (uint64_t)n;
    }
    close(fd);
    size_t pad = (512 - size % 512) % 512;
    memset(tar_block, 0, sizeof tar_block);
    return pad ? tar_out(tar_block, pad) : 0;
}

/* `entry` of the open folder `dir`; `path` names it in messages, `name` in the tar. */
static int tar_walk(int dir, const char *entry, char *path, size_t plen, char *name,
                    size_t nlen, int depth) {
    struct stat st;
    if (fstatat(dir, entry, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        if (errno == ENOENT && depth > 0) return 0; /* removed meanwhile */
        tar_complain(path, errno);
        return -1;
    }
    if (S_ISREG(st.st_mode)) return tar_file(dir, entry, path, name);
    if (S_ISLNK(st.st_mode)) {
        char target[PATH_MAX];
        ssize_t n = readlinkat(dir, entry, target, sizeof target - 1);
        if (n < 0) return errno == ENOENT || errno == EINVAL ? 0 : -1;
        target[n] = 0;
        return tar_header(name, '2', &st, 0, target);
    }
    if (!S_ISDIR(st.st_mode)) return 0; /* fifos, sockets, devices: not copied */
    if (depth > 128 || nlen + 2 >= PATH_MAX || plen + 2 >= PATH_MAX) {
        dprintf(2, "%s: too deep to copy\n", path);
        return -1;
    }
    int fd = openat(dir, entry, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        if (depth > 0 && (errno == ENOENT || errno == ELOOP || errno == ENOTDIR))
            return 0; /* swapped for a link or a file meanwhile: not followed, not copied */
        dprintf(2, "%s: %s\n", path, strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) < 0) { close(fd); return -1; }
    name[nlen] = '/'; name[nlen + 1] = 0;
    int rc = tar_header(name, '5', &st, 0, NULL);
    name[nlen] = 0;
    if (rc) { close(fd); return -1; }
    DIR *d = fdopendir(fd);
    if (!d) { dprintf(2, "%s: %s\n", path, strerror(errno)); close(fd); return -1; }
    struct dirent *e;
    rc = 0;
    while (rc == 0 && (errno = 0, e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        size_t el = strlen(e->d_name);
        if (plen + el + 2 >= PATH_MAX || nlen + el + 2 >= PATH_MAX) {
            dprintf(2, "%s/%s: path too long to copy\n", path, e->d_name);
            rc = -1;
            break;
        }
        path[plen] = '/'; memcpy(path + plen + 1, e->d_name, el + 1);
        name[nlen] = '/'; memcpy(name + nlen + 1, e->d_name, el + 1);
        rc = tar_walk(fd, e->d_name, path, plen + 1 + el, name, nlen + 1 + el, depth + 1);
        path[plen] = 0; name[nlen] = 0;
    }
    if (rc == 0 && errno != 0 && e == NULL) { dprintf(2, "%s: %s\n", path, strerror(errno)); rc = -1; }
    closedir(d);
    return rc;
}

/* The whole tar of `root` through tar_out: 0, or -1 (said on stderr in a child). Opened one
 * folder at a time without following a symlink, in the helper (inline) as in a child. */
static int tar_all(const char *root) {
    static char path[PATH_MAX], name[PATH_MAX], last[PATH_MAX];
    size_t plen = strlen(root);
    while (plen > 1 && root[plen - 1] == '/') plen--;
    if (plen == 0 || plen >= PATH_MAX) { tar_complain(root, EINVAL); return -1; }
    memcpy(path, root, plen); path[plen] = 0;
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (!*base) base = ".";
    size_t nlen = strlen(base);
    memcpy(name, base, nlen + 1);
    int dir = open_parent_nofollow(path, last);
    if (dir < 0) { tar_complain(path, errno); return -1; }
    int rc = tar_walk(dir, last, path, plen, name, nlen, 0);
    close(dir);
    if (rc == 0) {
        memset(tar_block, 0, sizeof tar_block);
        rc = tar_out(tar_block, 512) || tar_out(tar_block, 512);
    }
    return rc ? -1 : 0;
}

static void tar_main(const char *root) {
    if (tar_all(root)) _exit(1);
    _exit(0);
}

/* ---- commands ----------------------------------------------------------------------------- */

static char *env_get(char **env, const char *key) {
    size_t k = strlen(key);
    for (; *env; env++)
        if (!strncmp(*env, key, k) && (*env)[k] == '=') return *env + k + 1;
    return NULL;
}

extern char **environ;

/* In the child: the command's environment is ours with `add` (KEY=VALUE strings) over it. */
static char **merged_env(char **add, uint32_t n) {
    size_t base = 0;
    while (environ[base]) base++;
    char **out = calloc(base + n + 1, sizeof *out);
    if (!out) return environ;
    size_t m = 0;
    for (size_t i = 0; i < base; i++) {
        const char *eq = strchr(environ[i], '=');
        size_t k = eq ? (size_t)(eq - environ[i]) : strlen(environ[i]);
        int replaced = 0;
        for (uint32_t j = 0; j < n; j++)
            if (!strncmp(add[j], environ[i], k) && add[j][k] == '=') { replaced = 1; break; }
        if (!replaced) out[m++] = environ[i];
    }
    for (uint32_t j = 0; j < n; j++) out[m++] = add[j];
    out[m] = NULL;
    return out;
}

static void child_exec(const char *cwd, char **argv, char **envp) {
    if (*cwd && chdir_nofollow(cwd) < 0) {
        dprintf(2, "pyflue-helper: chdir to %s: %s\n", cwd, strerror(errno));
        _exit(126);
    }
    if (strchr(argv[0], '/')) {
        execve(argv[0], argv, envp);
        dprintf(2, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(errno == ENOENT ? 127 : 126);
    }
    const char *path = env_get(envp, "PATH");
    if (!path) path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    int denied = 0;
    char full[PATH_MAX];
    while (*path) {
        const char *end = strchr(path, ':');
        size_t dl = end ? (size_t)(end - path) : strlen(path);
        if (dl + strlen(argv[0]) + 2 < sizeof full) {
            if (dl == 0) snprintf(full, sizeof full, "%s", argv[0]);
            else snprintf(full, sizeof full, "%.*s/%s", (int)dl, path, argv[0]);
            execve(full, argv, envp);
            if (errno == EACCES) denied = 1;
        }
        path += dl;
        if (*path == ':') path++;
    }
    if (denied) {
        dprintf(2, "exec: \"%s\": permission denied\n", argv[0]);
        _exit(126);
    }
    dprintf(2, "exec: \"%s\": executable file not found in $PATH\n", argv[0]);
    _exit(127);
}

static void child_setup(int out, int err, int detached) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    signal(SIGCHLD, SIG_DFL);
    (void)detached;
    setsid(); /* its own session and process group: a kill takes the whole tree */
    int nul = open("/dev/null", O_RDWR);
    if (nul < 0) _exit(126);
    dup2(nul, 0);
    dup2(out >= 0 ? out : nul, 1);
    dup2(err >= 0 ? err : nul, 2);
    if (nul > 2) close(nul);
}

/* Forks a child whose stdout/stderr come back as frames of `s`; `tar_root` set: a tar child. */
static int start_child(struct slot *s, int detached, const char *cwd, char **argv,
                       char **add, uint32_t nadd, const char *tar_root) {
    int po[2] = {-1, -1}, pe[2] = {-1, -1};
    if (!detached) {
        if (pipe2(po, O_CLOEXEC) < 0) return -1;
        if (pipe2(pe, O_CLOEXEC) < 0) { close(po[0]); close(po[1]); return -1; }
    }
    pid_t pid = fork();
    if (pid < 0) {
        int saved = errno;
        if (!detached) { close(po[0]); close(po[1]); close(pe[0]); close(pe[1]); }
        errno = saved;
        return -1;
    }
    if (pid == 0) {
        child_setup(po[1], pe[1], detached);
        if (tar_root) tar_main(tar_root);
        child_exec(cwd, argv, merged_env(add, nadd));
    }
    s->state = S_PROC;
    s->pid = pid;
    s->credit = START_CREDIT;
    if (!detached) {
        close(po[1]); close(pe[1]);
        fcntl(po[0], F_SETFL, O_NONBLOCK);
        fcntl(pe[0], F_SETFL, O_NONBLOCK);
        fcntl(po[0], F_SETPIPE_SZ, PIPE_SIZE); /* fewer, larger reads; refused above the cap */
        s->fds[0] = po[0]; s->fds[1] = pe[0];
    } else {
        s->discard = 1;
    }
    emit_started(s->id, (uint32_t)pid, 0);
    return 0;
}

/* ---- the spare shell --------------------------------------------------------------------
 * A short shell command costs mostly the shell's own start (fork, exec, the dynamic loader,
 * its init). After an EXEC flagged F_SHELL ([shell, "-c", command, name]), once no command
 * runs, the helper starts ONE shell set up as that command's child was (its own session,
 * stdin /dev/null, fresh stdout/stderr pipes, the same cwd, env and $0) running SPARE_STUB,
 * which waits for its command on fd 3. The next F_SHELL EXEC with byte-for-byte the same
 * shell, name, cwd and env (its key) gets it: the command is written to fd 3, which is then
 * closed, and the spare is that request's process from then on (STARTED says so). Anything
 * else (no spare, another key, a spare that died, a command over SPARE_MAX_CMD) forks as
 * usual. A spare is started at most once per F_SHELL EXEC, and only while the helper is
 * idle, so it never adds a process while a command runs.
 * Secrets: a spare only ever serves its own env. One whose env carries anything of its own
 * is killed and reaped before the helper starts any other process, so nothing the helper
 * starts later can read it in /proc; one with no env of its own holds nothing to hide. */

/* Reads the command (up to a NUL or the end of fd 3), closes fd 3, restarts $SECONDS, unsets
 * the variable and runs the command (the variable is expanded before eval runs the unset).
 * An empty read (the helper went away) runs nothing. */
static const char SPARE_STUB[] =
    "IFS= read -r -d '' __pyflue_cmd <&3; exec 3<&-; SECONDS=0; "
    "eval \"unset -v __pyflue_cmd; $__pyflue_cmd\"";

struct spare {
    pid_t pid;          /* 0: none */
    int cmd;            /* the write end of its fd 3 */
    int fds[2];         /* its stdout and stderr (read ends) */
    char *key;          /* what it was started for (see spare_key) */
    size_t keylen;
    int has_env;        /* it was given env of its own */
    dev_t dev;          /* the folder it entered */
    ino_t ino;
};

static struct spare spare = {0, -1, {-1, -1}, NULL, 0, 0, 0, 0};
static char *want_key;  /* the key of the last F_SHELL EXEC, until a spare is started for it */
static size_t want_keylen;

/* The key of an F_SHELL EXEC: envc (u32), then cwd, shell, name, env, each NUL-terminated. */
static char *spare_key(const char *cwd, char **argv, char **add, uint32_t nadd, size_t *len) {
    size_t n = 4 + strlen(cwd) + 1 + strlen(argv[0]) + 1 + strlen(argv[3]) + 1;
    for (uint32_t i = 0; i < nadd; i++) n += strlen(add[i]) + 1;
    char *key = malloc(n), *at = key + 4;
    if (!key) return NULL;
    put32((unsigned char *)key, nadd);
    const char *parts[3] = {cwd, argv[0], argv[3]};
    for (int i = 0; i < 3; i++) { size_t l = strlen(parts[i]) + 1; memcpy(at, parts[i], l); at += l; }
    for (uint32_t i = 0; i < nadd; i++) { size_t l = strlen(add[i]) + 1; memcpy(at, add[i], l); at += l; }
    *len = n;
    return key;
}

/* Forgets the spare's pipes and key (its process is gone, or has become a command). */
static void spare_forget(void) {
    close_fd(&spare.cmd);
    close_fd(&spare.fds[0]);
    close_fd(&spare.fds[1]);
    free(spare.key);
    spare.key = NULL;
    spare.pid = 0;
}

/* Kills the spare and waits for it: once this returns, its environment is gone. */
static void spare_kill(void) {
    if (!spare.pid) return;
    kill(-spare.pid, SIGKILL);
    kill(spare.pid, SIGKILL);
    while (waitpid(spare.pid, NULL, 0) < 0 && errno == EINTR) {}
    spare_forget();
}

/* Before the helper starts a process other than the spare: a spare with env of its own goes
 * (and is started again once the helper is idle, unless a shell command wants another). */
static void spare_guard(void) {
    if (!spare.pid || !spare.has_env) return;
    if (!want_key) {
        want_key = spare.key;
        want_keylen = spare.keylen;
        spare.key = NULL;
    }
    spare_kill();
}

static int split_strings(char *data, size_t len, char **out, uint32_t want);

static int busy(void) {
    for (int i = 0; i < MAX_SLOTS; i++)
        if (slots[i].state == S_PROC) return 1;
    return 0;
}

/* Starts a spare for want_key when the helper is idle; a failure just means no spare. */
static void spare_start(void) {
    if (!want_key || spare.pid || busy()) return;
    char *key = want_key;
    size_t keylen = want_keylen;
    want_key = NULL;
    uint32_t nadd = get32((unsigned char *)key);
    char **strs = calloc((size_t)nadd + 4, sizeof *strs);
    int po[2] = {-1, -1}, pe[2] = {-1, -1}, pc[2] = {-1, -1}, dir = -1;
    struct stat st = {0};
    if (!strs || split_strings(key + 4, keylen - 4, strs, 3 + nadd) < 0)
        goto fail;
    /* The folder is opened here and entered by the child: its identity is known before the
     * child runs, and spare_take compares it with what the path names then. */
    if (*strs[0] && ((dir = open_dir_nofollow(strs[0])) < 0 || fstat(dir, &st) < 0))
        goto fail;
    if (pipe2(po, O_CLOEXEC) < 0 || pipe2(pe, O_CLOEXEC) < 0 || pipe2(pc, O_CLOEXEC) < 0)
        goto fail;
    char *argv[] = {strs[1], "-c", (char *)SPARE_STUB, strs[2], NULL};
    pid_t pid = fork();
    if (pid < 0) goto fail;
    if (pid == 0) {
        child_setup(po[1], pe[1], 0);
        if (pc[0] == 3) fcntl(3, F_SETFD, 0);
        else if (dup2(pc[0], 3) < 0) _exit(126);
        if (dir >= 0 && fchdir(dir) < 0) _exit(126);
        child_exec("", argv, merged_env(strs + 3, nadd));
    }
    close_fd(&dir);
    spare.dev = st.st_dev; spare.ino = st.st_ino;
    close(po[1]); close(pe[1]); close(pc[0]);
    fcntl(po[0], F_SETFL, O_NONBLOCK);
    fcntl(pe[0], F_SETFL, O_NONBLOCK);
    fcntl(pc[1], F_SETFL, O_NONBLOCK);
    fcntl(po[0], F_SETPIPE_SZ, PIPE_SIZE);
    spare.pid = pid;
    spare.cmd = pc[1];
    spare.fds[0] = po[0]; spare.fds[1] = pe[0];
    spare.key = key; spare.keylen = keylen;
    spare.has_env = nadd > 0;
    free(strs);
    return;
fail:
    close_fd(&dir);
    for (int i = 0; i < 2; i++) { close_fd(&po[i]); close_fd(&pe[i]); close_fd(&pc[i]); }
    free(strs);
    free(key);
}

/* Whether the spare's working folder is the one `cwd` names now (walked without following a
 * symlink): a folder removed, renamed or swapped since the spare entered it is not. */
static int spare_cwd_ok(const char *cwd) {
    if (!*cwd) return 1;
    struct stat now;
    int fd = open_dir_nofollow(cwd);
    if (fd < 0) return 0;
    int rc = fstat(fd, &now);
    close(fd);
    return rc == 0 && now.st_dev == spare.dev && now.st_ino == spare.ino;
}

/* Hands `command` to the spare when its key is `key`: 0 and `s` is now its process, or -1
 * (no spare, another key, or it died: then it is gone and the caller forks as usual). */
static int spare_take(struct slot *s, const char *key, size_t keylen, const char *command) {
    if (!spare.pid) return -1;
    siginfo_t si;
    memset(&si, 0, sizeof si);
    size_t clen = strlen(command);
    if (spare.keylen != keylen || memcmp(spare.key, key, keylen) != 0 || clen >= SPARE_MAX_CMD
        || waitid(P_PID, (id_t)spare.pid, &si, WEXITED | WNOHANG | WNOWAIT) < 0 || si.si_pid
        || !spare_cwd_ok(key + 4) || write_all(spare.cmd, command, clen) < 0) {
        spare_kill();
        return -1;
    }
    s->state = S_PROC;
    s->pid = spare.pid;
    s->credit = START_CREDIT;
    s->fds[0] = spare.fds[0]; s->fds[1] = spare.fds[1];
    spare.fds[0] = spare.fds[1] = -1;
    emit_started(s->id, (uint32_t)spare.pid, STARTED_SPARE);
    spare_forget(); /* closes fd 3's write end: the spare's read ends there */
    return 0;
}

/* ---- requests ----------------------------------------------------------------------------- */

/* Splits `len` bytes into exactly `want` NUL-terminated strings; -1 when they do not fit. */
static int split_strings(char *data, size_t len, char **out, uint32_t want) {
    uint32_t n = 0;
    size_t start = 0;
    for (size_t i = 0; i < len; i++) {
        if (data[i] != 0) continue;
        if (n >= want) return -1;
        out[n++] = data + start;
        start = i + 1;
    }
    return (n == want && start == len) ? 0 : -1;
}

static int path_ok(const unsigned char *p, size_t len) {
    return len > 0 && len < PATH_MAX && memchr(p, 0, len) == NULL;
}

static void req_exec(uint32_t id, unsigned char *p, size_t len) {
    if (len < 12 || p[0] > 1 || p[1] > F_SHELL || p[2] || p[3]) { emit_error(id, EINVAL); return; }
    int detached = p[0], shell = p[1] & F_SHELL;
    uint32_t argc = get32(p + 4), envc = get32(p + 8);
    if (argc < 1 || argc > MAX_STRINGS || envc > MAX_STRINGS || (shell && (detached || argc != 4))) {
        emit_error(id, EINVAL);
        return;
    }
    struct slot *s = claim(id);
    if (!s) { emit_error(id, EBUSY); return; }
    char **strs = calloc((size_t)argc + envc + 2, sizeof *strs);
    if (!strs) { emit_error(id, ENOMEM); return; }
    if (split_strings((char *)p + 12, len - 12, strs, 1 + argc + envc) < 0) {
        free(strs);
        emit_error(id, EINVAL);
        return;
    }
    char **argv = strs + 1;      /* argv[argc] is moved to a NULL below */
    char **env = strs + 1 + argc;
    char **add = calloc((size_t)envc + 1, sizeof *add);
    if (!add) { free(strs); emit_error(id, ENOMEM); return; }
    memcpy(add, env, envc * sizeof *add);
    for (uint32_t i = 0; i < envc; i++)
        if (!strchr(add[i], '=') || add[i][0] == '=') {
            free(strs); free(add); emit_error(id, EINVAL); return;
        }
    argv[argc] = NULL;
    if (shell && strcmp(argv[1], "-c") != 0) {
        s->state = S_FREE;
        free(strs); free(add); emit_error(id, EINVAL); return;
    }
    if (shell) {
        size_t keylen = 0;
        char *key = spare_key(strs[0], argv, add, envc, &keylen);
        int taken = key && spare_take(s, key, keylen, argv[2]) == 0;
        free(want_key);
        want_key = key; /* the next spare is made for this key, once idle */
        want_keylen = keylen;
        if (taken) { free(strs); free(add); return; }
        spare_kill(); /* a spare for another key is of no use */
    } else {
        spare_guard();
    }
    if (start_child(s, detached, strs[0], argv, add, envc, NULL) < 0) {
        s->state = S_FREE;
        emit_error(id, errno);
    } else if (detached) {
        s->state = S_FREE; /* nothing to stream; the reaper just collects it */
    }
    free(strs);
    free(add);
}

static void req_tar(uint32_t id, unsigned char *p, size_t len) {
    char path[PATH_MAX];
    if (!path_ok(p, len)) { emit_error(id, EINVAL); return; }
    memcpy(path, p, len); path[len] = 0;
    struct stat st;
    if (lstat(path, &st) < 0) { emit_error(id, errno); return; }
    if (S_ISDIR(st.st_mode) ? access(path, R_OK | X_OK) : (S_ISREG(st.st_mode) ? access(path, R_OK) : 0)) {
        emit_error(id, errno);
        return;
    }
    if (S_ISREG(st.st_mode) && (uint64_t)st.st_size <= INLINE_MAX && id != 0 && !find(id)) {
        /* Small enough to send from here, as a child would: STARTED, the tar, EXIT 0. */
        tar_inline = 1;
        inline_len = 0;
        int rc = tar_all(path);
        tar_inline = 0;
        if (rc == 0) {
            unsigned char p4[4];
            put32(p4, 0);
            emit_started(id, 0, 0);
            for (size_t off = 0; off < inline_len; off += MAX_FRAME) {
                size_t n = inline_len - off < MAX_FRAME ? inline_len - off : MAX_FRAME;
                emit(R_STDOUT, id, inline_tar + off, n);
            }
            emit(R_EXIT, id, p4, 4);
            return;
        } /* else (it changed meanwhile, say): a child does it, and says what went wrong */
    }
    struct slot *s = claim(id);
    if (!s) { emit_error(id, EBUSY); return; }
    spare_guard();
    if (start_child(s, 0, "", NULL, NULL, 0, path) < 0) {
        s->state = S_FREE;
        emit_error(id, errno);
    }
}

static void req_stat(uint32_t id, unsigned char *p, size_t len) {
    char path[PATH_MAX], target[PATH_MAX];
    if (!path_ok(p, len)) { emit_error(id, EINVAL); return; }
    memcpy(path, p, len); path[len] = 0;
    struct stat st;
    if (lstat(path, &st) < 0) { emit_error(id, errno); return; }
    unsigned char r[32];
    memset(r, 0, sizeof r);
    r[0] = S_ISREG(st.st_mode) ? 0 : S_ISDIR(st.st_mode) ? 1 : S_ISLNK(st.st_mode) ? 2 : 3;
    put32(r + 4, (uint32_t)st.st_mode);
    put64(r + 8, (uint64_t)st.st_size);
    put64(r + 16, (uint64_t)(int64_t)st.st_mtim.tv_sec);
    put32(r + 24, (uint32_t)st.st_mtim.tv_nsec);
    size_t tlen = 0;
    if (S_ISLNK(st.st_mode)) {
        if (realpath(path, target)) {
            tlen = strlen(target);
        } else {
            ssize_t n = readlink(path, target, sizeof target - 1);
            tlen = n > 0 ? (size_t)n : 0;
            r[1] = 1; /* unresolved: the link's own text */
        }
    }
    emit2(R_STAT, id, r, sizeof r, target, tlen);
}

static void req_mkdir(uint32_t id, unsigned char *p, size_t len) {
    char path[PATH_MAX];
    if (len < 4 || !path_ok(p + 4, len - 4)) { emit_error(id, EINVAL); return; }
    uint32_t mode = get32(p) & 07777;
    memcpy(path, p + 4, len - 4); path[len - 4] = 0;
    struct stat st;
    if (mkdir(path, 0700) < 0) {
        if (errno != EEXIST || lstat(path, &st) < 0 || !S_ISDIR(st.st_mode)) {
            emit_error(id, errno == EEXIST ? EEXIST : errno);
            return;
        }
    }
    if (chmod(path, mode) < 0) { emit_error(id, errno); return; }
    emit(R_DONE, id, NULL, 0);
}

static void req_put(uint32_t id, unsigned char *p, size_t len) {
    char path[PATH_MAX];
    if (len < 4 || !path_ok(p + 4, len - 4)) { emit_error(id, EINVAL); return; }
    struct slot *s = claim(id);
    if (!s) { emit_error(id, EBUSY); return; }
    s->state = S_FILE;
    s->file_mode = get32(p) & 07777;
    memcpy(path, p + 4, len - 4); path[len - 4] = 0;
    struct stat st;
    if (lstat(path, &st) == 0 && !S_ISDIR(st.st_mode) && unlink(path) < 0) {
        s->file_err = errno;
        return;
    }
    for (;;) {
        s->file_fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (s->file_fd >= 0 || errno != EINTR) break;
    }
    if (s->file_fd < 0) s->file_err = errno;
}

static void req_data(uint32_t id, unsigned char *p, size_t len) {
    struct slot *s = find(id);
    if (!s || s->state != S_FILE) return; /* a put that failed to start: nothing to write */
    if (s->file_err == 0 && write_all(s->file_fd, p, len) < 0) s->file_err = errno;
}

static void req_end(uint32_t id) {
    struct slot *s = find(id);
    if (!s || s->state != S_FILE) { emit_error(id, EINVAL); return; }
    if (s->file_err == 0 && fchmod(s->file_fd, s->file_mode) < 0) s->file_err = errno;
    if (s->file_fd >= 0 && close(s->file_fd) < 0 && s->file_err == 0 && errno != EINTR)
        s->file_err = errno;
    int err = s->file_err;
    s->state = S_FREE;
    if (err) emit_error(id, err);
    else emit(R_DONE, id, NULL, 0);
}

static void request(int type, uint32_t id, unsigned char *p, size_t len) {
    struct slot *s;
    switch (type) {
    case T_EXEC: req_exec(id, p, len); break;
    case T_TAR: req_tar(id, p, len); break;
    case T_STAT: req_stat(id, p, len); break;
    case T_MKDIR: req_mkdir(id, p, len); break;
    case T_PUT: req_put(id, p, len); break;
    case T_DATA: req_data(id, p, len); break;
    case T_END: req_end(id); break;
    case T_KILL:
        if (len == 4 && (s = find(id)) && s->state == S_PROC && !s->exited) {
            uint32_t sig = get32(p);
            if (sig > 0 && sig < 65) { kill(-s->pid, (int)sig); kill(s->pid, (int)sig); }
        }
        break;
    case T_CREDIT:
        if (len == 4 && (s = find(id)) && s->state == S_PROC) {
            s->credit += get32(p);
            if (s->credit > (1ULL << 32)) s->credit = 1ULL << 32;
        }
        break;
    case T_DROP:
        if ((s = find(id)) && s->state == S_PROC) s->discard = 1;
        break;
    default:
        errno = EPROTO;
        die("unknown request type");
    }
}

/* Handles whole frames in inbuf while there is room for their replies. */
static void process_input(void) {
    size_t off = 0;
    while (inlen - off >= HDR && outlen < OUT_HIGH) {
        unsigned char *h = inbuf + off;
        uint32_t len = get32(h);
        if (len > MAX_FRAME || h[5] || h[6] || h[7]) { errno = EPROTO; die("bad frame"); }
        if (inlen - off < HDR + len) break;
        request(h[4], get32(h + 8), h + HDR, len);
        off += HDR + len;
    }
    memmove(inbuf, inbuf + off, inlen - off);
    inlen -= off;
}

static void reap(void) {
    char drain[64];
    while (read(sigpipe_fds[0], drain, sizeof drain) > 0) {}
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        if (pid == spare.pid) spare_forget(); /* it died unused (killed by a command, say) */
        for (int i = 0; i < MAX_SLOTS; i++)
            if (slots[i].state == S_PROC && slots[i].pid == pid) {
                slots[i].exited = 1;
                slots[i].status = status;
            }
    }
}

static void finish_slots(void) {
    for (int i = 0; i < MAX_SLOTS && outlen < OUT_HIGH; i++) {
        struct slot *s = &slots[i];
        if (s->state != S_PROC || !s->exited || s->fds[0] >= 0 || s->fds[1] >= 0) continue;
        if (!s->discard) {
            int code = WIFEXITED(s->status) ? WEXITSTATUS(s->status)
                       : WIFSIGNALED(s->status) ? 128 + WTERMSIG(s->status) : 255;
            unsigned char p[4];
            put32(p, (uint32_t)code);
            emit(R_EXIT, s->id, p, 4);
        }
        s->state = S_FREE;
    }
}

static void read_child(struct slot *s, int which) {
    size_t want = CHUNK;
    if (!s->discard && s->credit < want) want = (size_t)s->credit;
    if (want == 0) return;
    ssize_t n = read(s->fds[which], iobuf, want);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
    if (n <= 0) { close_fd(&s->fds[which]); return; }
    if (s->discard) return;
    s->credit -= (uint64_t)n;
    emit(which ? R_STDERR : R_STDOUT, s->id, iobuf, (size_t)n);
}

int main(void) {
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    signal(SIGPIPE, SIG_IGN);
    if (pipe2(sigpipe_fds, O_CLOEXEC | O_NONBLOCK) < 0) die("pipe");
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigchld;
    sa.sa_flags = SA_NOCLDSTOP;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGCHLD, &sa, NULL) < 0) die("sigaction");
    fcntl(1, F_SETFL, fcntl(1, F_GETFL) | O_NONBLOCK);
    fcntl(0, F_SETPIPE_SZ, PIPE_SIZE); /* larger reads and writes when they are pipes */
    fcntl(1, F_SETPIPE_SZ, PIPE_SIZE);
    fcntl(0, F_SETFD, FD_CLOEXEC);
    fcntl(1, F_SETFD, FD_CLOEXEC);

    unsigned char hello[16];
    put32(hello, VERSION);
    put32(hello + 4, (uint32_t)getpid());
    put32(hello + 8, (uint32_t)getuid());
    put32(hello + 12, (uint32_t)getgid());
    emit(R_HELLO, 0, hello, sizeof hello);

    static struct pollfd pfd[2 + 2 * MAX_SLOTS];
    static struct slot *owner[2 + 2 * MAX_SLOTS];
    static int which[2 + 2 * MAX_SLOTS];
    int input_open = 1;
    for (;;) {
        /* Before any new request: a command's EXIT just sent, its spare is ready for the next. */
        if (input_open && outlen == 0) spare_start();
        process_input();
        finish_slots();
        if (!input_open && outlen == 0) {
            int busy = 0;
            for (int i = 0; i < MAX_SLOTS; i++) busy |= slots[i].state == S_PROC && !slots[i].discard;
            if (!busy) return 0;
        }
        int n = 0;
        pfd[n].fd = sigpipe_fds[0]; pfd[n].events = POLLIN; owner[n++] = NULL;
        pfd[n].fd = 1; pfd[n].events = outlen ? POLLOUT : 0; owner[n++] = NULL;
        int stdin_at = -1;
        if (input_open && inlen < IN_CAP && outlen < OUT_HIGH) {
            stdin_at = n;
            pfd[n].fd = 0; pfd[n].events = POLLIN; owner[n++] = NULL;
        }
        if (outlen < OUT_HIGH)
            for (int i = 0; i < MAX_SLOTS; i++) {
                struct slot *s = &slots[i];
                if (s->state != S_PROC || (!s->discard && s->credit == 0)) continue;
                for (int w = 0; w < 2; w++)
                    if (s->fds[w] >= 0) {
                        pfd[n].fd = s->fds[w]; pfd[n].events = POLLIN;
                        owner[n] = s; which[n++] = w;
                    }
            }
        if (poll(pfd, (nfds_t)n, -1) < 0) {
            if (errno == EINTR) continue;
            die("poll");
        }
        if (pfd[0].revents) reap();
        if (pfd[1].revents & (POLLERR | POLLHUP)) return 0;
        if (pfd[1].revents & POLLOUT) flush_out();
        if (stdin_at >= 0 && pfd[stdin_at].revents) {
            ssize_t got = read(0, inbuf + inlen, IN_CAP - inlen);
            if (got > 0) inlen += (size_t)got;
            else if (got == 0 || (errno != EINTR && errno != EAGAIN)) input_open = 0;
        }
        for (int i = 2; i < n; i++)
            if (owner[i] && pfd[i].revents && owner[i]->state == S_PROC && outlen < OUT_HIGH)
                read_child(owner[i], which[i]);
        if (outlen) flush_out();
    }
}
