// SPDX-License-Identifier: GPL-2.0
/*
 * cadr node sensor: CO-RE BPF programs on tracepoints only (tp_btf), because the kernels
 * we target may have no kprobes, fentry or LSM programs (see README.md in this folder).
 *
 *   tp_btf/sched_process_exec|fork|exit  process lifecycle, exec_id = (tgid, leader start)
 *   tp_btf/sys_exit                      opens, connect/accept/listen, DNS sends, privilege ops
 *   tp_btf/sys_enter                     credentials before set*id/capset (old values)
 *   tp_btf/cgroup_mkdir|rmdir            cgroup id -> path for container attribution
 *
 * Every record goes to one ring buffer, submitted without a wake-up unless the backlog
 * passes cfg.wakeup_bytes: the consumer polls every few ms and drains in bulk, which is
 * what keeps a 200k+/s flood loss-free (per-record wake-ups cost more than the record).
 * Lost records are counted per CPU in `stats`; nothing is dropped silently.
 *
 * Syscall numbers are x86_64's; 32-bit compat syscalls are not traced (README).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "cadr.h"

char LICENSE[] SEC("license") = "GPL";

/* Written by the loader before load (sensors/ebpf/loader.py); constant to the verifier,
 * so disabled features are dead code. Alone in its section so it sits at offset 0. */
const volatile struct cadr_config cfg SEC(".rodata.cfg") = {
	.wakeup_bytes = 1 << 20,
	.args_max = 1024,
	.features = FEAT_PROC | FEAT_FILE | FEAT_NET | FEAT_DNS | FEAT_PRIV,
	.dns_ports = {53, 0, 0, 0},
};

#define EV_BUF 32768
#define EV_MASK (16384 - 1)
#define WORK_PATH 4096
#define MAX_DEPTH 48
#define SENSITIVE_DEPTH 4

#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define S_IFDIR 0040000
#define S_IFCHR 0020000

#define O_WRONLY 00000001
#define O_RDWR 00000002
#define O_CREAT 00000100
#define O_TRUNC 00001000
#define O_APPEND 00002000

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define EINPROGRESS 115
#define SIGNAL_GROUP_EXIT 0x00000004
#define PF_KTHREAD 0x00200000

struct scratch {
	__u8 ev[EV_BUF];
	__u8 work[WORK_PATH + 512];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 << 20); /* loader sets the real size */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cadr_stats);
} stats SEC(".maps");

/* One scratch area per CPU (an ARRAY: per-CPU values are capped at 32 KiB). All programs
 * run in process context with preemption off, so a CPU never nests two users of it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 256); /* loader sets the number of possible CPUs */
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

struct open_key {
	__u64 scope; /* cgroup id, or tgid<<32 ^ start for per-process keys */
	__u64 ino;
	__u64 dev;
};

/* First open per (cgroup, file): value 1 = plain, 2 = under a sensitive prefix. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct open_key);
	__type(value, __u8);
} open_seen SEC(".maps");

/* First open per (process, sensitive file). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct open_key);
	__type(value, __u8);
} open_seen_proc SEC(".maps");

struct sensitive_key {
	char p[CADR_SENSITIVE_KEY];
};

/* Path prefixes (whole components: "/etc/shadow" matches "/etc/shadow" and below). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct sensitive_key);
	__type(value, __u8);
} sensitive SEC(".maps");

struct cred_stash {
	__u32 euid;
	__u32 egid;
	__u64 caps;
};

/* Credentials at sys_enter of set*id/capset, read back at sys_exit. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct cred_stash);
} cred_before SEC(".maps");

/* A kernel pointer we hold as a plain value (read by a helper, or kept across bpf_loop
 * iterations) made a read-only BTF pointer again: its fields are then direct loads (the
 * JIT's fault-tolerant loads, a few ns) instead of one bpf_probe_read_kernel call each
 * (~50-80 ns here). The verifier inlines the kfunc to a move; the loads read what a probe
 * read would (a bad pointer reads as zero). */
extern void *bpf_rdonly_cast(const void *obj__ign, __u32 btf_id) __ksym;
#define RDONLY(type, p) ((type *)bpf_rdonly_cast((void *)(p), bpf_core_type_id_kernel(type)))

/* Mask a value in a way the compiler cannot drop (it often proves the mask redundant and
 * removes it, and then the verifier cannot see the bound on the helper's size argument). */
#define BOUND(v, mask)                                                                              \
	({                                                                                          \
		__u64 __v = (v);                                                                    \
		asm volatile("%0 &= %1" : "+r"(__v) : "i"(mask));                                   \
		__v;                                                                                \
	})

/* Never touched at run time: it puts every record type into the object's BTF, so the test
 * suite can check sensors/ebpf/layout.py against the compiled layout. */
struct cadr_layout {
	struct cadr_exec exec;
	struct cadr_fork fork;
	struct cadr_exit exit;
	struct cadr_open open;
	struct cadr_net net;
	struct cadr_dns dns;
	struct cadr_priv priv;
	struct cadr_cgroup cgroup;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cadr_layout);
} layout SEC(".maps");

/* Is the current task the sensor? Compared in the sensor's own pid namespace: a sensor in
 * a pod does not know its host pid, and a bare pid compare would hit an unrelated task. */
