// SPDX-License-Identifier: Apache-2.0
/*
 * libcadrring: the hot loop of the cadr eBPF sensor in C, called from Python through ctypes
 * (sensors/ebpf/native.py). Built by build.sh into build/libcadrring.so; the sensor falls
 * back to the pure Python consumer (ringbuf.py + decode.py) when the library is missing.
 *
 * It walks the BPF ring buffer straight from its mmap (consumer position, producer position,
 * record headers with their BUSY/DISCARD bits, 8-byte alignment) and formats each record of
 * the common kinds (file_open, process_exec/fork/exit, net_connect/accept/listen) into the
 * JSON-lines bytes that decode.py produces for it, byte for byte
 * (tests/sensors/ebpf/test_native.py compares both on records captured from the kernel).
 * Python gets one output buffer per poll, plus an index (line bounds, Kafka key, time, cpu).
 *
 * What stays in Python: the workload of a cgroup (the resolver, the pod cache), handed to C
 * as a ready JSON fragment and cached here per (cgroup v2 id, v1 id) until it expires or the
 * attribution changes; and the rare kinds (dns, privilege, cgroup bookkeeping) and anything
 * malformed, for which the walk stops at the record and lets Python decode it (and count
 * the error), then goes on. Record order is kept.
 *
 * Memory ordering: the producer position and each record header are read with acquire
 * loads (the kernel publishes them with release stores), and the consumer position is
 * advanced with a release store once the records before it have been read, as libbpf does.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/types.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include "cadr.h"

#define CADR_RING_ABI 1

#define RB_BUSY (1U << 31)
#define RB_DISCARD (1U << 30)
#define RB_HDR 8

/* Why a drain call returned (mirrored in native.py). */
enum {
	STOP_EMPTY = 0,    /* no committed record left (or the next one is still being written) */
	STOP_BUDGET = 1,   /* consumed the byte budget of this batch */
	STOP_FULL = 2,     /* output or index buffer full: deliver, then call again */
	STOP_WORKLOAD = 3, /* the pending record's cgroups have no (live) workload fragment */
	STOP_PYTHON = 4,   /* the pending record is for Python (rare kind, or malformed) */
};

#define O_WRITE_MASK (01 | 02 | 0100 | 01000 | 02000) /* decode.py _O_WRITE */

/* One event in the output: its line is out[start:end] (end excludes the newline). */
struct cadr_idx {
	__u32 start;
	__u32 end;
	__u32 key;
	__u32 cpu;
	__s64 ts_ms;
};

/* The arguments and results of one cadr_ring_drain call (mirrored by ctypes). */
struct cadr_drain {
	char *out;          /* output buffer ... */
	__u64 out_cap;      /* ... its size ... */
	__u64 out_len;      /* ... bytes used (in/out) */
	struct cadr_idx *idx;
	__u64 idx_cap;
	__u64 idx_len;      /* entries used (in/out) */
	__u64 budget;       /* ring bytes this batch may still consume (in/out) */
	double now;         /* monotonic clock, for workload expiry */
	__u32 skip_pending; /* Python handled the pending record: consume it first (in; cleared) */
	__u32 reserve;      /* stop with STOP_FULL when fewer output bytes than this remain */
	__u64 events;       /* out: events formatted by this call */
	__u64 records;      /* out: records consumed by this call (discarded and skipped included) */
	__u64 consumed;     /* out: ring bytes consumed by this call */
	__u64 pend_off;     /* out: the pending record, as an offset into the producer mapping */
	__u32 pend_len;
	__u32 pend_type;
	__u64 pend_cgroup;
	__u64 pend_cgroup_v1;
};

struct wl_entry {
	__u64 cgroup;
	__u64 cgroup_v1;
	char *frag; /* "workload":{...} */
	__u32 frag_len;
	__u32 key;
	double expires; /* monotonic; INFINITY: until cleared */
	int used;
};

struct cadr_ring {
	volatile __u64 *cons;  /* consumer page (ours to write) */
	const __u8 *prod_map;  /* producer page, then the data pages mapped twice */
	const __u8 *data;
	__u64 mask;
	size_t page;
	size_t size;
	/* the node: raw (exec_id), as a JSON string ("node"), and escaped without quotes (event_id) */
	char *node_raw;
	size_t node_raw_len;
	char *node_json;
	size_t node_json_len;
	__s64 offset; /* CLOCK_BOOTTIME -> UTC ns */
	struct wl_entry *wl;
	size_t wl_cap; /* power of two */
	size_t wl_count;
	char *id_buf; /* scratch for "{node}:{pid}:{start}" */
	/* rendered process blocks of the hot kinds, direct-mapped by the header's identity
	 * (pid .. comm): a flood comes from a few processes, and the two exec_ids (base64)
	 * are most of a block's cost. Emptied when the node or the clock offset changes. */
	struct pb_entry *pb;
	size_t pb_max; /* bytes a block can take (set with the node) */
};

