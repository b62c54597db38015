#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <sched.h>
#include <linux/sched.h>

/* Calls system calls with harmless arguments and prints, one line each, `NAME ok` or
 * `NAME errno N`: a seccomp refusal shows as the profile's errno (EPERM, ENOSYS for clone3),
 * an allowed call as success or the kernel's own error for the bad arguments. Built static
 * by tests/it/sandbox_security.rs and run under kiln and under docker. */
static void show(const char *name, long r) {
    if (r >= 0) printf("%s ok\n", name);
    else printf("%s errno %d\n", name, errno);
}
#define P(name, ...) show(name, syscall(__VA_ARGS__))

int main(void) {
    P("add_key", SYS_add_key, "user", "kiln", "x", 1, -2 /* KEY_SPEC_PROCESS_KEYRING */);
    P("keyctl", SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -2, 0);
    P("request_key", SYS_request_key, "user", "kiln-none", NULL, 0);
    P("perf_event_open", SYS_perf_event_open, NULL, 0, -1, -1, 0);
    P("bpf", SYS_bpf, 0, NULL, 0);
    P("mount", SYS_mount, "none", "/nonexistent", "tmpfs", 0, NULL);
    P("umount2", SYS_umount2, "/nonexistent", 0);
    P("setns", SYS_setns, -1, 0);
    P("reboot", SYS_reboot, 0, 0, 0, NULL);
    P("init_module", SYS_init_module, NULL, 0, "");
    P("kexec_load", SYS_kexec_load, 0, 0, NULL, 0);
    P("syslog", SYS_syslog, 10 /* SYSLOG_ACTION_SIZE_BUFFER */, NULL, 0);
    P("acct", SYS_acct, NULL);
    P("iopl", SYS_iopl, 0);
    P("settimeofday", SYS_settimeofday, NULL, NULL);
    P("open_by_handle_at", SYS_open_by_handle_at, -1, NULL, 0);
    P("name_to_handle_at", SYS_name_to_handle_at, -1, "", NULL, NULL, 0);
    P("chroot", SYS_chroot, "/nonexistent");
    P("ptrace", SYS_ptrace, 2 /* PTRACE_PEEKDATA */, 0, 0, 0);
    P("kcmp", SYS_kcmp, 0, 0, 0, 0, 0);
    P("mbind", SYS_mbind, NULL, 0, 0, NULL, 0, 0);
    P("userfaultfd", SYS_userfaultfd, 0x80000 /* O_CLOEXEC */);
    P("personality query", SYS_personality, 0xffffffffUL);
    P("personality 1", SYS_personality, 1UL);
    P("socket vsock", SYS_socket, 40, 1, 0);
    P("socket unix", SYS_socket, 1, 1, 0);
    P("clone3", SYS_clone3, NULL, 0);
    P("unshare user", SYS_unshare, CLONE_NEWUSER);
    P("unshare none", SYS_unshare, 0);
    P("sethostname", SYS_sethostname, "x", 1);
    P("mkdir", SYS_mkdir, "/nonexistent/x", 0755);
    P("read", SYS_read, -1, NULL, 0);
    long pid = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) _exit(0);
    if (pid > 0) waitpid(pid, NULL, 0);
    show("clone newuser", pid);
    pid = syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) _exit(0);
    if (pid > 0) waitpid(pid, NULL, 0);
    show("clone plain", pid);
    return 0;
}