static __always_inline int is_self(void)
{
	struct bpf_pidns_info ns;

	if (!cfg.self_ns_ino)
		return 0;
	if (bpf_get_ns_current_pid_tgid(cfg.self_ns_dev, cfg.self_ns_ino, &ns, sizeof(ns)))
		return 0; /* another pid namespace */
	return ns.tgid == cfg.self_tgid;
}

static __always_inline struct cadr_stats *get_stats(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&stats, &zero);
}

static __always_inline struct scratch *get_scratch(void)
{
	__u32 cpu = bpf_get_smp_processor_id();
	return bpf_map_lookup_elem(&scratch, &cpu);
}

/* Wake the consumer only for the record that takes the backlog across the threshold: a
 * wake-up is an irq_work (a self-IPI, costly under virtualization), and forcing one per
 * record while a busy consumer catches up made every record several times dearer. The
 * consumer also drains on a short timer, so a wake-up lost to a race costs only latency.
 * A record takes its size plus the 8-byte header, rounded up to 8, in the ring; `queued`
 * says whether the backlog already counts it (reserved, then submitted) or not
 * (bpf_ringbuf_output: asked before the copy). Without that distinction the output path
 * woke on the record after the crossing, and missed when it was smaller than the one
 * that crossed. */
static __always_inline __u64 wake_flags(__u64 size, int queued)
{
	__u64 rec = (size + 8 + 7) & ~7ULL;
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	__u64 before = queued ? (avail > rec ? avail - rec : 0) : avail;

	if (before < cfg.wakeup_bytes && before + rec >= cfg.wakeup_bytes)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

static __always_inline void count_output(struct cadr_stats *st, long err, __u64 size)
{
	if (!st)
		return;
	if (err) {
		st->drops++;
		/* a full ring (the consumer fell behind) or not: since 6.15 the reservation
		 * takes a resilient spinlock that can give up (deadlock check, timeout) */
		if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) + ((size + 8 + 7) & ~7ULL) <=
		    bpf_ringbuf_query(&events, BPF_RB_RING_SIZE))
			st->drops_not_full++;
	} else {
		st->events++;
		st->bytes += size;
	}
}

/* Emit a record built in scratch (variable size). */
static __always_inline void emit(struct cadr_stats *st, void *data, __u64 size)
{
	if (size > EV_BUF)
		return;
	long err = bpf_ringbuf_output(&events, data, size, wake_flags(size, 0));
	count_output(st, err, size);
}

/* `t` is a BTF pointer (a tp_btf argument or bpf_get_current_task_btf()), so fields are
 * read with direct loads the verifier guards (no helper call per field, which is what
 * BPF_CORE_READ costs); only the variably indexed arrays go through a probe read. */
static __always_inline void fill_hdr(struct cadr_hdr *h, struct task_struct *t, __u16 type, __u16 size,
				     struct cadr_stats *st, int is_current)
{
	struct task_struct *parent = t->real_parent;
	struct pid *tp = t->thread_pid;
	struct upid up = {};
	unsigned int level;

	h->type = type;
	h->size = size;
	h->cpu = bpf_get_smp_processor_id();
	h->seq = st ? st->seq++ : 0;
	h->ktime = bpf_ktime_get_boot_ns();
	h->pid = t->tgid;
	h->tid = t->pid;
	h->start = t->group_leader->start_boottime;
	h->ppid = parent->tgid;
	h->pstart = parent->group_leader->start_boottime;
	h->uid = t->cred->uid.val;
	if (is_current)
		h->cgroup = bpf_get_current_cgroup_id();
	else
		h->cgroup = t->cgroups->dfl_cgrp->kn->id;
	h->cgroup_v1 = 0;
	if (cfg.v1_subsys) {
		__u32 idx = cfg.v1_subsys - 1;
		struct cgroup_subsys_state *css = 0;
		if (idx < 12) {
			bpf_core_read(&css, sizeof(css), &t->cgroups->subsys[idx]);
			h->cgroup_v1 = BPF_CORE_READ(css, cgroup, kn, id);
		}
	}
	h->mnt_ns = t->nsproxy->mnt_ns->ns.inum;
	level = tp->level;
	bpf_core_read(&up, sizeof(up), &tp->numbers[level & 31]);
	h->pid_ns = BPF_CORE_READ(up.ns, ns.inum);
	bpf_probe_read_kernel(&h->comm, sizeof(h->comm), &t->comm);
}

/* ---------------------------------------------------------------- path walking ---- */

struct walk_ctx {
	struct dentry *dentry;
	struct vfsmount *vfsmnt;
	struct mount *mnt;
	struct dentry *root_dentry;
	struct vfsmount *root_mnt;
	__u8 *buf;
	__u32 pos;
	__u32 depth;
	__u32 trunc;
	__u16 starts[SENSITIVE_DEPTH + 1]; /* component starts nearest the root, newest last */
};