static void pb_free(struct cadr_ring *r);

#define PB_SLOTS 1024
#define PB_KEY_OFF offsetof(struct cadr_hdr, pid)
#define PB_KEY_LEN (sizeof(struct cadr_hdr) - PB_KEY_OFF)

struct pb_entry {
	__u8 key[PB_KEY_LEN];
	__u32 len; /* 0: empty */
	char *block;
};

/* ---- small formatting helpers -------------------------------------------------------- */

static const char HEX[] = "0123456789abcdef";

#define LIT(o, s) (memcpy((o), (s), sizeof(s) - 1), (o) + sizeof(s) - 1)

static inline char *put(char *o, const void *s, size_t n)
{
	memcpy(o, s, n);
	return o + n;
}

static inline char *put_u64(char *o, __u64 v)
{
	char tmp[20];
	int n = 0;
	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		*o++ = tmp[--n];
	return o;
}

static inline char *put_i64(char *o, __s64 v)
{
	if (v < 0) {
		*o++ = '-';
		return put_u64(o, (__u64)0 - (__u64)v);
	}
	return put_u64(o, (__u64)v);
}

static inline char *put_x64(char *o, __u64 v)
{
	char tmp[16];
	int n = 0;
	do {
		tmp[n++] = HEX[v & 15];
		v >>= 4;
	} while (v);
	while (n)
		*o++ = tmp[--n];
	return o;
}

/* Length of the well-formed UTF-8 sequence at s, or 0 with *bad = the length of its
 * maximal ill-formed subpart (what CPython's decoder reports as one error range). */
static inline size_t utf8_seq(const __u8 *s, size_t n, size_t *bad)
{
	__u8 c = s[0], lo = 0x80, hi = 0xBF;
	size_t need, i;

	if (c >= 0xC2 && c <= 0xDF)
		need = 1;
	else if (c == 0xE0)
		need = 2, lo = 0xA0;
	else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF)
		need = 2;
	else if (c == 0xED)
		need = 2, hi = 0x9F;
	else if (c == 0xF0)
		need = 3, lo = 0x90;
	else if (c >= 0xF1 && c <= 0xF3)
		need = 3;
	else if (c == 0xF4)
		need = 3, hi = 0x8F;
	else {
		*bad = 1;
		return 0;
	}
	for (i = 1; i <= need; i++) {
		__u8 b = i < n ? s[i] : 0;
		if (i >= n || (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF))) {
			*bad = i;
			return 0;
		}
	}
	return need + 1;
}

enum { BAD_BACKSLASH, BAD_REPLACE };

/* Bytes as the body of a JSON string, the way decode.py gets there: ill-formed UTF-8
 * becomes \xNN text (decode.py _safe: surrogateescape -> backslashreplace) or U+FFFD
 * (comm: errors="replace"); then JSON escapes as msgspec/orjson write them. At most 6
 * output bytes per input byte. */
static char *json_body(char *o, const __u8 *s, size_t n, int bad_mode)
{
	size_t i = 0;

	while (i < n) {
		__u8 c = s[i];
		if (c < 0x80) {
			if (c >= 0x20 && c != '"' && c != '\\') {
				*o++ = (char)c;
			} else {
				*o++ = '\\';
				switch (c) {
				case '"': *o++ = '"'; break;
				case '\\': *o++ = '\\'; break;
				case '\b': *o++ = 'b'; break;
				case '\t': *o++ = 't'; break;
				case '\n': *o++ = 'n'; break;
				case '\f': *o++ = 'f'; break;
				case '\r': *o++ = 'r'; break;
				default:
					o = LIT(o, "u00");
					*o++ = HEX[c >> 4];
					*o++ = HEX[c & 15];
				}
			}
			i++;
			continue;
		}
		size_t bad = 0, k = utf8_seq(s + i, n - i, &bad);
		if (k) {
			o = put(o, s + i, k);
			i += k;
		} else if (bad_mode == BAD_REPLACE) {
			o = LIT(o, "\xef\xbf\xbd");
			i += bad;
		} else {
			for (size_t j = 0; j < bad; j++, i++) {
				o = LIT(o, "\\\\x");
				*o++ = HEX[s[i] >> 4];
				*o++ = HEX[s[i] & 15];
			}
		}
	}
	return o;
}

