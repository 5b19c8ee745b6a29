/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Records the cadr BPF programs write into the ring buffer, and the configuration the
 * loader writes into .rodata.cfg before load.
 *
 * The Python decoder (sensors/ebpf/layout.py) mirrors every struct here with a `struct`
 * format; tests/sensors/ebpf/test_layout.py checks both against the BTF of the compiled
 * object, so a change here that is not made there fails the suite instead of decoding
 * garbage. All fields are little-endian, naturally aligned, no implicit padding.
 */
#ifndef CADR_H
#define CADR_H

#define CADR_LAYOUT_VERSION 1

enum cadr_type {
	CADR_EXEC = 1,
	CADR_FORK = 2,
	CADR_EXIT = 3,
	CADR_OPEN = 4,
	CADR_CONNECT = 5,
	CADR_ACCEPT = 6,
	CADR_LISTEN = 7,
	CADR_DNS = 8,
	CADR_PRIV = 9,
	CADR_CGROUP_MKDIR = 10,
	CADR_CGROUP_RMDIR = 11,
};

/* Privilege operations (cadr_priv.op). */
enum cadr_op {
	OP_SETUID = 1,
	OP_SETGID = 2,
	OP_SETREUID = 3,
	OP_SETREGID = 4,
	OP_SETRESUID = 5,
	OP_SETRESGID = 6,
	OP_SETFSUID = 7,
	OP_SETFSGID = 8,
	OP_CAPSET = 9,
	OP_PTRACE = 10,
	OP_UNSHARE = 11,
	OP_SETNS = 12,
	OP_MOUNT = 13,
	OP_MOVE_MOUNT = 14,
	OP_MEMFD_CREATE = 15,
	OP_BPF = 16,
	OP_INIT_MODULE = 17,
	OP_FINIT_MODULE = 18,
	OP_DELETE_MODULE = 19,
	OP_HARDLINK = 20,    /* link, linkat: reported as file_link (s1 = existing path, s2 = new link) */
	OP_SOFTLINK = 21, /* symlink, symlinkat: file_link (s1 = the link's content, s2 = new link) */
	OP_PACKET_SOCKET = 22, /* socket(AF_PACKET, ...): raw frames of the interface (arg1 = type) */
	OP_IO_URING_SETUP = 23, /* io_uring_setup: syscalls submitted through a ring no tracepoint sees */
};

/* cadr_exec.flags */
#define EXEC_TTY (1 << 0)         /* the process has a controlling terminal */
#define EXEC_STDIN_SOCK (1 << 1)  /* fd 0 is a socket */
#define EXEC_STDOUT_SOCK (1 << 2) /* fd 1 is a socket */
#define EXEC_STDERR_SOCK (1 << 3) /* fd 2 is a socket */
#define EXEC_EXE_DELETED (1 << 4) /* the executable is unlinked (or a memfd) */
#define EXEC_ARGS_TRUNC (1 << 5)  /* argv longer than args_max */
#define EXEC_PATH_TRUNC (1 << 6)  /* exe or cwd deeper/longer than the walk allows */

/* cadr_open.reason: why the kernel kept this open */
#define OPEN_WRITE 1     /* opened for writing, creating or truncating */
#define OPEN_SENSITIVE 2 /* under a sensitive prefix: first open per process */
#define OPEN_FIRST 3     /* first open of this file in this cgroup (LRU) */

/* config.features */
#define FEAT_PROC (1 << 0)
#define FEAT_FILE (1 << 1)
#define FEAT_NET (1 << 2)
#define FEAT_DNS (1 << 3)
#define FEAT_PRIV (1 << 4)

#define CADR_PATH_MAX 4096
#define CADR_ARGS_MAX 4096
#define CADR_DNS_MAX 512
#define CADR_SENSITIVE_KEY 64
#define CADR_DNS_PORTS 4

struct cadr_config {
	__u64 self_ns_dev;  /* the sensor's pid namespace (nsfs dev + inode) ... */
	__u64 self_ns_ino;
	__u32 self_tgid;    /* ... and its tgid there: the sensor itself is never traced */
	__u32 wakeup_bytes; /* force a consumer wake-up once this much data waits */
	__u32 v1_subsys;    /* 0: no cgroup v1 id; else 1 + cgroup_subsys_id to read */
	__u32 args_max;     /* bytes of argv copied on exec (<= CADR_ARGS_MAX - 1) */
	__u32 features;     /* FEAT_* */
	__u16 dns_ports[CADR_DNS_PORTS];
	__u32 pad;
};