static long walk_step(__u32 i, struct walk_ctx *c)
{
	struct dentry *d, *mnt_root, *parent;
	const unsigned char *name;
	__u32 len;

	if (c->dentry == c->root_dentry && c->vfsmnt == c->root_mnt)
		return 1;
	d = RDONLY(struct dentry, c->dentry);
	mnt_root = RDONLY(struct vfsmount, c->vfsmnt)->mnt_root;
	parent = d->d_parent;
	if ((__u64)c->dentry == (__u64)mnt_root) {
		struct mount *m = RDONLY(struct mount, c->mnt);
		struct mount *mp = m->mnt_parent;
		if (!mp || (__u64)mp == (__u64)c->mnt)
			return 1; /* the global root */
		c->dentry = m->mnt_mountpoint;
		c->mnt = mp;
		c->vfsmnt = (struct vfsmount *)((void *)mp + bpf_core_field_offset(struct mount, mnt));
		return 0;
	}
	/* A disconnected dentry (memfd, or a pseudo file): its own name, then stop, which
	 * gives "/memfd:name" as /proc/PID/exe shows it. */
	int last = (__u64)c->dentry == (__u64)parent;
	name = d->d_name.name;
	if (!name)
		return 1;
	len = d->d_name.len;
	if (len > 255)
		len = 255;
	if (len + 1 > c->pos) {
		c->trunc = 1;
		return 1;
	}
	c->pos -= len;
	__u8 *buf = c->buf;
	if (!buf)
		return 1;
	bpf_probe_read_kernel(buf + BOUND(c->pos, WORK_PATH - 1), BOUND(len, 255), name);
	c->pos -= 1;
	buf[BOUND(c->pos, WORK_PATH - 1)] = '/';
	/* keep the last SENSITIVE_DEPTH+1 starts: after the walk they are the root-most ones */
#pragma unroll
	for (int k = 0; k < SENSITIVE_DEPTH; k++)
		c->starts[k] = c->starts[k + 1];
	c->starts[SENSITIVE_DEPTH] = c->pos;
	c->depth++;
	c->dentry = parent;
	return last;
}

/* Resolve (dentry, vfsmount) to a path relative to the task's root, written backwards
 * into s->work; returns the start offset (path = work[start .. WORK_PATH)). */
static __always_inline __u32 walk_path(struct walk_ctx *c, struct scratch *s, struct dentry *dentry,
				       struct vfsmount *vfsmnt, struct task_struct *task)
{
	c->dentry = dentry;
	c->vfsmnt = vfsmnt;
	c->mnt = (struct mount *)((void *)vfsmnt - bpf_core_field_offset(struct mount, mnt));
	c->root_dentry = task->fs->root.dentry;
	c->root_mnt = task->fs->root.mnt;
	c->buf = s->work;
	c->pos = WORK_PATH;
	c->depth = 0;
	c->trunc = 0;
	bpf_loop(MAX_DEPTH, walk_step, c, 0);
	if (c->dentry != c->root_dentry && c->depth == MAX_DEPTH)
		c->trunc = 1;
	if (c->pos == WORK_PATH) {
		c->pos = WORK_PATH - 1;
		s->work[WORK_PATH - 1] = '/';
	}
	return c->pos;
}

/* Copy the walked path into the record at `off`; returns its length. */
static __always_inline __u32 put_path(struct scratch *s, __u32 off, __u32 start)
{
	__u32 len = WORK_PATH - start;
	if (len >= WORK_PATH || start >= WORK_PATH)
		return 0;
	bpf_probe_read_kernel(s->ev + BOUND(off, EV_MASK), BOUND(len, WORK_PATH - 1), s->work + BOUND(start, WORK_PATH - 1));
	return len;
}

static __always_inline int deleted(struct dentry *d)
{
	return BPF_CORE_READ(d, d_hash.pprev) == 0;
}

/* ---------------------------------------------------------------- process lifecycle ---- */

static __always_inline int is_sock(struct file *f)
{
	if (!f)
		return 0;
	return (BPF_CORE_READ(f, f_inode, i_mode) & S_IFMT) == S_IFSOCK;
}