static inline char *json_str(char *o, const __u8 *s, size_t n, int bad_mode)
{
	*o++ = '"';
	o = json_body(o, s, n, bad_mode);
	*o++ = '"';
	return o;
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *base64(char *o, const __u8 *s, size_t n)
{
	size_t i = 0;
	for (; i + 3 <= n; i += 3) {
		__u32 v = (__u32)s[i] << 16 | (__u32)s[i + 1] << 8 | s[i + 2];
		*o++ = B64[v >> 18];
		*o++ = B64[(v >> 12) & 63];
		*o++ = B64[(v >> 6) & 63];
		*o++ = B64[v & 63];
	}
	if (n - i == 1) {
		__u32 v = (__u32)s[i] << 16;
		*o++ = B64[v >> 18];
		*o++ = B64[(v >> 12) & 63];
		*o++ = '=';
		*o++ = '=';
	} else if (n - i == 2) {
		__u32 v = (__u32)s[i] << 16 | (__u32)s[i + 1] << 8;
		*o++ = B64[v >> 18];
		*o++ = B64[(v >> 12) & 63];
		*o++ = B64[(v >> 6) & 63];
		*o++ = '=';
	}
	return o;
}

/* exec_id: base64 of "{node}:{pid}:{start}" (decode.py exec_id), as a JSON string. */
static char *exec_id(struct cadr_ring *r, char *o, __u32 pid, __u64 start)
{
	char *p = put(r->id_buf, r->node_raw, r->node_raw_len);
	*p++ = ':';
	p = put_u64(p, pid);
	*p++ = ':';
	p = put_u64(p, start);
	*o++ = '"';
	o = base64(o, (const __u8 *)r->id_buf, (size_t)(p - r->id_buf));
	*o++ = '"';
	return o;
}

/* ---- workload fragments, per (cgroup v2 id, v1 id) ----------------------------------- */

static inline size_t wl_slot(__u64 cg, __u64 cg1, size_t mask)
{
	__u64 h = (cg ^ (cg1 * 0x9E3779B97F4A7C15ULL)) * 0xBF58476D1CE4E5B9ULL;
	return (size_t)(h >> 29) & mask;
}

static struct wl_entry *wl_find(struct cadr_ring *r, __u64 cg, __u64 cg1)
{
	size_t mask = r->wl_cap - 1, i = wl_slot(cg, cg1, mask);
	for (;; i = (i + 1) & mask) {
		struct wl_entry *e = &r->wl[i];
		if (!e->used)
			return NULL;
		if (e->cgroup == cg && e->cgroup_v1 == cg1)
			return e;
	}
}

void cadr_ring_clear_workloads(struct cadr_ring *r)
{
	for (size_t i = 0; i < r->wl_cap; i++) {
		free(r->wl[i].frag);
		memset(&r->wl[i], 0, sizeof(r->wl[i]));
	}
	r->wl_count = 0;
}

static int wl_grow(struct cadr_ring *r)
{
	size_t cap = r->wl_cap * 2;
	struct wl_entry *old = r->wl, *nw = calloc(cap, sizeof(*nw));
	if (!nw)
		return -ENOMEM;
	for (size_t i = 0; i < r->wl_cap; i++) {
		if (!old[i].used)
			continue;
		size_t j = wl_slot(old[i].cgroup, old[i].cgroup_v1, cap - 1);
		while (nw[j].used)
			j = (j + 1) & (cap - 1);
		nw[j] = old[i];
	}
	free(old);
	r->wl = nw;
	r->wl_cap = cap;
	return 0;
}

/* Cache the workload fragment ("workload":{...}) and Kafka key id of a cgroup pair;
 * expires is a monotonic time (INFINITY: until cadr_ring_clear_workloads). */
int cadr_ring_put_workload(struct cadr_ring *r, __u64 cg, __u64 cg1, const char *frag, size_t len,
			   __u32 key, double expires)
{
	struct wl_entry *e = wl_find(r, cg, cg1);
	char *copy = malloc(len ? len : 1);

	if (!copy)
		return -ENOMEM;
	memcpy(copy, frag, len);
	if (!e) {
		if (r->wl_count >= 65536) /* bounded, like decode.py's caches */
			cadr_ring_clear_workloads(r);
		if ((r->wl_count + 1) * 2 > r->wl_cap && wl_grow(r)) {
			free(copy);
			return -ENOMEM;
		}
		size_t mask = r->wl_cap - 1, i = wl_slot(cg, cg1, mask);
		while (r->wl[i].used)
			i = (i + 1) & mask;
		e = &r->wl[i];
		e->used = 1;
		e->cgroup = cg;
		e->cgroup_v1 = cg1;
		r->wl_count++;
	} else {
		free(e->frag);
	}
	e->frag = copy;
	e->frag_len = (__u32)len;
	e->key = key;
	e->expires = expires;
	return 0;
}

/* ---- records -> JSON ----------------------------------------------------------------- */

enum { FMT_OK, FMT_FULL, FMT_WORKLOAD, FMT_PYTHON };

struct exec_strs {
	const __u8 *exe, *cwd, *args;
	size_t exe_len, cwd_len, args_len;
	int deleted, tty, sock;
	const struct cadr_exec *e;
};

/* The process block, fields in schemas.records.Process order, defaults left out
 * (omit_defaults), as msgspec encodes decode.py's Process(...). */
static char *process_block(struct cadr_ring *r, char *o, const struct cadr_hdr *h, const struct exec_strs *x)
{
	char *start = o;
	size_t comm_len = strnlen(h->comm, sizeof(h->comm));

#define SEP() (o != start ? (*o++ = ',') : 0)
	o = LIT(o, ",\"process\":{");
	start = o;
	if (h->pid) {
		o = LIT(o, "\"pid\":");
		o = put_u64(o, h->pid);
	}
	if (h->ppid) {
		SEP();
		o = LIT(o, "\"ppid\":");
		o = put_u64(o, h->ppid);
	}
	if (h->tid) {
		SEP();
		o = LIT(o, "\"tid\":");
		o = put_u64(o, h->tid);
	}
	SEP();
	o = LIT(o, "\"uid\":");
	o = put_u64(o, h->uid);
	if (x) {
		o = LIT(o, ",\"euid\":");
		o = put_u64(o, x->e->euid);
		o = LIT(o, ",\"gid\":");
		o = put_u64(o, x->e->gid);
		o = LIT(o, ",\"egid\":");
		o = put_u64(o, x->e->egid);
	}
	if (comm_len) {
		o = LIT(o, ",\"comm\":");
		o = json_str(o, (const __u8 *)h->comm, comm_len, BAD_REPLACE);
	}
	if (x) {
		if (x->exe_len || x->deleted) {
			o = LIT(o, ",\"exe\":\"");
			o = json_body(o, x->exe, x->exe_len, BAD_BACKSLASH);
			if (x->deleted)
				o = LIT(o, " (deleted)");
			*o++ = '"';
		}
		/* argv: NUL separated, one trailing NUL dropped; at most 1024 (decode.py) */
		size_t alen = x->args_len;
		if (alen && x->args[alen - 1] == 0)
			alen--;
		if (alen) {
			const __u8 *a = x->args, *end = x->args + alen;
			int n = 0;
			o = LIT(o, ",\"args\":[");
			while (n < 1024) {
				const __u8 *z = memchr(a, 0, (size_t)(end - a));
				if (!z)
					z = end;
				if (n)
					*o++ = ',';
				o = json_str(o, a, (size_t)(z - a), BAD_BACKSLASH);
				n++;
				if (z == end)
					break;
				a = z + 1;
			}
			*o++ = ']';
		}
		if (x->cwd_len) {
			o = LIT(o, ",\"cwd\":");
			o = json_str(o, x->cwd, x->cwd_len, BAD_BACKSLASH);
		}
	}
	o = LIT(o, ",\"exec_id\":");
	o = exec_id(r, o, h->pid, h->start);
	if (h->ppid) {
		o = LIT(o, ",\"parent_exec_id\":");
		o = exec_id(r, o, h->ppid, h->pstart);
	}
	__s64 st = (__s64)h->start + r->offset;
	if (st) {
		o = LIT(o, ",\"start_time\":");
		o = put_i64(o, st);
	}
	if (x && x->tty)
		o = LIT(o, ",\"tty\":true");
	if (x && x->sock)
		o = LIT(o, ",\"stdio_socket\":true");
	if (h->cgroup) {
		o = LIT(o, ",\"cgroup_id\":");
		o = put_u64(o, h->cgroup);
	}
	if (h->mnt_ns) {
		o = LIT(o, ",\"mnt_ns\":");
		o = put_u64(o, h->mnt_ns);
	}
	if (h->pid_ns) {
		o = LIT(o, ",\"pid_ns\":");
		o = put_u64(o, h->pid_ns);
	}
#undef SEP
	return o;
}

static void pb_clear(struct cadr_ring *r)
{
	if (!r->pb)
		return;
	for (size_t i = 0; i < PB_SLOTS; i++)
		r->pb[i].len = 0;
}

/* process_block(r, o, h, NULL), from the cache when this process was seen (the block
 * depends only on the header bytes from pid to comm, the node and the clock offset). */
static inline char *process_block_cached(struct cadr_ring *r, char *o, const struct cadr_hdr *h)
{
	const __u8 *key = (const __u8 *)h + PB_KEY_OFF;
	__u64 x = ((__u64)h->tid << 32 | h->pid) ^ h->start ^ h->cgroup;
	struct pb_entry *e;

	if (!r->pb)
		return process_block(r, o, h, NULL);
	e = &r->pb[(x * 0x9E3779B97F4A7C15ULL) >> 54]; /* 10 bits: PB_SLOTS */
	if (e->len && !memcmp(e->key, key, PB_KEY_LEN))
		return put(o, e->block, e->len);
	char *end = process_block(r, o, h, NULL);
	size_t len = (size_t)(end - o);
	if (len <= r->pb_max) {
		memcpy(e->key, key, PB_KEY_LEN);
		memcpy(e->block, o, len);
		e->len = (__u32)len;
	}
	return end;
}

/* {"schema_version":1,"event_id":"N:cpu:seq:ktime","time":T,"node":N,"source":"ebpf","kind":"K", */
static char *event_head(struct cadr_ring *r, char *o, const struct cadr_hdr *h, const char *kind,
			size_t kind_len, int omit_empty_node)
{
	o = LIT(o, "{\"schema_version\":1,\"event_id\":\"");
	o = put(o, r->node_json + 1, r->node_json_len - 2);
	*o++ = ':';
	o = put_x64(o, h->cpu);
	*o++ = ':';
	o = put_x64(o, h->seq);
	*o++ = ':';
	o = put_x64(o, h->ktime);
	o = LIT(o, "\",\"time\":");
	o = put_i64(o, (__s64)h->ktime + r->offset);
	if (!(omit_empty_node && r->node_json_len == 2)) {
		o = LIT(o, ",\"node\":");
		o = put(o, r->node_json, r->node_json_len);
	}
	o = LIT(o, ",\"source\":\"ebpf\",\"kind\":\"");
	o = put(o, kind, kind_len);
	o = LIT(o, "\",");
	return o;
}

static inline __s64 floor_div(__s64 a, __s64 b)
{
	__s64 q = a / b;
	return (a % b && (a < 0) != (b < 0)) ? q - 1 : q;
}

static int format_record(struct cadr_ring *r, const __u8 *rec, __u32 len, struct cadr_drain *d, double now)
{
	const struct cadr_hdr *h = (const struct cadr_hdr *)rec;
	struct exec_strs xs, *x = NULL;
	size_t var = 0; /* variable-length bytes of the record, for the size bound */

	if (len < sizeof(*h))
		return FMT_PYTHON;
	switch (h->type) {
	case CADR_FORK:
		break;
	case CADR_EXIT:
		if (len < sizeof(struct cadr_exit))
			return FMT_PYTHON;
		break;
	case CADR_OPEN: {
		const struct cadr_open *e = (const void *)rec;
		if (len < sizeof(*e) || sizeof(*e) + e->path_len > len)
			return FMT_PYTHON;
		var = e->path_len;
		break;
	}
	case CADR_CONNECT:
	case CADR_ACCEPT:
	case CADR_LISTEN:
		if (len < sizeof(struct cadr_net))
			return FMT_PYTHON;
		break;
	case CADR_EXEC: {
		const struct cadr_exec *e = (const void *)rec;
		if (len < sizeof(*e) || sizeof(*e) + (size_t)e->exe_len + e->cwd_len + e->args_len > len)
			return FMT_PYTHON;
		xs.e = e;
		xs.exe = rec + sizeof(*e);
		xs.exe_len = e->exe_len;
		xs.cwd = xs.exe + e->exe_len;
		xs.cwd_len = e->cwd_len;
		xs.args = xs.cwd + e->cwd_len;
		xs.args_len = e->args_len;
		xs.deleted = !!(e->flags & EXEC_EXE_DELETED);
		xs.tty = !!(e->flags & EXEC_TTY);
		xs.sock = !!(e->flags & (EXEC_STDIN_SOCK | EXEC_STDOUT_SOCK));
		x = &xs;
		/* args become up to 3 bytes of quotes and commas each, on top of the escapes */
		var = (size_t)e->exe_len + e->cwd_len + 2 * (size_t)e->args_len + 16;
		break;
	}
	default:
		return FMT_PYTHON;
	}

	struct wl_entry *w = wl_find(r, h->cgroup, h->cgroup_v1);
	if (!w || !(w->expires > now))
		return FMT_WORKLOAD;

	/* worst case: every variable byte escaped to 6, the node three times (id, field,
	 * two exec_ids in base64), the comm escaped, numbers */
	size_t bound = 1024 + w->frag_len + 6 * var + 6 * r->node_json_len + 4 * r->node_raw_len;
	if (d->idx_len >= d->idx_cap)
		return FMT_FULL;
	if (d->out_len + bound + d->reserve > d->out_cap)
		return bound + d->reserve > d->out_cap ? FMT_PYTHON : FMT_FULL;

	char *o0 = d->out + d->out_len, *o = o0;
	__s64 t = (__s64)h->ktime + r->offset;

	switch (h->type) {
	case CADR_OPEN: {
		const struct cadr_open *e = (const void *)rec;
		o = event_head(r, o, h, "file_open", 9, 0);
		o = put(o, w->frag, w->frag_len);
		o = process_block_cached(r, o, h);
		o = LIT(o, "},\"file\":{\"path\":");
		o = json_str(o, rec + sizeof(*e), e->path_len, BAD_BACKSLASH);
		o = LIT(o, ",\"flags\":");
		o = put_u64(o, e->flags);
		o = LIT(o, ",\"mode\":");
		o = put_u64(o, e->mode);
		o = (e->flags & O_WRITE_MASK) ? LIT(o, ",\"write\":true}}") : LIT(o, ",\"write\":false}}");
		break;
	}
	case CADR_FORK:
		o = event_head(r, o, h, "process_fork", 12, 0);
		o = put(o, w->frag, w->frag_len);
		o = process_block_cached(r, o, h);
		o = LIT(o, "}}");
		break;
	case CADR_EXIT: {
		const struct cadr_exit *e = (const void *)rec;
		__s32 st = e->code;
		__s64 code = (st & 0x7F) == 0 ? (st >> 8) & 0xFF : -(__s64)(st & 0x7F);
		o = event_head(r, o, h, "process_exit", 12, 0);
		o = put(o, w->frag, w->frag_len);
		o = process_block_cached(r, o, h);
		o = LIT(o, ",\"exit_code\":");
		o = put_i64(o, code);
		o = LIT(o, "}}");
		break;
	}
	case CADR_EXEC:
		/* decode.py takes exec through schemas.records.Event: "node" is left out when
		 * empty, and the process block has the exec fields */
		o = event_head(r, o, h, "process_exec", 12, 1);
		o = put(o, w->frag, w->frag_len);
		o = process_block(r, o, h, x);
		o = LIT(o, "}}");
		break;
	default: { /* connect / accept / listen */
		const struct cadr_net *e = (const void *)rec;
		char src[INET6_ADDRSTRLEN], dst[INET6_ADDRSTRLEN];
		int v4 = e->family == AF_INET;
		if (!inet_ntop(v4 ? AF_INET : AF_INET6, e->saddr, src, sizeof(src)) ||
		    !inet_ntop(v4 ? AF_INET : AF_INET6, e->daddr, dst, sizeof(dst)))
			return FMT_PYTHON;
		if (h->type == CADR_CONNECT)
			o = event_head(r, o, h, "net_connect", 11, 0);
		else if (h->type == CADR_ACCEPT)
			o = event_head(r, o, h, "net_accept", 10, 0);
		else
			o = event_head(r, o, h, "net_listen", 10, 0);
		o = put(o, w->frag, w->frag_len);
		o = process_block_cached(r, o, h);
		o = LIT(o, "},\"network\":{\"protocol\":\"");
		if (e->proto == 6)
			o = LIT(o, "tcp");
		else if (e->proto == 17)
			o = LIT(o, "udp");
		else
			o = put_u64(o, e->proto);
		o = v4 ? LIT(o, "\",\"family\":\"ipv4\",\"src_ip\":\"")
		       : LIT(o, "\",\"family\":\"ipv6\",\"src_ip\":\"");
		o = put(o, src, strlen(src));
		o = LIT(o, "\",\"src_port\":");
		o = put_u64(o, e->sport);
		o = LIT(o, ",\"dst_ip\":\"");
		o = put(o, dst, strlen(dst));
		o = LIT(o, "\",\"dst_port\":");
		o = put_u64(o, e->dport);
		if (h->type == CADR_CONNECT)
			o = LIT(o, ",\"direction\":\"egress\"}}");
		else if (h->type == CADR_ACCEPT)
			o = LIT(o, ",\"direction\":\"ingress\"}}");
		else
			o = LIT(o, ",\"direction\":\"listen\"}}");
	}
	}

	struct cadr_idx *ix = &d->idx[d->idx_len++];
	ix->start = (__u32)d->out_len;
	ix->end = (__u32)(d->out_len + (size_t)(o - o0));
	ix->key = w->key;
	ix->cpu = h->cpu;
	ix->ts_ms = floor_div(t, 1000000);
	*o++ = '\n';
	d->out_len += (size_t)(o - o0);
	return FMT_OK;
}

/* ---- the ring ------------------------------------------------------------------------ */

/* A formatter with no ring attached (cadr_format_one: tests, the decoder benchmark). */
struct cadr_ring *cadr_ring_new(void)
{
	struct cadr_ring *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	r->wl = calloc(64, sizeof(*r->wl));
	r->node_json = strdup("\"\"");
	r->id_buf = malloc(64);
	if (!r->wl || !r->node_json || !r->id_buf) {
		free(r->wl);
		free(r->node_json);
		free(r->id_buf);
		free(r);
		return NULL;
	}
	r->wl_cap = 64;
	r->node_json_len = 2;
	return r;
}

void cadr_ring_close(struct cadr_ring *r)
{
	if (!r)
		return;
	cadr_ring_clear_workloads(r);
	pb_free(r);
	free(r->wl);
	free(r->node_raw);
	free(r->node_json);
	free(r->id_buf);
	if (r->cons)
		munmap((void *)r->cons, r->page);
	if (r->prod_map)
		munmap((void *)r->prod_map, r->page + 2 * r->size);
	free(r);
}

/* Map the ring buffer map `map_fd` (data size `size`) like libbpf does: the consumer page
 * read-write, the producer page and the data pages (mapped twice by the kernel, so a record
 * that wraps is contiguous) read-only. NULL with errno on failure. */
struct cadr_ring *cadr_ring_open(int map_fd, __u64 size, __u64 page)
{
	struct cadr_ring *r;
	void *cons, *prod;

	if (!size || size & (size - 1) || !page || page & (page - 1)) {
		errno = EINVAL;
		return NULL;
	}
	cons = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_SHARED, map_fd, 0);
	if (cons == MAP_FAILED)
		return NULL;
	prod = mmap(NULL, page + 2 * size, PROT_READ, MAP_SHARED, map_fd, (off_t)page);
	if (prod == MAP_FAILED) {
		int err = errno;
		munmap(cons, page);
		errno = err;
		return NULL;
	}
	r = cadr_ring_new();
	if (!r) {
		munmap(cons, page);
		munmap(prod, page + 2 * size);
		errno = ENOMEM;
		return NULL;
	}
	r->cons = cons;
	r->prod_map = prod;
	r->data = (const __u8 *)prod + page;
	r->mask = size - 1;
	r->page = page;
	r->size = size;
	return r;
}