struct cadr_stats {
	__u64 seq;            /* records attempted on this CPU (event_id sequence) */
	__u64 events;         /* records written */
	__u64 drops;          /* records lost: ring buffer full */
	__u64 bytes;          /* bytes written */
	__u64 path_trunc;     /* paths cut at the walk depth or buffer size */
	__u64 open_seen;      /* opens the kernel looked at */
	__u64 open_suppressed; /* opens filtered out (dedup, pseudo fs, directories) */
	__u64 errors;         /* helper failures (reads of vanished memory ...) */
	__u64 drops_not_full; /* of drops: the ring had room (the kernel's reservation gave up) */
};

struct cadr_hdr {
	__u16 type;
	__u16 size; /* whole record, header included */
	__u32 cpu;
	__u64 seq;
	__u64 ktime; /* CLOCK_BOOTTIME ns */
	__u32 pid;   /* thread group id */
	__u32 tid;
	__u64 start; /* start_boottime of the thread group leader: exec_id */
	__u32 ppid;
	__u32 uid;
	__u64 pstart; /* parent's leader start_boottime: parent_exec_id */
	__u64 cgroup; /* cgroup v2 id (kernfs id of the cgroup directory) */
	__u64 cgroup_v1; /* kernfs id of the cgroup in the configured v1 hierarchy, or 0 */
	__u32 mnt_ns;
	__u32 pid_ns;
	char comm[16];
};

struct cadr_exec {
	struct cadr_hdr h;
	__u32 euid;
	__u32 gid;
	__u32 egid;
	__u32 flags;
	__u16 exe_len;
	__u16 cwd_len;
	__u16 args_len;
	__u16 file_len; /* bprm->filename as passed to execve */
	/* then: exe, cwd, args (NUL separated), filename */
};

struct cadr_fork {
	struct cadr_hdr h; /* the child; ppid/pstart are the parent */
};

struct cadr_exit {
	struct cadr_hdr h;
	__s32 code; /* wait status: (status << 8) | signal */
	__u32 pad;
};

struct cadr_open {
	struct cadr_hdr h;
	__u32 flags; /* open(2) flags as passed */
	__u32 mode;  /* inode mode */
	__s32 fd;
	__u16 path_len;
	__u8 reason; /* OPEN_* */
	__u8 trunc;
	__u64 ino;
	__u32 dev;
	__u32 fs_magic;
	/* then: path */
};

struct cadr_net {
	struct cadr_hdr h;
	__u16 family;
	__u16 proto; /* IPPROTO_* */
	__u16 sport; /* host order */
	__u16 dport; /* host order */
	__u8 saddr[16];
	__u8 daddr[16];
	__s32 ret;
	__u32 fd;
};

struct cadr_dns {
	struct cadr_hdr h;
	__u16 family;
	__u16 dport;
	__u16 len;
	__u16 proto;
	__u8 daddr[16];
	/* then: the UDP payload (the DNS message), up to CADR_DNS_MAX bytes */
};

struct cadr_priv {
	struct cadr_hdr h;
	__u16 op;
	__u16 s1_len;
	__u16 s2_len;
	__u16 s3_len;
	__s64 ret;
	__u64 arg0;
	__u64 arg1;
	__u32 old_uid; /* effective ids before and after */
	__u32 new_uid;
	__u32 old_gid;
	__u32 new_gid;
	__u64 old_caps; /* effective capabilities before and after */
	__u64 new_caps;
	/* then: up to three strings (mount source/target/fstype, memfd name, module params) */
};

struct cadr_cgroup {
	struct cadr_hdr h;
	__u64 id;
	__s32 hierarchy; /* 0: cgroup v2; else the v1 hierarchy id of /proc/cgroups */
	__u16 path_len;
	__u16 pad;
	/* then: path relative to the hierarchy root */
};

#endif /* CADR_H */