/* The open file behind `fd` of `t` (a BTF task pointer), as a read-only BTF pointer. */
static __always_inline struct file *fd_file(struct task_struct *t, __u32 fd)
{
	struct fdtable *fdt = t->files->fdt;
	struct file **arr;
	struct file *f = 0;

	if (!fdt || fd >= fdt->max_fds)
		return 0;
	arr = fdt->fd;
	bpf_core_read(&f, sizeof(f), &arr[fd]); /* an array of pointers: no BTF type */
	return f ? RDONLY(struct file, f) : 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(cadr_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct cadr_stats *st;
	struct scratch *s;
	struct cadr_exec *e;
	struct walk_ctx c = {};
	struct file *file;
	__u32 off, start, len, flags = 0;
	unsigned long arg_start, arg_end;

	if (!(cfg.features & FEAT_PROC))
		return 0;
	if (is_self())
		return 0;
	st = get_stats();
	s = get_scratch();
	if (!s)
		return 0;
	e = (struct cadr_exec *)s->ev;
	fill_hdr(&e->h, p, CADR_EXEC, 0, st, 1);
	e->euid = BPF_CORE_READ(p, cred, euid.val);
	e->gid = BPF_CORE_READ(p, cred, gid.val);
	e->egid = BPF_CORE_READ(p, cred, egid.val);

	if (BPF_CORE_READ(p, signal, tty))
		flags |= EXEC_TTY;
	if (is_sock(fd_file(p, 0)))
		flags |= EXEC_STDIN_SOCK;
	if (is_sock(fd_file(p, 1)))
		flags |= EXEC_STDOUT_SOCK;
	if (is_sock(fd_file(p, 2)))
		flags |= EXEC_STDERR_SOCK;

	off = sizeof(*e);
	/* exe: the file actually executed (the interpreter, for #! scripts) */
	file = BPF_CORE_READ(bprm, file);
	struct dentry *exe_dentry = BPF_CORE_READ(file, f_path.dentry);
	start = walk_path(&c, s, exe_dentry, BPF_CORE_READ(file, f_path.mnt), p);
	if (deleted(exe_dentry))
		flags |= EXEC_EXE_DELETED;
	if (c.trunc)
		flags |= EXEC_PATH_TRUNC;
	len = put_path(s, off, start);
	e->exe_len = len;
	off += len;

	start = walk_path(&c, s, BPF_CORE_READ(p, fs, pwd.dentry), BPF_CORE_READ(p, fs, pwd.mnt), p);
	if (c.trunc)
		flags |= EXEC_PATH_TRUNC;
	len = put_path(s, off, start);
	e->cwd_len = len;
	off += len;

	arg_start = BPF_CORE_READ(p, mm, arg_start);
	arg_end = BPF_CORE_READ(p, mm, arg_end);
	len = arg_end > arg_start ? arg_end - arg_start : 0;
	if (len > cfg.args_max) {
		len = cfg.args_max;
		flags |= EXEC_ARGS_TRUNC;
	}
	if (len >= CADR_ARGS_MAX)
		len = CADR_ARGS_MAX - 1;
	if (len && bpf_probe_read_user(s->ev + BOUND(off, EV_MASK), BOUND(len, CADR_ARGS_MAX - 1), (void *)arg_start))
		len = 0;
	e->args_len = len;
	off += len;

	long n = bpf_probe_read_kernel_str(s->ev + BOUND(off, EV_MASK), 256, BPF_CORE_READ(bprm, filename));
	len = n > 0 ? n - 1 : 0;
	e->file_len = len;
	off += len;

	e->flags = flags;
	e->h.size = off;
	emit(st, e, BOUND(off, EV_BUF - 1));
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(cadr_fork, struct task_struct *parent, struct task_struct *child)
{
	struct cadr_stats *st;
	struct cadr_fork *e;

	if (!(cfg.features & FEAT_PROC))
		return 0;
	if (child->pid != child->tgid) /* a thread, not a process */
		return 0;
	if (child->flags & PF_KTHREAD)
		return 0;
	if (is_self()) /* the parent is current */
		return 0;
	st = get_stats();
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_output(st, -1, sizeof(*e));
		if (st)
			st->seq++;
		return 0;
	}
	fill_hdr(&e->h, child, CADR_FORK, sizeof(*e), st, 0);
	bpf_ringbuf_submit(e, wake_flags(sizeof(*e), 1));
	count_output(st, 0, sizeof(*e));
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(cadr_exit, struct task_struct *p)
{
	struct cadr_stats *st;
	struct cadr_exit *e;
	struct signal_struct *sig;

	if (!(cfg.features & FEAT_PROC))
		return 0;
	if (p->flags & PF_KTHREAD)
		return 0;
	sig = p->signal;
	/* the last thread of the group: do_exit decremented signal->live before this point */
	if (BPF_CORE_READ(sig, live.counter) != 0)
		return 0;
	if (is_self())
		return 0;
	st = get_stats();
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_output(st, -1, sizeof(*e));
		if (st)
			st->seq++;
		return 0;
	}
	fill_hdr(&e->h, p, CADR_EXIT, sizeof(*e), st, 1);
	if (BPF_CORE_READ(sig, flags) & SIGNAL_GROUP_EXIT)
		e->code = BPF_CORE_READ(sig, group_exit_code);
	else
		e->code = BPF_CORE_READ(p, exit_code);
	e->pad = 0;
	bpf_ringbuf_submit(e, wake_flags(sizeof(*e), 1));
	count_output(st, 0, sizeof(*e));
	return 0;
}

/* ---------------------------------------------------------------- file opens ---- */

#define PROC_SUPER_MAGIC 0x9fa0
#define SYSFS_MAGIC 0x62656572
#define CGROUP_SUPER_MAGIC 0x27e0eb
#define CGROUP2_SUPER_MAGIC 0x63677270
#define DEVPTS_SUPER_MAGIC 0x1cd1
#define TRACEFS_MAGIC 0x74726163
#define DEBUGFS_MAGIC 0x64626720
#define SECURITYFS_MAGIC 0x73636673
#define BPF_FS_MAGIC 0xcafe4a11

static __always_inline int pseudo_fs(__u64 magic)
{
	switch (magic) {
	case PROC_SUPER_MAGIC:
	case SYSFS_MAGIC:
	case CGROUP_SUPER_MAGIC:
	case CGROUP2_SUPER_MAGIC:
	case DEVPTS_SUPER_MAGIC:
	case TRACEFS_MAGIC:
	case DEBUGFS_MAGIC:
	case SECURITYFS_MAGIC:
	case BPF_FS_MAGIC:
		return 1;
	}
	return 0;
}

/* Writes to /dev/null, /dev/zero, /dev/full, /dev/(u)random and terminals are noise. */
static __always_inline int noise_chardev(__u32 rdev)
{
	__u32 major = rdev >> 20, minor = rdev & 0xfffff;
	if (major == 1 && (minor == 3 || minor == 5 || minor == 7 || minor == 8 || minor == 9))
		return 1;
	return major == 4 || major == 5 || (major >= 136 && major <= 143);
}

/* Is the walked path (or one of its first SENSITIVE_DEPTH component prefixes) listed? */
static __always_inline int is_sensitive(struct walk_ctx *c, struct scratch *s, __u32 start)
{
	struct sensitive_key key;
	__u32 depth = c->depth;

	for (int k = 1; k <= SENSITIVE_DEPTH + 1; k++) {
		__u32 end;
		if (k > depth)
			break;
		if (k == depth)
			end = WORK_PATH;
		else
			end = c->starts[SENSITIVE_DEPTH - k];
		if (end <= start || end - start >= CADR_SENSITIVE_KEY)
			break;
		__builtin_memset(&key, 0, sizeof(key));
		bpf_probe_read_kernel(&key.p, BOUND(end - start, CADR_SENSITIVE_KEY - 1),
				      s->work + BOUND(start, WORK_PATH - 1));
		if (bpf_map_lookup_elem(&sensitive, &key))
			return 1;
	}
	return 0;
}

static __always_inline void on_open(struct pt_regs *regs, long nr, long ret, struct task_struct *t)
{
	struct cadr_stats *st = get_stats();
	struct scratch *s;
	struct cadr_open *e;
	struct walk_ctx c = {};
	struct open_key key = {};
	struct file *f;
	struct inode *ino;
	__u32 flags, mode, start, len;
	__u64 magic;
	__u8 reason = 0, *seen;

	if (st)
		st->open_seen++;
	switch (nr) {
	case 2: /* open(path, flags, mode) */
		flags = regs->si;
		break;
	case 85: /* creat */
		flags = O_CREAT | O_WRONLY | O_TRUNC;
		break;
	case 437: { /* openat2(dfd, path, how, size): how->flags */
		__u64 f64 = 0;
		bpf_probe_read_user(&f64, sizeof(f64), (void *)regs->dx);
		flags = f64;
		break;
	}
	default: /* openat(dfd, path, flags, mode) */
		flags = regs->dx;
	}
	f = fd_file(t, ret);
	if (!f)
		return;
	ino = f->f_inode;
	if (!ino)
		return;
	mode = ino->i_mode;
	magic = ino->i_sb->s_magic;
	key.ino = ino->i_ino;
	key.dev = ino->i_sb->s_dev;

	if (flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC | O_APPEND)) {
		if ((mode & S_IFMT) == S_IFCHR && noise_chardev(ino->i_rdev))
			goto suppressed;
		reason = OPEN_WRITE;
	} else {
		if ((mode & S_IFMT) == S_IFDIR || pseudo_fs(magic))
			goto suppressed;
		key.scope = bpf_get_current_cgroup_id();
		seen = bpf_map_lookup_elem(&open_seen, &key);
		if (seen && *seen == 1)
			goto suppressed;
		if (seen) {
			struct open_key pk = key;
			__u8 one = 1;
			pk.scope = ((__u64)t->tgid << 32) ^ t->group_leader->start_boottime;
			if (bpf_map_lookup_elem(&open_seen_proc, &pk))
				goto suppressed;
			bpf_map_update_elem(&open_seen_proc, &pk, &one, BPF_ANY);
			reason = OPEN_SENSITIVE;
		}
	}

	s = get_scratch();
	if (!s)
		return;
	e = (struct cadr_open *)s->ev;
	start = walk_path(&c, s, f->f_path.dentry, f->f_path.mnt, t);
	if (!reason) {
		__u8 v = 1;
		reason = OPEN_FIRST;
		if (is_sensitive(&c, s, start)) {
			struct open_key pk = key;
			__u8 one = 1;
			v = 2;
			reason = OPEN_SENSITIVE;
			pk.scope = ((__u64)t->tgid << 32) ^ t->group_leader->start_boottime;
			bpf_map_update_elem(&open_seen_proc, &pk, &one, BPF_ANY);
		}
		bpf_map_update_elem(&open_seen, &key, &v, BPF_ANY);
	}
	fill_hdr(&e->h, t, CADR_OPEN, 0, st, 1);
	e->flags = flags;
	e->mode = mode;
	e->fd = ret;
	e->reason = reason;
	e->trunc = c.trunc;
	e->ino = key.ino;
	e->dev = key.dev;
	e->fs_magic = magic;
	if (c.trunc && st)
		st->path_trunc++;
	len = put_path(s, sizeof(*e), start);
	e->path_len = len;
	e->h.size = sizeof(*e) + len;
	emit(st, e, BOUND(sizeof(*e) + len, EV_BUF - 1));
	return;
suppressed:
	if (st)
		st->open_suppressed++;
}