static void pb_free(struct cadr_ring *r)
{
	if (r->pb)
		free(r->pb[0].block);
	free(r->pb);
	r->pb = NULL;
	r->pb_max = 0;
}

/* The node name, raw (for exec_id) and as a JSON string (what decode.py's orjson gives). */
int cadr_ring_set_node(struct cadr_ring *r, const char *raw, size_t raw_len, const char *json, size_t json_len)
{
	char *nr = malloc(raw_len + 1), *nj = malloc(json_len + 1), *ib = malloc(raw_len + 64);
	if (!nr || !nj || !ib || json_len < 2) {
		free(nr);
		free(nj);
		free(ib);
		return -EINVAL;
	}
	memcpy(nr, raw, raw_len);
	memcpy(nj, json, json_len);
	free(r->node_raw);
	free(r->node_json);
	free(r->id_buf);
	r->node_raw = nr;
	r->node_raw_len = raw_len;
	r->node_json = nj;
	r->node_json_len = json_len;
	r->id_buf = ib;
	pb_free(r);
	/* numbers and names (~300), the comm escaped (16 x 6), two exec_ids in base64 */
	size_t max = 512 + 96 + 2 * (((raw_len + 48) / 3 + 1) * 4);
	struct pb_entry *pb = calloc(PB_SLOTS, sizeof(*pb));
	char *blocks = pb ? malloc(PB_SLOTS * max) : NULL;
	if (!blocks) {
		free(pb); /* no cache: every block is rendered */
		return 0;
	}
	for (size_t i = 0; i < PB_SLOTS; i++)
		pb[i].block = blocks + i * max;
	r->pb = pb;
	r->pb_max = max;
	return 0;
}

