/* Calls each privileged system call itself (no util-linux binary that gives up first for a
 * non-root user) and prints "<name> <result> <errno name>" per line. Built static on the host
 * by tests/security/test_inside.py and copied into the sandbox. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static void report(const char *name, long rc) {
    printf("%s %ld %s\n", name, rc, rc < 0 ? strerrorname_np(errno) : "-");
}

int main(void) {
    struct timespec now;
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.map_type = BPF_MAP_TYPE_ARRAY;
    attr.key_size = 4; attr.value_size = 4; attr.max_entries = 1;
    report("keyctl", syscall(SYS_keyctl, 1 /* KEYCTL_JOIN_SESSION_KEYRING */, "pyflue"));
    report("bpf", syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof attr));
    int ns = open("/proc/self/ns/mnt", O_RDONLY);
    report("setns", ns < 0 ? -1 : setns(ns, 0));
    clock_gettime(CLOCK_REALTIME, &now);
    report("clock_settime", clock_settime(CLOCK_REALTIME, &now));
    report("mount", mount("none", "/tmp", "tmpfs", 0, NULL));
    report("chroot", chroot("/"));
    report("sethostname", sethostname("pyflue", 6));
    /* Last: under gVisor a user namespace of its own kernel is allowed (docs/security.md),
     * and the calls after it would run with that namespace's capabilities. */
    report("unshare_mount", unshare(CLONE_NEWNS));
    report("unshare_net", unshare(CLONE_NEWNET));
    report("unshare_user", unshare(CLONE_NEWUSER));
    fflush(stdout);
    return 0;
}