/* ---------------------------------------------------------------- network ---- */

static __always_inline struct sock *fd_sock(struct task_struct *t, __u32 fd)
{
	struct file *f = fd_file(t, fd);
	struct socket *sock;

	if (!is_sock(f))
		return 0;
	sock = BPF_CORE_READ(f, private_data);
	return BPF_CORE_READ(sock, sk);
}

static __always_inline void on_net(struct task_struct *t, __u16 type, __u32 fd, long ret)
{
	struct cadr_stats *st;
	struct cadr_net *e;
	struct sock *sk = fd_sock(t, fd);
	__u16 family, proto;

	if (!sk)
		return;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return;
	proto = BPF_CORE_READ(sk, sk_protocol);
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return;
	st = get_stats();
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_output(st, -1, sizeof(*e));
		if (st)
			st->seq++;
		return;
	}
	fill_hdr(&e->h, t, type, sizeof(*e), st, 1);
	e->family = family;
	e->proto = proto;
	e->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	e->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	__builtin_memset(e->saddr, 0, 32);
	if (family == AF_INET) {
		__u32 sa = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		__u32 da = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		__builtin_memcpy(e->saddr, &sa, 4);
		__builtin_memcpy(e->daddr, &da, 4);
	} else {
		BPF_CORE_READ_INTO(&e->saddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&e->daddr, sk, __sk_common.skc_v6_daddr);
	}
	e->ret = ret;
	e->fd = fd;
	bpf_ringbuf_submit(e, wake_flags(sizeof(*e), 1));
	count_output(st, 0, sizeof(*e));
}