void cadr_ring_set_offset(struct cadr_ring *r, __s64 offset)
{
	if (offset != r->offset)
		pb_clear(r);
	r->offset = offset;
}

__u64 cadr_ring_pending(struct cadr_ring *r)
{
	if (!r->cons)
		return 0;
	return __atomic_load_n((const __u64 *)r->prod_map, __ATOMIC_ACQUIRE) -
	       __atomic_load_n(r->cons, __ATOMIC_RELAXED);
}

/* Format committed records into d->out until one of the STOP_* conditions. */
int cadr_ring_drain(struct cadr_ring *r, struct cadr_drain *d)
{
	if (!r->cons)
		return STOP_EMPTY;
	__u64 cons = __atomic_load_n(r->cons, __ATOMIC_RELAXED); /* only we write it */
	__u64 prod = __atomic_load_n((const __u64 *)r->prod_map, __ATOMIC_ACQUIRE);
	__u64 start = cons;
	int rc;

	d->events = d->records = d->consumed = 0;
	if (d->skip_pending && cons < prod) { /* Python decoded the record at cons: step over it */
		__u32 hdr = __atomic_load_n((const __u32 *)(r->data + (cons & r->mask)), __ATOMIC_ACQUIRE);
		cons += ((__u64)(hdr & ~(RB_BUSY | RB_DISCARD)) + RB_HDR + 7) & ~7ULL;
		d->records++;
	}
	d->skip_pending = 0;
	for (;;) {
		if (cons >= prod) {
			prod = __atomic_load_n((const __u64 *)r->prod_map, __ATOMIC_ACQUIRE);
			if (cons >= prod) {
				rc = STOP_EMPTY;
				break;
			}
		}
		if (cons - start >= d->budget) {
			rc = STOP_BUDGET;
			break;
		}
		const __u8 *rec = r->data + (cons & r->mask);
		__u32 hdr = __atomic_load_n((const __u32 *)rec, __ATOMIC_ACQUIRE);
		if (hdr & RB_BUSY) {
			rc = STOP_EMPTY;
			break;
		}
		__u32 len = hdr & ~(RB_BUSY | RB_DISCARD);
		__u64 adv = ((__u64)len + RB_HDR + 7) & ~7ULL;
		if (!(hdr & RB_DISCARD)) {
			int f = format_record(r, rec + RB_HDR, len, d, d->now);
			if (f != FMT_OK) {
				if (f == FMT_FULL) {
					rc = STOP_FULL;
				} else {
					const struct cadr_hdr *h = (const void *)(rec + RB_HDR);
					rc = f == FMT_WORKLOAD ? STOP_WORKLOAD : STOP_PYTHON;
					d->pend_off = r->page + (cons & r->mask) + RB_HDR;
					d->pend_len = len;
					d->pend_type = len >= 2 ? h->type : 0;
					d->pend_cgroup = len >= sizeof(*h) ? h->cgroup : 0;
					d->pend_cgroup_v1 = len >= sizeof(*h) ? h->cgroup_v1 : 0;
				}
				break;
			}
			d->events++;
		}
		cons += adv;
		d->records++;
	}
	d->consumed = cons - start;
	d->budget = d->budget > d->consumed ? d->budget - d->consumed : 0;
	if (cons != start)
		__atomic_store_n(r->cons, cons, __ATOMIC_RELEASE);
	return rc;
}

/* Format one record given in memory (tests compare this with decode.py; no ring). Returns
 * FMT_* and fills d like a drain would. */
int cadr_format_one(struct cadr_ring *r, const __u8 *rec, __u32 len, struct cadr_drain *d)
{
	return format_record(r, rec, len, d, d->now);
}

/* Layout checks for the loader: the ABI version and the sizes it was compiled with. */
__u32 cadr_ring_abi(__u32 what)
{
	switch (what) {
	case 0: return CADR_RING_ABI;
	case 1: return CADR_LAYOUT_VERSION;
	case 2: return sizeof(struct cadr_hdr);
	case 3: return sizeof(struct cadr_exec);
	case 4: return sizeof(struct cadr_open);
	case 5: return sizeof(struct cadr_net);
	case 6: return sizeof(struct cadr_exit);
	case 7: return sizeof(struct cadr_drain);
	case 8: return sizeof(struct cadr_idx);
	default: return 0;
	}
}