/* ---------------------------------------------------------------- DNS ---- */

static __always_inline int dns_port(__u16 port)
{
#pragma unroll
	for (int i = 0; i < CADR_DNS_PORTS; i++)
		if (cfg.dns_ports[i] && cfg.dns_ports[i] == port)
			return 1;
	return 0;
}

struct sockaddr_any {
	__u16 family;
	__u16 port; /* network order */
	__u32 v4_or_flow;
	__u8 v6[16];
};

/* A datagram of `len` bytes at user `buf` went to (`name`, or the socket's peer). */
static __always_inline void on_dns(struct task_struct *t, __u32 fd, void *buf, __u64 len, void *name)
{
	struct cadr_stats *st;
	struct scratch *s;
	struct cadr_dns *e;
	struct sock *sk;
	struct sockaddr_any sa = {};
	__u16 family, port;

	if (len < 12 || len > 4096)
		return;
	sk = fd_sock(t, fd);
	if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_UDP)
		return;
	if (name) {
		if (bpf_probe_read_user(&sa, sizeof(sa), name))
			return;
		family = sa.family;
		port = bpf_ntohs(sa.port);
	} else {
		family = BPF_CORE_READ(sk, __sk_common.skc_family);
		port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	}
	if (!dns_port(port))
		return;
	s = get_scratch();
	if (!s)
		return;
	st = get_stats();
	e = (struct cadr_dns *)s->ev;
	fill_hdr(&e->h, t, CADR_DNS, 0, st, 1);
	e->family = family;
	e->dport = port;
	e->proto = IPPROTO_UDP;
	__builtin_memset(e->daddr, 0, 16);
	if (name) {
		if (family == AF_INET)
			__builtin_memcpy(e->daddr, &sa.v4_or_flow, 4);
		else
			__builtin_memcpy(e->daddr, sa.v6, 16);
	} else if (family == AF_INET) {
		__u32 da = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		__builtin_memcpy(e->daddr, &da, 4);
	} else {
		BPF_CORE_READ_INTO(&e->daddr, sk, __sk_common.skc_v6_daddr);
	}
	if (len > CADR_DNS_MAX)
		len = CADR_DNS_MAX;
	if (bpf_probe_read_user(s->ev + sizeof(*e), BOUND(len, 2 * CADR_DNS_MAX - 1), buf))
		return;
	e->len = len;
	e->h.size = sizeof(*e) + len;
	emit(st, e, BOUND(sizeof(*e) + len, EV_BUF - 1));
}

static __always_inline void on_sendmsg(struct task_struct *t, __u32 fd, struct user_msghdr *um)
{
	struct user_msghdr m;
	struct iovec iov;

	if (bpf_probe_read_user(&m, sizeof(m), um))
		return;
	if (!m.msg_iov || bpf_probe_read_user(&iov, sizeof(iov), m.msg_iov))
		return;
	on_dns(t, fd, iov.iov_base, iov.iov_len, m.msg_namelen ? m.msg_name : 0);
}

/* ---------------------------------------------------------------- privilege ---- */

static __always_inline __u64 cap_eff(struct task_struct *t)
{
	kernel_cap_t c = BPF_CORE_READ(t, cred, cap_effective);
	__u64 v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), &c);
	return v;
}

static __always_inline long put_ustr(struct scratch *s, __u32 off, const void *p, __u32 max)
{
	long n;
	if (!p)
		return 0;
	n = bpf_probe_read_user_str(s->ev + BOUND(off, EV_MASK), BOUND(max, 1023), p);
	return n > 0 ? n - 1 : 0;
}

static __always_inline void on_priv(struct pt_regs *regs, long nr, long ret, struct task_struct *t)
{
	struct cadr_stats *st;
	struct scratch *s;
	struct cadr_priv *e;
	struct cred_stash *before = 0;
	__u64 id = bpf_get_current_pid_tgid();
	__u16 op;
	__u32 off;
	long n;

	switch (nr) {
	case 105: op = OP_SETUID; break;
	case 106: op = OP_SETGID; break;
	case 113: op = OP_SETREUID; break;
	case 114: op = OP_SETREGID; break;
	case 117: op = OP_SETRESUID; break;
	case 119: op = OP_SETRESGID; break;
	case 122: op = OP_SETFSUID; break;
	case 123: op = OP_SETFSGID; break;
	case 126: op = OP_CAPSET; break;
	case 101: {
		long req = regs->di;
		/* TRACEME, POKETEXT/DATA/USER, SETREGS, SETFPREGS, ATTACH, SETREGSET, SEIZE */
		if (!(req == 0 || req == 4 || req == 5 || req == 6 || req == 13 || req == 15 || req == 16 ||
		      req == 0x4205 || req == 0x4206))
			return;
		op = OP_PTRACE;
		break;
	}
	case 272: op = OP_UNSHARE; break;
	case 308: op = OP_SETNS; break;
	case 165: op = OP_MOUNT; break;
	case 429: op = OP_MOVE_MOUNT; break;
	case 319: op = OP_MEMFD_CREATE; break;
	case 321: {
		long cmd = regs->di;
		/* PROG_LOAD, PROG_ATTACH, RAW_TRACEPOINT_OPEN, LINK_CREATE */
		if (!(cmd == 5 || cmd == 8 || cmd == 17 || cmd == 28))
			return;
		op = OP_BPF;
		break;
	}
	case 175: op = OP_INIT_MODULE; break;
	case 313: op = OP_FINIT_MODULE; break;
	case 176: op = OP_DELETE_MODULE; break;
	case 41: op = OP_PACKET_SOCKET; break;
	case 425: op = OP_IO_URING_SETUP; break;
	case 86: case 265: op = OP_HARDLINK; break;
	case 88: case 266: op = OP_SOFTLINK; break;
	default:
		return;
	}
	if (op <= OP_CAPSET) {
		before = bpf_map_lookup_elem(&cred_before, &id);
	}
	s = get_scratch();
	if (!s)
		goto out;
	st = get_stats();
	e = (struct cadr_priv *)s->ev;
	fill_hdr(&e->h, t, CADR_PRIV, 0, st, 1);
	e->op = op;
	e->ret = ret;
	e->arg0 = regs->di;
	e->arg1 = regs->si;
	e->new_uid = BPF_CORE_READ(t, cred, euid.val);
	e->new_gid = BPF_CORE_READ(t, cred, egid.val);
	e->new_caps = cap_eff(t);
	if (before) {
		e->old_uid = before->euid;
		e->old_gid = before->egid;
		e->old_caps = before->caps;
	} else {
		e->old_uid = e->new_uid;
		e->old_gid = e->new_gid;
		e->old_caps = e->new_caps;
	}
	e->s1_len = e->s2_len = e->s3_len = 0;
	off = sizeof(*e);
	switch (op) {
	case OP_MOUNT: /* source, target, fstype; flags in arg0 */
		e->arg0 = regs->r10;
		n = put_ustr(s, off, (void *)regs->di, 512);
		e->s1_len = n;
		off += n;
		n = put_ustr(s, off, (void *)regs->si, 512);
		e->s2_len = n;
		off += n;
		n = put_ustr(s, off, (void *)regs->dx, 64);
		e->s3_len = n;
		off += n;
		break;
	case OP_MOVE_MOUNT: /* target path */
		e->arg0 = regs->r8;
		n = put_ustr(s, off, (void *)regs->r10, 512);
		e->s2_len = n;
		off += n;
		break;
	case OP_MEMFD_CREATE:
	case OP_DELETE_MODULE: /* name */
		n = put_ustr(s, off, (void *)regs->di, 256);
		e->s1_len = n;
		off += n;
		break;
	case OP_HARDLINK:
	case OP_SOFTLINK: { /* s1 = the existing path (a symlink's content), s2 = the new link, as passed */
		void *old = (void *)regs->di, *new = (void *)regs->si;

		if (nr == 265) { /* linkat(olddirfd, oldpath, newdirfd, newpath, flags) */
			old = (void *)regs->si;
			new = (void *)regs->r10;
		} else if (nr == 266) { /* symlinkat(target, newdirfd, linkpath) */
			new = (void *)regs->dx;
		}
		n = put_ustr(s, off, old, 512);
		e->s1_len = n;
		off += n;
		n = put_ustr(s, off, new, 512);
		e->s2_len = n;
		off += n;
		break;
	}
	case OP_INIT_MODULE: /* params */
		n = put_ustr(s, off, (void *)regs->dx, 512);
		e->s1_len = n;
		off += n;
		break;
	case OP_FINIT_MODULE:
		n = put_ustr(s, off, (void *)regs->si, 512);
		e->s1_len = n;
		off += n;
		break;
	}
	e->h.size = off;
	emit(st, e, BOUND(off, EV_BUF - 1));
out:
	if (before)
		bpf_map_delete_elem(&cred_before, &id);
}

/* ---------------------------------------------------------------- syscall dispatch ---- */

SEC("tp_btf/sys_enter")
int BPF_PROG(cadr_sys_enter, struct pt_regs *regs, long id)
{
	struct task_struct *t;
	struct cred_stash c;
	__u64 pid_tgid;

	if (!(cfg.features & FEAT_PRIV))
		return 0;
	switch (id) {
	case 105: case 106: case 113: case 114: case 117: case 119: case 122: case 123: case 126:
		break;
	default:
		return 0;
	}
	if (is_self())
		return 0;
	pid_tgid = bpf_get_current_pid_tgid();
	t = bpf_get_current_task_btf();
	c.euid = BPF_CORE_READ(t, cred, euid.val);
	c.egid = BPF_CORE_READ(t, cred, egid.val);
	c.caps = cap_eff(t);
	bpf_map_update_elem(&cred_before, &pid_tgid, &c, BPF_ANY);
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(cadr_sys_exit, struct pt_regs *regs, long ret)
{
	struct task_struct *t;
	long nr = regs->orig_ax;

	switch (nr) {
	case 2: case 85: case 257: case 437: /* open, creat, openat, openat2 */
		if (!(cfg.features & FEAT_FILE) || ret < 0)
			return 0;
		break;
	case 42: /* connect */
		if (!(cfg.features & FEAT_NET) || (ret != 0 && ret != -EINPROGRESS))
			return 0;
		break;
	case 43: case 288: case 50: /* accept, accept4, listen */
		if (!(cfg.features & FEAT_NET) || ret < 0)
			return 0;
		break;
	case 41: /* socket: only AF_PACKET (17), which sniffs and forges frames */
		if (!(cfg.features & FEAT_PRIV) || ret < 0 || regs->di != 17)
			return 0;
		break;
	case 425: /* io_uring_setup */
		if (!(cfg.features & FEAT_PRIV) || ret < 0)
			return 0;
		break;
	case 86: case 88: case 265: case 266: /* link, symlink, linkat, symlinkat: links made */
		if (!(cfg.features & FEAT_FILE) || ret != 0)
			return 0;
		break;
	case 1: /* write: DNS over a connected UDP socket (Go's resolver) */
		if (!(cfg.features & FEAT_DNS) || ret < 12 || ret > CADR_DNS_MAX)
			return 0;
		break;
	case 44: case 46: case 307: /* sendto, sendmsg, sendmmsg */
		if (!(cfg.features & FEAT_DNS) || ret <= 0)
			return 0;
		break;
	case 105: case 106: case 113: case 114: case 117: case 119: case 122: case 123: case 126:
	case 101: case 272: case 308: case 165: case 429: case 319: case 321: case 175: case 313: case 176:
		if (!(cfg.features & FEAT_PRIV))
			return 0;
		break;
	default:
		return 0;
	}
	if (is_self())
		return 0; /* (sys_enter stashed nothing for us either) */
	t = bpf_get_current_task_btf();
	switch (nr) {
	case 2: case 85: case 257: case 437:
		on_open(regs, nr, ret, t);
		break;
	case 42:
		on_net(t, CADR_CONNECT, regs->di, ret);
		break;
	case 43: case 288:
		on_net(t, CADR_ACCEPT, ret, ret);
		break;
	case 50:
		on_net(t, CADR_LISTEN, regs->di, ret);
		break;
	case 1:
		on_dns(t, regs->di, (void *)regs->si, ret, 0);
		break;
	case 44:
		on_dns(t, regs->di, (void *)regs->si, ret, (void *)regs->r8);
		break;
	case 46:
		on_sendmsg(t, regs->di, (struct user_msghdr *)regs->si);
		break;
	case 307: { /* sendmmsg: glibc sends the A and AAAA questions together */
		struct mmsghdr *v = (struct mmsghdr *)regs->si;
		on_sendmsg(t, regs->di, &v[0].msg_hdr);
		if (ret > 1)
			on_sendmsg(t, regs->di, &v[1].msg_hdr);
		break;
	}
	default:
		on_priv(regs, nr, ret, t);
	}
	return 0;
}

/* ---------------------------------------------------------------- cgroups ---- */

static __always_inline void on_cgroup(struct cgroup *cgrp, const char *path, __u16 type)
{
	struct cadr_stats *st = get_stats();
	struct scratch *s = get_scratch();
	struct cadr_cgroup *e;
	long n;

	if (!s)
		return;
	e = (struct cadr_cgroup *)s->ev;
	fill_hdr(&e->h, bpf_get_current_task_btf(), type, 0, st, 1);
	e->id = BPF_CORE_READ(cgrp, kn, id);
	e->hierarchy = BPF_CORE_READ(cgrp, root, hierarchy_id);
	e->pad = 0;
	n = bpf_probe_read_kernel_str(s->ev + sizeof(*e), CADR_PATH_MAX, path);
	e->path_len = n > 0 ? n - 1 : 0;
	e->h.size = sizeof(*e) + e->path_len;
	emit(st, e, BOUND(sizeof(*e) + e->path_len, EV_BUF - 1));
}

SEC("tp_btf/cgroup_mkdir")
int BPF_PROG(cadr_cgroup_mkdir, struct cgroup *cgrp, const char *path)
{
	on_cgroup(cgrp, path, CADR_CGROUP_MKDIR);
	return 0;
}

SEC("tp_btf/cgroup_rmdir")
int BPF_PROG(cadr_cgroup_rmdir, struct cgroup *cgrp, const char *path)
{
	on_cgroup(cgrp, path, CADR_CGROUP_RMDIR);
	return 0;
}
